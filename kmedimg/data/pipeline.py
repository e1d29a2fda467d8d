"""`load` and `make_dataset_fn`: the tf.data input pipeline of one split.

`load` runs named phases, in the spirit of Model Garden's
`official/core/input_reader.py` (`read` = read the data source, then decode and
parse, then prefetch):

1. select files:      shard files of the split -> [shard by file] -> [shuffle files]
2. read records:      interleave TFRecordDatasets (checked against the manifest's
                      record counts) -> [shard by record]
3. decode:            per record, PNG or mixed shapes only (`RecordDecoder.decode`)
4. shuffle + repeat:  [cache] -> [shuffle] -> [repeat]
5. batch + parse:     raw records of one shape: batch -> one vectorised
                      `parse_example` + `decode_raw` per batch -> resize/channels
                      (`RecordParser`); otherwise [resize each] -> batch -> parse
6. finish:            [declare the number of batches] -> prefetch -> options

`_read_data_source` runs phases 1-2, `_decode_and_parse` 3-5, `_finish` 6.

The vectorised path (batch first, then decode the whole batch) is what makes raw
storage several times faster than decoding image files. `read_manifest` and `verify`
live in `kmedimg.data.manifest_files` and are re-exported here, with `read_error`
(a corrupt shard met while reading, as a one-line `ValueError`).
"""

import dataclasses
import logging
import warnings

import tensorflow as tf

from kmedimg.core.run_directory import join
from kmedimg.data import schema
from kmedimg.data.decoder import RecordDecoder
from kmedimg.data.manifest_files import (
    CORRUPT_SHARD_MARK,
    as_manifest,
    check_shard_sizes,
    read_error,
    read_manifest,
    split_info,
    verify,
)
from kmedimg.data.parser import RecordParser

logger = logging.getLogger(__name__)

#: Upper bound on the memory a default shuffle buffer may hold.
_SHUFFLE_BUFFER_BYTES = 256 * 1024 * 1024
_DEFAULT_SHUFFLE_RECORDS = 2048

__all__ = ["load", "make_dataset_fn", "read_error", "read_manifest", "sharding_mode",
           "verify"]


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
        message = tf.strings.join([
            CORRUPT_SHARD_MARK, sentinel_path, " holds fewer valid records than the ",
            tf.strings.as_string(expected), " the manifest lists (corrupt or truncated). "
            "`kmedimg inspect --verify` on the dataset directory checks every "
            "shard; restore the file or re-run `kmedimg convert`."])
        check = tf.debugging.Assert(
            tf.equal(tf.strings.length(sentinel_path), -1),  # always false, at run time
            [message], summarize=1,
        )
        with tf.control_dependencies([check]):
            return tf.identity(sentinel_path)

    records = tf.data.TFRecordDataset(path, compression_type=compression).ignore_errors()
    # from_tensor_slices, not from_tensors: tf.data's make_deterministic rewrite (on
    # under op determinism) treats the stateful TensorDataset op as asynchronous
    # nondeterminism and then runs the whole pipeline sequentially, logging an
    # `E0000 ... use_unbounded_threadpool` line per map; TensorSliceDataset is exempt.
    sentinel = tf.data.Dataset.from_tensor_slices(tf.reshape(path, [1]))
    records = records.concatenate(sentinel.map(fail))
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


def _log_sharding(split, mode, num_files, input_context):
    if mode == "record":
        message = (
            f"split {split!r} has {num_files} shard file(s) for "
            f"{input_context.num_input_pipelines} input pipelines: sharding by record "
            "(every pipeline reads every file). Rewrite with more shards "
            "(num_shards / --shards) to shard by file."
        )
        warnings.warn(message, stacklevel=3)
        logger.warning(message)
    elif mode == "file":
        logger.info(
            "split %r: sharding %d files by file across %d input pipelines",
            split, num_files, input_context.num_input_pipelines,
        )


def _select_files(manifest, info, mode, input_context, shuffle, seed):
    """Phase 1: `(path, expected records)` of this pipeline's shard files.

    Returns:
        `(dataset, local_files)`.
    """
    files = [join(manifest.directory, shard.path) for shard in info.shards]
    expected = tf.constant([int(shard.records) for shard in info.shards], tf.int64)
    dataset = tf.data.Dataset.from_tensor_slices((files, expected))
    local_files = len(files)
    if mode == "file":
        dataset = dataset.shard(input_context.num_input_pipelines,
                                input_context.input_pipeline_id)
        local_files = len(files[input_context.input_pipeline_id::
                                input_context.num_input_pipelines])
    if shuffle and mode != "record" and local_files > 1:
        dataset = dataset.shuffle(local_files, seed=seed, reshuffle_each_iteration=True)
    return dataset, local_files


def _read_records(files, local_files, compression, check_records, ordered, sequential):
    """Phase 2: interleaves the files' records as `(index, record)`.

    `sequential` reads one file after the other (manifest order); otherwise up to
    16 files are read in parallel, record by record.
    """
    if check_records:
        def read(path, records):
            return _checked_records(path, records, compression)
    else:
        def read(path, records):
            records_in_file = tf.data.TFRecordDataset(path, compression_type=compression)
            return tf.data.Dataset.zip((tf.data.Dataset.range(records), records_in_file))
    return files.interleave(
        read,
        cycle_length=1 if sequential else max(1, min(local_files, 16)),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=ordered,
    )


def _shuffle_buffer(manifest, info, size, shuffle_buffer):
    if shuffle_buffer is None:
        height = manifest.height or size[0]
        width = manifest.width or size[1]
        record_bytes = height * width * manifest.channels * (
            2 if manifest.dtype == "uint16" else 1) + 64
        shuffle_buffer = max(
            64, min(_DEFAULT_SHUFFLE_RECORDS, _SHUFFLE_BUFFER_BYTES // record_bytes)
        )
    return min(shuffle_buffer, max(1, info.count))


def _batch_and_parse(dataset, decoder, parser, parse, batch_size, drop_remainder,
                     deterministic):
    """Phase 5: batches and parses (vectorised decode for raw records of one shape)."""
    if decoder.supports_batch_decode:
        dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
        return dataset.map(lambda indices, records: parse(decoder.decode_batch(records)),
                           num_parallel_calls=tf.data.AUTOTUNE,
                           deterministic=deterministic)
    if decoder.stored_shape is None:
        # Mixed stored sizes: bring each image to `size` before batching.
        dataset = dataset.map(
            lambda decoded: dict(decoded, image=parser.resize(decoded["image"])),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    # Batch the small stored-dtype images, then cast / resize / set channels once
    # per batch: cheaper than handling float RGB images one by one.
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    return dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=deterministic)


def _check_load_arguments(manifest, image_size, channels, batch_size):
    size = _normalize_size(image_size, manifest)
    if channels is None:
        channels = manifest.channels
    if channels not in schema.CHANNELS:
        raise ValueError(f"`channels` must be one of {schema.CHANNELS}. Received: {channels!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int. Received: {batch_size!r}")
    return size, channels


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
    with_ids=False,
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
        with_ids: also yield each record's `id` string; without `training`, records
            then come in manifest order (shard after shard, in order), for
            predictions that line up with the records. Defaults to `False`.

    Returns:
        A `tf.data.Dataset` of `(images, labels)` (or `(images, labels, ids)` with
        `with_ids`): images float32 [B, H, W, C] in the stored intensity range;
        labels float32 [B, 1] (binary), one-hot [B, K] (multiclass) or multi-hot
        [B, K] (multilabel); ids string [B].

    Example:

    ```python
    train = load("/tmp/phantoms", "train", image_size=128, batch_size=64,
                 training=True, channels=3)
    images, labels = next(iter(train))
    ```
    """
    manifest = as_manifest(path_or_manifest)
    info = split_info(manifest, split)
    size, channels = _check_load_arguments(manifest, image_size, channels, batch_size)
    sequential = with_ids and not training
    deterministic = deterministic or sequential
    mode = sharding_mode(len(info.shards), input_context)
    _log_sharding(split, mode, len(info.shards), input_context)
    settings = _Settings(
        size=size, training=training, deterministic=deterministic,
        seed=0 if deterministic and seed is None else seed,
        cache=cache, shuffle_buffer=shuffle_buffer,
        repeat=training if repeat is None else repeat,
        drop_remainder=training if drop_remainder is None else drop_remainder,
        batch_size=(batch_size if input_context is None
                    else input_context.get_per_replica_batch_size(batch_size)),
        check_records=check_records, sequential=sequential, mode=mode,
        input_context=input_context,
    )
    if check_files:
        check_shard_sizes(manifest, info.shards)
    decoder = RecordDecoder(manifest, include_ids=with_ids)
    parser = RecordParser(manifest.task, manifest.num_classes, size, channels,
                          manifest.channels)
    dataset = _read_data_source(manifest, info, settings)
    dataset = _decode_and_parse(dataset, manifest, info, decoder,
                                parser.parse_fn(training, with_ids=with_ids), parser,
                                settings)
    return _finish(dataset, info, settings)


@dataclasses.dataclass(frozen=True)
class _Settings:
    """`load`'s validated arguments, as the phases use them."""

    size: tuple
    training: bool
    deterministic: bool
    seed: object
    cache: object
    shuffle_buffer: object
    repeat: bool
    drop_remainder: bool
    batch_size: int  # per input pipeline
    check_records: bool
    sequential: bool
    mode: str
    input_context: object


def _read_data_source(manifest, info, settings):
    """Phases 1-2: this pipeline's files -> its records as `(index, record)`.

    In record mode every pipeline must see the same record order before `shard`.
    """
    mode, input_context = settings.mode, settings.input_context
    files, local_files = _select_files(manifest, info, mode, input_context,
                                       shuffle=settings.training, seed=settings.seed)
    compression = "" if manifest.compression == "NONE" else manifest.compression
    dataset = _read_records(files, local_files, compression, settings.check_records,
                            ordered=settings.deterministic or mode == "record",
                            sequential=settings.sequential)
    if mode == "record":
        dataset = dataset.shard(input_context.num_input_pipelines,
                                input_context.input_pipeline_id)
    return dataset


def _decode_and_parse(dataset, manifest, info, decoder, parse, parser, settings):
    """Phases 3-5: decode (one by one when needed), cache, shuffle, repeat, batch, parse."""
    deterministic = settings.deterministic
    if not decoder.supports_batch_decode:
        dataset = dataset.map(lambda index, record: decoder.decode(record),
                              num_parallel_calls=tf.data.AUTOTUNE,
                              deterministic=deterministic)
    if settings.cache:
        dataset = dataset.cache(settings.cache if isinstance(settings.cache, str) else "")
    if settings.training:
        buffer = _shuffle_buffer(manifest, info, settings.size, settings.shuffle_buffer)
        dataset = dataset.shuffle(buffer, seed=settings.seed, reshuffle_each_iteration=True)
    if settings.repeat:
        dataset = dataset.repeat()
    return _batch_and_parse(dataset, decoder, parser, parse, settings.batch_size,
                            settings.drop_remainder, deterministic)


def _finish(dataset, info, settings):
    """Phase 6: the number of batches, prefetch and the dataset options."""
    input_context = settings.input_context
    if not settings.repeat:
        # The record counts are known, so declare the number of batches: Keras then
        # shows progress and ends evaluation without "ran out of data" warnings.
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(
            _local_batches(info, settings.mode, input_context, settings.batch_size,
                           settings.drop_remainder)))
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = bool(settings.deterministic)
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
    manifest = as_manifest(path_or_manifest)

    def dataset_fn(input_context):
        return load(manifest, split, image_size=image_size, batch_size=batch_size,
                    training=training, input_context=input_context, **load_kwargs)

    return dataset_fn
