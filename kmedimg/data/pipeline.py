"""Reading kmedimg datasets: `read_manifest`, `verify`, `load` and `make_dataset_fn`.

`load` builds the tf.data input pipeline:

    shard files -> [shard by file] -> shuffle files -> interleave TFRecordDatasets
      -> [shard by record] -> [cache] -> shuffle -> repeat
      -> batch -> vectorised parse+decode+resize          (raw records, one shape)
      or  parallel per-record decode -> resize -> batch   (PNG or mixed shapes)
      -> prefetch

The vectorised path (batch first, then one `parse_example` + `decode_raw` per batch)
is what makes raw storage several times faster than decoding image files.
"""

import concurrent.futures
import logging
import warnings

import tensorflow as tf

from kmedimg.data import schema
from kmedimg.data.paths import join, sha256_of
from kmedimg.data.decoder import RecordDecoder
from kmedimg.data.parser import RecordParser

logger = logging.getLogger(__name__)

#: Upper bound on the memory a default shuffle buffer may hold.
_SHUFFLE_BUFFER_BYTES = 256 * 1024 * 1024
_DEFAULT_SHUFFLE_RECORDS = 2048


def read_manifest(path):
    """Reads and validates a dataset's `dataset.json`.

    Args:
        path: the dataset directory or the `dataset.json` file (local or gs://).

    Returns:
        The `schema.Manifest`, with `.directory` set to the dataset directory.

    Raises:
        FileNotFoundError: when there is no manifest at `path`.
        ValueError: when the manifest is invalid (naming the file and the field).
    """
    path = str(path)
    if path.endswith(schema.MANIFEST_NAME) and not tf.io.gfile.isdir(path):
        manifest_path = path
        directory = path[: -len(schema.MANIFEST_NAME)].rstrip("/") or "."
    else:
        manifest_path = join(path, schema.MANIFEST_NAME)
        directory = path
    if not tf.io.gfile.exists(manifest_path):
        hint = (
            " The directory exists but has no manifest: the conversion may have been "
            "interrupted; run `kmedimg convert` again."
            if tf.io.gfile.isdir(directory)
            else ""
        )
        raise FileNotFoundError(
            f"No kmedimg dataset at {path}: {manifest_path} does not exist.{hint}"
        )
    with tf.io.gfile.GFile(manifest_path, "r") as handle:
        manifest = schema.Manifest.from_json(handle.read(), where=manifest_path)
    manifest.directory = directory
    return manifest


def _as_manifest(path_or_manifest):
    if isinstance(path_or_manifest, schema.Manifest):
        if not getattr(path_or_manifest, "directory", None):
            raise ValueError(
                "This Manifest does not know its directory; pass the dataset path, or a "
                "manifest from `read_manifest(path)` / `write_dataset(...)`. "
                "Received: a Manifest without `.directory`"
            )
        return path_or_manifest
    return read_manifest(path_or_manifest)


def _split_info(manifest, split):
    if split not in manifest.splits:
        raise ValueError(
            f"{join(manifest.directory, schema.MANIFEST_NAME)}: no split {split!r}; "
            f"available splits: {sorted(manifest.splits)}. Received: split={split!r}"
        )
    info = manifest.splits[split]
    if not info.shards or info.count == 0:
        raise ValueError(
            f"{join(manifest.directory, schema.MANIFEST_NAME)}: split {split!r} is "
            f"empty. Received: split={split!r}"
        )
    return info


def _check_shard_sizes(manifest, shards):
    """Stats every shard (in parallel: gs:// stats are slow) against the manifest."""

    def check(shard):
        path = join(manifest.directory, shard.path)
        try:
            length = tf.io.gfile.stat(path).length
        except tf.errors.NotFoundError:
            return f"shard {path} is missing"
        if length != shard.bytes:
            return (
                f"shard {path} has {length} bytes but the manifest says {shard.bytes} "
                "(truncated or replaced); re-run the conversion or restore the file"
            )
        return None

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        problems = [problem for problem in pool.map(check, shards) if problem]
    if problems:
        raise ValueError("; ".join(problems[:5]) + (
            f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""))


def verify(path_or_manifest, splits=None):
    """Recomputes every shard's sha256 and compares it with the manifest.

    Args:
        path_or_manifest: dataset directory, `dataset.json` path or Manifest.
        splits: split names to check. Defaults to `None` (all).

    Returns:
        The manifest, when every shard matches.

    Raises:
        ValueError: naming the first shard whose size or checksum does not match.
    """
    manifest = _as_manifest(path_or_manifest)
    for name in splits or list(manifest.splits):
        info = _split_info(manifest, name)
        _check_shard_sizes(manifest, info.shards)
        for shard in info.shards:
            shard_path = join(manifest.directory, shard.path)
            actual = sha256_of(shard_path)
            if actual != shard.sha256:
                raise ValueError(
                    f"shard {shard_path}: sha256 {actual} does not match the "
                    f"manifest's {shard.sha256}; the file is corrupt or was replaced."
                )
    return manifest


def _normalize_size(image_size, manifest):
    if image_size is None:
        if not (manifest.height and manifest.width):
            raise ValueError(
                "`image_size` is required: the records have different sizes "
                f"(manifest height/width are null). Received: image_size={image_size!r}"
            )
        return (int(manifest.height), int(manifest.width))
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        return (image_size, image_size)
    if isinstance(image_size, (tuple, list)) and len(image_size) in (2, 3):
        return (int(image_size[0]), int(image_size[1]))
    raise ValueError(
        "`image_size` must be None, an int or (height, width). "
        f"Received: image_size={image_size!r}"
    )


def _checked_records(path, expected, compression):
    """The records of one shard file as `(index, record)`, failing with the file's name
    when the file holds fewer valid records than the manifest lists.

    TFRecordDataset stops silently at a truncated tail and reports a corrupt record
    as "corrupted record at N" without the file name. Here the file is read with
    `ignore_errors` (a damaged file just ends early) followed by one sentinel element
    whose computation raises an error naming the file, and zipped *behind* a
    `range(expected)`: zip stops at the range's end before pulling the sentinel, so
    an intact file never reaches it. All of that runs in C++ per record (no Python
    function per record); the cost is carrying the index, which consumers ignore.
    """

    def fail(sentinel_path):
        check = tf.debugging.Assert(
            tf.equal(tf.strings.length(sentinel_path), -1),  # always false, at run time
            ["kmedimg: shard", sentinel_path, "is corrupt or truncated: it holds fewer "
             "valid records than the", expected, "the manifest lists "
             "(kmedimg.data.pipeline.verify checks every shard's sha256)"],
            summarize=1,
        )
        with tf.control_dependencies([check]):
            return tf.identity(sentinel_path)

    records = tf.data.TFRecordDataset(path, compression_type=compression).ignore_errors()
    records = records.concatenate(tf.data.Dataset.from_tensors(path).map(fail))
    return tf.data.Dataset.zip((tf.data.Dataset.range(expected), records))


def _local_batches(info, mode, input_context, batch_size, drop_remainder):
    """Batches one input pipeline yields in one pass over the split."""
    records = [shard.records for shard in info.shards]
    if mode == "file":
        local = sum(records[input_context.input_pipeline_id::
                            input_context.num_input_pipelines])
    elif mode == "record":
        local = len(range(input_context.input_pipeline_id, sum(records),
                          input_context.num_input_pipelines))
    else:
        local = sum(records)
    return local // batch_size if drop_remainder else -(-local // batch_size)


def sharding_mode(num_files, input_context):
    """How `load` splits a split across input pipelines: "none", "file" or "record".

    By file when every pipeline gets at least one file (cheap: each reads only its
    files), else by record (every pipeline reads every file and keeps 1/N of the
    records — correct but N times the I/O).
    """
    if input_context is None or input_context.num_input_pipelines <= 1:
        return "none"
    return "file" if num_files >= input_context.num_input_pipelines else "record"


def load(
    path_or_manifest,
    split,
    image_size=None,
    batch_size=32,
    training=False,
    channels=None,
    cache=False,
    deterministic=False,
    seed=None,
    shuffle_buffer=None,
    input_context=None,
    repeat=None,
    drop_remainder=None,
    check_files=True,
    check_records=True,
):
    """Builds the tf.data pipeline of one split.

    Args:
        path_or_manifest: dataset directory, `dataset.json` path or Manifest.
        split: split name, e.g. "train".
        image_size: output int or (height, width); None keeps the stored size (only
            when all records share one). Defaults to `None`.
        batch_size: global batch size; with `input_context`, the per-replica batch is
            `input_context.get_per_replica_batch_size(batch_size)`. Defaults to `32`.
        training: shuffle, repeat and drop the remainder (static shapes).
            Defaults to `False`.
        channels: 1 or 3 output channels; None keeps the stored count.
            Defaults to `None`.
        cache: True caches in memory, a string caches to that file prefix; records are
            cached after decoding (PNG) or as bytes (raw). Defaults to `False`.
        deterministic: reproducible order (slower); uses seed 0 when `seed` is None.
            Defaults to `False`.
        seed: shuffling seed. Defaults to `None`.
        shuffle_buffer: records in the shuffle buffer; None uses up to 2048 records
            within 256 MB. Defaults to `None`.
        input_context: `tf.distribute.InputContext`; shards by file when there are
            at least as many files as input pipelines, else by record (warns).
            Defaults to `None`.
        repeat: repeat forever; None means `training`. Defaults to `None`.
        drop_remainder: drop the last partial batch; None means `training`.
            Defaults to `None`.
        check_files: stat every shard against the manifest's byte counts first, so a
            truncated or missing file is named before reading. Defaults to `True`.
        check_records: count each shard's readable records against the manifest while
            reading, so a corrupt shard fails with an error naming the file (instead
            of TensorFlow's nameless "corrupted record at N"). Defaults to `True`.

    Returns:
        A `tf.data.Dataset` of `(images, labels)`: images float32 [B, H, W, C] in the
        stored intensity range; labels float32 [B, 1] (binary), one-hot [B, K]
        (multiclass) or multi-hot [B, K] (multilabel).

    Example:

    ```python
    train = load("/tmp/phantoms", "train", image_size=128, batch_size=64,
                 training=True, channels=3)
    images, labels = next(iter(train))
    ```
    """
    manifest = _as_manifest(path_or_manifest)
    info = _split_info(manifest, split)
    size = _normalize_size(image_size, manifest)
    if channels is None:
        channels = manifest.channels
    if channels not in schema.CHANNELS:
        raise ValueError(f"`channels` must be one of {schema.CHANNELS}. Received: {channels!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int. Received: {batch_size!r}")
    repeat = training if repeat is None else repeat
    drop_remainder = training if drop_remainder is None else drop_remainder
    if deterministic and seed is None:
        seed = 0
    if check_files:
        _check_shard_sizes(manifest, info.shards)

    files = [join(manifest.directory, shard.path) for shard in info.shards]
    expected = tf.constant([int(shard.records) for shard in info.shards], tf.int64)
    mode = sharding_mode(len(files), input_context)
    per_replica_batch = batch_size
    if input_context is not None:
        per_replica_batch = input_context.get_per_replica_batch_size(batch_size)
    if mode == "record":
        message = (
            f"split {split!r} has {len(files)} shard file(s) for "
            f"{input_context.num_input_pipelines} input pipelines: sharding by record "
            "(every pipeline reads every file). Rewrite with more shards "
            "(num_shards / --shards) to shard by file."
        )
        warnings.warn(message, stacklevel=2)
        logger.warning(message)
    elif mode == "file":
        logger.info(
            "split %r: sharding %d files by file across %d input pipelines",
            split, len(files), input_context.num_input_pipelines,
        )

    decoder = RecordDecoder(manifest)
    parser = RecordParser(manifest.task, manifest.num_classes, size, channels,
                          manifest.channels)
    parse = parser.parse_fn(training)
    compression = "" if manifest.compression == "NONE" else manifest.compression

    dataset = tf.data.Dataset.from_tensor_slices((files, expected))
    local_files = len(files)
    if mode == "file":
        dataset = dataset.shard(input_context.num_input_pipelines,
                                input_context.input_pipeline_id)
        local_files = len(files[input_context.input_pipeline_id::
                                input_context.num_input_pipelines])
    # In record mode every pipeline must see the same record order before `shard`.
    ordered = deterministic or mode == "record"
    if training and mode != "record" and local_files > 1:
        dataset = dataset.shuffle(local_files, seed=seed, reshuffle_each_iteration=True)
    # Both readers yield (index, record); the index is ignored downstream.
    if check_records:
        def read(path, records):
            return _checked_records(path, records, compression)
    else:
        def read(path, records):
            records_in_file = tf.data.TFRecordDataset(path, compression_type=compression)
            return tf.data.Dataset.zip((tf.data.Dataset.range(records), records_in_file))
    dataset = dataset.interleave(
        read,
        cycle_length=max(1, min(local_files, 16)),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=ordered,
    )
    if mode == "record":
        dataset = dataset.shard(input_context.num_input_pipelines,
                                input_context.input_pipeline_id)

    vectorised = decoder.supports_batch_decode
    if not vectorised:
        dataset = dataset.map(lambda index, record: decoder.decode(record),
                              num_parallel_calls=tf.data.AUTOTUNE,
                              deterministic=deterministic)
    if cache:
        dataset = dataset.cache(cache if isinstance(cache, str) else "")
    if training:
        if shuffle_buffer is None:
            height = manifest.height or size[0]
            width = manifest.width or size[1]
            record_bytes = height * width * manifest.channels * (
                2 if manifest.dtype == "uint16" else 1) + 64
            shuffle_buffer = max(
                64, min(_DEFAULT_SHUFFLE_RECORDS, _SHUFFLE_BUFFER_BYTES // record_bytes)
            )
        dataset = dataset.shuffle(min(shuffle_buffer, max(1, info.count)), seed=seed,
                                  reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    if vectorised:
        dataset = dataset.batch(per_replica_batch, drop_remainder=drop_remainder)
        dataset = dataset.map(lambda indices, records: parse(decoder.decode_batch(records)),
                              num_parallel_calls=tf.data.AUTOTUNE,
                              deterministic=deterministic)
    else:
        if decoder.stored_shape is None:
            # Mixed stored sizes: bring each image to `size` before batching.
            dataset = dataset.map(
                lambda decoded: dict(decoded, image=parser.resize(decoded["image"])),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
        # Batch the small stored-dtype images, then cast / resize / set channels once
        # per batch: cheaper than handling float RGB images one by one.
        dataset = dataset.batch(per_replica_batch, drop_remainder=drop_remainder)
        dataset = dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE,
                              deterministic=deterministic)
    if not repeat:
        # The record counts are known, so declare the number of batches: Keras then
        # shows progress and ends evaluation without "ran out of data" warnings.
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(
            _local_batches(info, mode, input_context, per_replica_batch, drop_remainder)))
    dataset = dataset.prefetch(tf.data.AUTOTUNE)

    options = tf.data.Options()
    options.deterministic = bool(deterministic)
    if input_context is not None:
        # Sharding is done above; stop tf.distribute from sharding again.
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.OFF
        )
    return dataset.with_options(options)


def make_dataset_fn(path_or_manifest, split, image_size=None, batch_size=32, training=False,
                    **load_kwargs):
    """A `dataset_fn(input_context)` for `strategy.distribute_datasets_from_function`.

    `batch_size` is the global batch; each input pipeline reads its own shard and
    batches `input_context.get_per_replica_batch_size(batch_size)`.

    Example:

    ```python
    strategy = tf.distribute.MirroredStrategy()
    dataset = strategy.distribute_datasets_from_function(
        make_dataset_fn("/tmp/phantoms", "train", 128, 64, training=True))
    ```
    """
    manifest = _as_manifest(path_or_manifest)

    def dataset_fn(input_context):
        return load(manifest, split, image_size=image_size, batch_size=batch_size,
                    training=training, input_context=input_context, **load_kwargs)

    return dataset_fn
