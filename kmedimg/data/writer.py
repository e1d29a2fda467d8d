"""`write_dataset`: a Source -> sharded TFRecords + `dataset.json` + `rejected.csv`.

Plan, then execute. `write_dataset` composes three steps:

1. `kmedimg.data.planning.plan_conversion` (pass 1, no TensorFlow, nothing written):
   validates every item and keeps only a few facts per item (labels, patient,
   content hash, split, shape: ~200 bytes), which is all split planning, duplicate
   detection and shard assignment need.
2. `write_shards` (pass 2): iterates the source again (the `Source` protocol promises
   the same sequence) and writes each planned record into its shard under a
   temporary directory. It checks that each item matches pass 1 (source name and
   content hash) and fails loudly otherwise.
3. `kmedimg.data.finalize.finalize`: checksums, `rejected.csv`, the manifest, and
   the renames into place.

Reading twice costs a second decode of the inputs, but memory stays bounded by the
item count rather than by the pixel volume, and no scratch copy of the whole dataset
is needed on disk — which matters when the output is gs:// and the local disk is
small. Every output path goes through `tf.io.gfile`, so `out_dir` may be local or
`gs://`.

Nothing is replaced until the new dataset is complete: shards, `rejected.csv` and
`dataset.json` are all written under a temporary directory inside `out_dir` first,
and only then renamed into place (`dataset.json` last), so a failed conversion —
no valid item, disk full, a kill — leaves the previous dataset as it was. The whole
conversion holds `kmedimg.data.paths.OutputLock` on `out_dir`: a second conversion
into the same directory fails at once, and temporary directories of killed
conversions are removed by the next one.
"""

import collections
import contextlib
import posixpath
import sys
import uuid

import numpy as np
import tensorflow as tf

from kmedimg.core.run_directory import join
from kmedimg.data import schema
from kmedimg.data.finalize import finalize
from kmedimg.data.paths import (TEMP_PREFIX, OutputLock, check_output_contents,
                                check_output_directory, remove_stale_temporaries, writing)
from kmedimg.data.planning import check_conversion_arguments, normalize_size, plan_conversion
from kmedimg.data.sources.base import Item, Rejected


class _Progress:
    """Progress reporting: `True` draws a bar on stderr, a callable gets (done, total)."""

    def __init__(self, progress, total):
        self.callback = progress if callable(progress) else None
        self.enabled = bool(progress)
        self.total = total
        self.done = 0
        self.step = max(1, total // 100)

    def update(self):
        self.done += 1
        if self.callback is not None:
            self.callback(self.done, self.total)
        elif self.enabled and (self.done % self.step == 0 or self.done == self.total):
            width = 30
            filled = int(width * self.done / max(1, self.total))
            sys.stderr.write(
                f"\rwriting [{'=' * filled}{' ' * (width - filled)}] {self.done}/{self.total}"
            )
            if self.done == self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()


class _ShardWriters:
    """One open `TFRecordWriter` per split.

    Shards are contiguous blocks of the split's records in source order, so a shard
    is complete when the next one starts (thousands of shards never mean thousands of
    open files or gs:// upload buffers).
    """

    def __init__(self, plan, directory):
        self.plan = plan
        self.directory = directory
        # Write errors name the dataset directory, not its temporary subdirectory.
        parent, name = posixpath.split(str(directory).rstrip("/"))
        self.out_dir = parent if name.startswith(TEMP_PREFIX) else str(directory)
        compression = plan.compression
        self.options = tf.io.TFRecordOptions(
            compression_type="" if compression == "NONE" else compression)
        self.open = {}  # split -> (shard index, TFRecordWriter)

    def write(self, split, index, record):
        with writing(self.out_dir):
            current = self.open.get(split)
            if current is None or current[0] != index:
                if current is not None:
                    current[1].close()
                name = schema.shard_name(split, index, self.plan.shard_counts[split])
                self.open[split] = (index, tf.io.TFRecordWriter(
                    join(self.directory, name), self.options))
            self.open[split][1].write(record)

    def close(self, quiet=False):
        for _, writer in self.open.values():
            try:
                with writing(self.out_dir):
                    writer.close()
            except Exception:  # noqa: BLE001 - closing after the real error
                if not quiet:
                    raise
        self.open.clear()


def resize_pixels(pixels, size):
    """Bilinear antialiased resize of an HxWxC uint array, rounded back to its dtype."""
    if pixels.shape[:2] == tuple(size):
        return pixels
    resized = tf.image.resize(
        tf.convert_to_tensor(pixels, tf.float32), size, method="bilinear", antialias=True
    ).numpy()
    limit = np.iinfo(pixels.dtype).max
    return np.clip(np.rint(resized), 0, limit).astype(pixels.dtype)


def _stored_pixels(plan, planned, entry):
    """The pixels of `entry` as the plan stores them (checked against pass 1)."""
    pixels = schema.check_pixels(entry.pixels, where=entry.source)
    if schema.content_hash(pixels) != planned.digest:
        raise RuntimeError(
            f"{entry.source}: pixels changed between the two passes over the "
            "source; sources must iterate reproducibly."
        )
    if pixels.shape[-1] != planned.shape[-1]:
        pixels = np.repeat(pixels, planned.shape[-1], axis=-1)
    if plan.image_size is not None:
        pixels = resize_pixels(pixels, plan.image_size)
    return pixels


def _check_same_entry(plan, position, entry):
    if position >= len(plan.entries):
        raise RuntimeError(
            "The source yielded more entries on the second pass than on the "
            f"first ({len(plan.entries)}); sources must iterate reproducibly."
        )
    first = plan.entries[position]
    if not isinstance(entry, (Item, Rejected)) or entry.source != first.source:
        raise RuntimeError(
            f"The source yielded a different sequence on the second pass at "
            f"position {position}: {first.source!r} then "
            f"{getattr(entry, 'source', entry)!r}; sources must iterate "
            "reproducibly."
        )


def write_shards(plan, source, directory, progress=False):
    """Pass 2: writes every planned record of `source` into its shard in `directory`.

    Args:
        plan: the `ConversionPlan` of `source`.
        source: the same source, iterated again (it must yield the same sequence).
        directory: where the shard files go (local or gs://; must exist).
        progress: True for a progress bar on stderr, or a callable(done, total)
            called per written item. Defaults to `False`.

    Returns:
        A `collections.Counter` of records per `(split, shard index)`.

    Raises:
        RuntimeError: when the source yields another sequence than in pass 1.
    """
    writers = _ShardWriters(plan, directory)
    records_in_shard = collections.Counter()
    valid = {entry.position: entry for entry in plan.valid()}
    bar = _Progress(progress, len(plan.shard_of))
    seen = 0
    try:
        for position, entry in enumerate(source):
            seen += 1
            _check_same_entry(plan, position, entry)
            if position not in plan.shard_of:
                continue
            planned = valid[position]
            pixels = _stored_pixels(plan, planned, entry)
            identifier = entry.record_id or schema.record_id(entry.source)
            split, index = plan.shard_of[position]
            writers.write(split, index, schema.make_example(
                pixels, planned.labels, identifier, planned.patient, plan.encoding))
            records_in_shard[(split, index)] += 1
            bar.update()
        if seen != len(plan.entries):
            raise RuntimeError(
                f"The source yielded {seen} entries on the second pass but "
                f"{len(plan.entries)} on the first; sources must iterate reproducibly."
            )
        writers.close()
    finally:
        writers.close(quiet=True)
    return records_in_shard


#: Largest `image_size` side: an 8192 x 8192 RGB image is 200 MB as uint8 and takes
#: ~2 GB to resize in float32; larger sizes only run out of memory.
MAX_IMAGE_SIZE = 8192


def check_image_size(image_size):
    """Normalises `image_size` and bounds it by `MAX_IMAGE_SIZE` (before any allocation).

    Raises:
        ValueError: naming `image_size` and the bound.
    """
    size = normalize_size(image_size)
    if size is not None and max(size) > MAX_IMAGE_SIZE:
        height, width = size
        raise ValueError(
            f"`image_size` must be at most {MAX_IMAGE_SIZE} pixels per side (CLI: "
            f"--image-size): a {height} x {width} RGB image needs "
            f"{height * width * 3 * 4 / 2**30:.0f} GB to resize. Choose a smaller size. "
            f"Received: image_size={image_size!r}"
        )
    return size


def _read_replaced(out_dir):
    """The readable manifest of the dataset `out_dir` holds (to replace), or None."""
    manifest_path = join(out_dir, schema.MANIFEST_NAME)
    if not tf.io.gfile.exists(manifest_path):
        return None
    with tf.io.gfile.GFile(manifest_path, "r") as handle:
        try:
            return schema.Manifest.from_json(handle.read(), manifest_path)
        except ValueError:
            return None  # unreadable: replaced all the same, its shards are unknown


def _make_output_directory(out_dir):
    """Creates `out_dir` if missing; returns whether it was created."""
    check_output_directory(out_dir)
    if tf.io.gfile.isdir(out_dir):
        return False
    with writing(out_dir):
        tf.io.gfile.makedirs(out_dir)
    return True


def _remove_if_empty(out_dir):
    """Removes a directory this conversion created, when it failed before filling it."""
    with contextlib.suppress(OSError, tf.errors.OpError):
        if not tf.io.gfile.listdir(out_dir):
            tf.io.gfile.rmtree(out_dir)


def _convert_locked(source, out_dir, overwrite, plan_kwargs, progress, conversion_args):
    """Plans, writes and finalizes while holding the lock on `out_dir`."""
    remove_stale_temporaries(out_dir)
    check_output_contents(out_dir, overwrite)
    replaced = _read_replaced(out_dir)
    plan = plan_conversion(source, progress=progress, **plan_kwargs)
    temp_dir = join(out_dir, f"{TEMP_PREFIX}{uuid.uuid4().hex[:12]}")
    try:
        with writing(out_dir):
            tf.io.gfile.makedirs(temp_dir)
        records_in_shard = write_shards(plan, source, temp_dir, progress)
        return finalize(plan, source, out_dir, temp_dir, records_in_shard,
                        conversion_args=conversion_args, replaced=replaced)
    finally:
        with contextlib.suppress(OSError, tf.errors.OpError):
            if tf.io.gfile.exists(temp_dir):
                tf.io.gfile.rmtree(temp_dir)


def write_dataset(
    source,
    out_dir,
    *,
    encoding="raw",
    compression="NONE",
    num_shards=None,
    val_fraction=0.0,
    test_fraction=0.0,
    seed=0,
    drop_duplicates=False,
    image_size=None,
    progress=False,
    conversion_args=None,
    channels=None,
    overwrite=False,
):
    """Converts a source to sharded TFRecords with a `dataset.json` manifest.

    Args:
        source: a `kmedimg.data.sources.Source` (iterable of `Item`/`Rejected` with
            `task`, `class_names` and `describe()`); it is iterated twice.
        out_dir: output directory, local or `gs://`. Created if missing.
        encoding: `"raw"` (tensor bytes; fastest to read) or `"png"` (smaller).
            Defaults to `"raw"`.
        compression: TFRecord compression, `"NONE"`, `"ZLIB"` or `"GZIP"`.
            Defaults to `"NONE"`.
        num_shards: shards per split (int, or dict split -> int); None picks
            ~128 MB per shard and at least `min(records, 4)`. Defaults to `None`.
        val_fraction: share of items for "val" when the source gives no split.
            Defaults to `0.0`.
        test_fraction: share of items for "test" when the source gives no split.
            Defaults to `0.0`.
        seed: seed of the split plan. Defaults to `0`.
        drop_duplicates: reject all but the first copy of exact-duplicate images
            (listed in rejected.csv). Defaults to `False` (keep and report them).
        image_size: int or (height, width) to resize every image at conversion.
            Defaults to `None` (keep sizes).
        progress: True for a progress bar on stderr, or a callable(done, total)
            called per written item. Defaults to `False`.
        conversion_args: JSON-able dict stored in the manifest (e.g. the CLI call).
            Defaults to `None`.
        channels: None keeps the majority channel count and rejects the others;
            3 promotes grey items to RGB; 1 rejects RGB items. Defaults to `None`.
        overwrite: replace an existing dataset in `out_dir`. Defaults to `False`.

    Returns:
        The `schema.Manifest` written to `out_dir/dataset.json`.

    Raises:
        ValueError: for invalid arguments (`image_size` above `MAX_IMAGE_SIZE`), an
            `out_dir` that is a file or is not empty without `overwrite`, or a source
            with no valid item.
        ConversionError: when another conversion holds the lock on `out_dir`, or a
            write fails (disk full, ...). In every failure the previous dataset in
            `out_dir` is kept, and an `out_dir` this call created is removed.

    Example:

    ```python
    from kmedimg.data.synthetic import PhantomSource
    manifest = write_dataset(PhantomSource(num_images=100), "/tmp/phantoms",
                             val_fraction=0.1, test_fraction=0.1)
    print(manifest.splits["train"].count)
    ```
    """
    check_conversion_arguments(source, encoding, compression, channels, val_fraction,
                               test_fraction, image_size)
    check_image_size(image_size)
    out_dir = str(out_dir)
    plan_kwargs = dict(
        encoding=encoding, compression=compression, num_shards=num_shards,
        val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
        drop_duplicates=drop_duplicates, image_size=image_size, channels=channels)
    created = _make_output_directory(out_dir)
    try:
        with OutputLock(out_dir):
            return _convert_locked(source, out_dir, overwrite, plan_kwargs, progress,
                                   conversion_args)
    except BaseException:
        if created:
            _remove_if_empty(out_dir)
        raise
