"""`write_dataset`: a Source -> sharded TFRecords + `dataset.json` + `rejected.csv`.

Two passes over the source, no spooling. Pass 1 validates every item and keeps only
a few facts per item (labels, patient, content hash, split, shape: ~200 bytes), which
is all split planning and duplicate detection need; pass 2 iterates the source again
(the `Source` protocol promises the same sequence) and writes. Reading twice costs a
second decode of the inputs, but memory stays bounded by the item count rather than
by the pixel volume, and no scratch copy of the whole dataset is needed on disk — which
matters when the output is gs:// and the local disk is small. Pass 2 checks that each
item matches pass 1 (source name and content hash) and fails loudly otherwise.

Consistency rules (all documented in the manifest's `conversion` field):

* dtype: the most common dtype among valid items is the dataset's; items of another
  dtype are rejected (converting uint16 <-> uint8 would change the intensity scale).
* channels: `channels=None` takes the most common channel count and rejects the
  others (the reason says to pass `channels=3`); `channels=3` promotes grey items to
  RGB losslessly; `channels=1` rejects RGB items (no silent lossy conversion).
* `image_size` resizes at conversion (bilinear with antialiasing, rounded back to the
  stored dtype), so all records share one shape and the fast vectorised read applies.

Outputs are written under a temporary directory inside `out_dir`, renamed into place,
and `dataset.json` is written last (itself through a temporary name), so an
interrupted conversion never leaves a manifest that lists partial shards. Every
output path goes through `tf.io.gfile`, so `out_dir` may be local or `gs://`.
"""

import collections
import csv
import dataclasses
import io
import logging
import math
import re
import sys
import uuid

import numpy as np

from kmedimg.data import schema
from kmedimg.data.paths import join, sha256_of
from kmedimg.data.sources.base import Item, Rejected
from kmedimg.data.splits import check_fractions, plan_splits

logger = logging.getLogger(__name__)

#: Target size of one shard file; large enough for efficient sequential reads
#: (tf.data guide: 100 MB+), small enough to spread over workers.
TARGET_SHARD_BYTES = 128 * 1024 * 1024
#: Default minimum number of shards per split (capped at the split's record count):
#: a single file starves a second input worker (issue 6), 4 lets one host interleave
#: files in parallel and a 4-host pod slice shard by file. Pass `num_shards` for more.
MIN_SHARDS_PER_SPLIT = 4
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_MAX_LISTED_DUPLICATE_GROUPS = 1000


@dataclasses.dataclass(slots=True)
class _Planned:
    """What pass 1 keeps of one valid item (no pixels)."""

    position: int  # index in the source's sequence
    source: str
    labels: tuple
    patient: str
    digest: str
    split: object
    shape: tuple  # stored shape after promotion / resizing
    dtype: str
    channels: int


def _normalize_size(image_size):
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        size = (int(image_size), int(image_size))
    elif isinstance(image_size, (tuple, list)) and len(image_size) == 2:
        size = tuple(int(value) for value in image_size)
    else:
        raise ValueError(
            "`image_size` must be None, an int or a (height, width) pair. "
            f"Received: image_size={image_size!r}"
        )
    if min(size) < 1:
        raise ValueError(f"`image_size` must be positive. Received: image_size={image_size!r}")
    return size


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {allowed}. Received: {name}={value!r}")


def _label_indices(item, task, class_names, index_of):
    """Returns the item's label indices or raises ValueError with the reason."""
    labels = item.labels
    if isinstance(labels, (str, int, np.integer)):
        labels = (labels,)
    indices = []
    for label in labels:
        if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
            if not 0 <= int(label) < len(class_names):
                raise ValueError(
                    f"label index {int(label)} out of range for {len(class_names)} classes"
                )
            indices.append(int(label))
        elif str(label) in index_of:
            indices.append(index_of[str(label)])
        else:
            raise ValueError(
                f"unknown label {label!r}; expected one of {list(class_names)}"
            )
    if task in ("binary", "multiclass") and len(indices) != 1:
        raise ValueError(
            f"task {task!r} needs exactly one label per image, got {len(indices)}: "
            f"{list(labels)}"
        )
    return tuple(sorted(set(indices)))


def _resize(pixels, size):
    """Bilinear antialiased resize of an HxWxC uint array, rounded back to its dtype."""
    if pixels.shape[:2] == tuple(size):
        return pixels
    import tensorflow as tf

    resized = tf.image.resize(
        tf.convert_to_tensor(pixels, tf.float32), size, method="bilinear", antialias=True
    ).numpy()
    limit = np.iinfo(pixels.dtype).max
    return np.clip(np.rint(resized), 0, limit).astype(pixels.dtype)


def _shard_count(records, estimated_bytes, requested, split):
    if requested is not None:
        if isinstance(requested, dict):
            requested = requested.get(split)
            if requested is None:
                return _shard_count(records, estimated_bytes, None, split)
        if not isinstance(requested, (int, np.integer)) or requested < 1:
            raise ValueError(
                "`num_shards` must be a positive int (or a dict split -> int). "
                f"Received: num_shards={requested!r}"
            )
        return max(1, min(int(requested), records))
    by_size = math.ceil(estimated_bytes / TARGET_SHARD_BYTES)
    return max(1, by_size, min(records, MIN_SHARDS_PER_SPLIT))


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
        ValueError: for invalid arguments, an existing dataset without `overwrite`,
            or a source with no valid item.

    Example:

    ```python
    from kmedimg.data.synthetic import PhantomSource
    manifest = write_dataset(PhantomSource(num_images=100), "/tmp/phantoms",
                             val_fraction=0.1, test_fraction=0.1)
    print(manifest.splits["train"].count)
    ```
    """
    import tensorflow as tf

    _check_choice("encoding", encoding, schema.ENCODINGS)
    _check_choice("compression", compression, schema.COMPRESSIONS)
    _check_choice("channels", channels, (None,) + schema.CHANNELS)
    check_fractions(val_fraction, test_fraction)
    size = _normalize_size(image_size)
    task = getattr(source, "task", None)
    _check_choice("source.task", task, schema.TASKS)
    class_names = [str(name) for name in getattr(source, "class_names", None) or []]
    if not class_names:
        raise ValueError(f"`source.class_names` is empty. Received: source={source!r}")
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"`source.class_names` has repeated names. Received: {class_names}")
    if task == "binary" and len(class_names) != 2:
        raise ValueError(
            "A binary source needs exactly 2 class names (negative, positive). "
            f"Received: class_names={class_names}"
        )
    out_dir = str(out_dir)
    manifest_path = join(out_dir, schema.MANIFEST_NAME)
    old_manifest = None
    if tf.io.gfile.exists(manifest_path):
        if not overwrite:
            raise ValueError(
                f"{manifest_path} already exists. Pass overwrite=True (CLI: --overwrite) "
                f"or choose another output directory. Received: out_dir={out_dir!r}"
            )
        with tf.io.gfile.GFile(manifest_path, "r") as handle:
            try:
                old_manifest = schema.Manifest.from_json(handle.read(), manifest_path)
            except ValueError:
                old_manifest = None
        # Remove the old manifest first: from here on the directory is never a
        # valid-looking dataset until the new manifest lands.
        tf.io.gfile.remove(manifest_path)
    tf.io.gfile.makedirs(out_dir)

    # ---- pass 1: validate, hash, collect facts --------------------------------------
    index_of = {name: index for index, name in enumerate(class_names)}
    sequence = []  # per source entry: _Planned or Rejected (small)
    rejected_by_source = 0
    show_scan = progress is True
    for position, entry in enumerate(source):
        if show_scan and position % 500 == 0:
            sys.stderr.write(f"\rscanning {position} items (pass 1 of 2)")
            sys.stderr.flush()
        if isinstance(entry, Rejected):
            sequence.append(entry)
            rejected_by_source += 1
            continue
        if not isinstance(entry, Item):
            raise TypeError(
                "A source must yield kmedimg Item or Rejected objects. "
                f"Received: {type(entry).__name__} at position {position}"
            )
        try:
            pixels = schema.check_pixels(entry.pixels, where="image")
            labels = _label_indices(entry, task, class_names, index_of)
            if entry.split is not None and not _SPLIT_NAME.match(str(entry.split)):
                raise ValueError(
                    f"split name must match [A-Za-z0-9_]+. Received: split={entry.split!r}"
                )
        except ValueError as error:
            sequence.append(Rejected(entry.source, str(error)))
            continue
        sequence.append(
            _Planned(
                position=position,
                source=entry.source,
                labels=labels,
                patient=str(entry.patient or ""),
                digest=schema.content_hash(pixels),
                split=None if entry.split is None else str(entry.split),
                shape=pixels.shape,
                dtype=pixels.dtype.name,
                channels=pixels.shape[-1],
            )
        )
    if show_scan:
        sys.stderr.write(f"\rscanned {len(sequence)} items (pass 1 of 2)\n")
    valid = [entry for entry in sequence if isinstance(entry, _Planned)]
    if not valid:
        reasons = collections.Counter(entry.reason for entry in sequence)
        raise ValueError(
            f"The source yielded no valid image ({len(sequence)} entries, all rejected). "
            f"Most common reasons: {reasons.most_common(3)}. Received: source={source!r}"
        )

    # ---- dataset-wide dtype / channels ----------------------------------------------
    dtype = collections.Counter(entry.dtype for entry in valid).most_common(1)[0][0]
    if channels is None:
        stored_channels = collections.Counter(e.channels for e in valid).most_common(1)[0][0]
    else:
        stored_channels = channels
    if encoding == "png" and dtype == "uint16" and stored_channels == 3:
        raise ValueError(
            "PNG encoding of 16-bit RGB images is not supported (Pillow cannot write "
            "them); use encoding='raw'. Received: encoding='png', dtype=uint16, channels=3"
        )
    rejections = {}  # position -> reason, decided after pass 1
    promoted = 0
    for entry in valid:
        if entry.dtype != dtype:
            rejections[entry.position] = (
                f"dtype {entry.dtype} differs from the dataset's {dtype} (the most common); "
                "convert the source images to one bit depth"
            )
        elif entry.channels != stored_channels:
            if entry.channels == 1 and stored_channels == 3 and channels == 3:
                promoted += 1
            elif channels is None:
                rejections[entry.position] = (
                    f"{entry.channels} channel(s) but the dataset has {stored_channels} "
                    "(the most common); pass channels=3 (CLI: --channels 3) to promote "
                    "grey images to RGB"
                )
            else:
                rejections[entry.position] = (
                    f"{entry.channels} channels but channels={channels} was requested; "
                    "RGB is not reduced to grey silently"
                )
        height, width = size if size is not None else entry.shape[:2]
        entry.shape = (height, width, stored_channels)

    # ---- duplicates -----------------------------------------------------------------
    kept = [entry for entry in valid if entry.position not in rejections]
    by_digest = collections.defaultdict(list)
    for entry in kept:
        by_digest[entry.digest].append(entry)
    duplicate_groups = [group for group in by_digest.values() if len(group) > 1]
    dropped = 0
    if drop_duplicates:
        for group in duplicate_groups:
            for copy in group[1:]:
                rejections[copy.position] = (
                    f"exact duplicate of {group[0].source} (drop_duplicates=True)"
                )
                dropped += 1
        kept = [entry for entry in kept if entry.position not in rejections]

    # ---- splits ---------------------------------------------------------------------
    unsplit = [entry for entry in kept if entry.split is None]
    if unsplit:
        plan = plan_splits(
            [entry.labels for entry in unsplit],
            [entry.patient for entry in unsplit],
            [entry.digest for entry in unsplit],
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            seed=seed,
        )
        for entry, split in zip(unsplit, plan):
            entry.split = split
    split_entries = collections.OrderedDict()
    for name in sorted({entry.split for entry in kept},
                       key=lambda s: ((("train", "val", "test") + (s,)).index(s), s)):
        split_entries[name] = [entry for entry in kept if entry.split == name]

    # Duplicates the source itself placed in different splits (e.g. an official split
    # that leaks): kept as given, but reported, since given splits are the source's truth.
    straddling = []
    for group in duplicate_groups:
        members = [entry for entry in group if entry.position not in rejections]
        if len({entry.split for entry in members}) > 1:
            straddling.append(group)
    if straddling:
        logger.warning(
            "%d exact-duplicate groups straddle the splits given by the source; kept as "
            "given (see duplicates.straddling in %s; drop_duplicates=True removes copies).",
            len(straddling), manifest_path,
        )

    # ---- shard plan -----------------------------------------------------------------
    itemsize = np.dtype(dtype).itemsize
    shard_plan = {}  # position -> (split, shard index)
    shard_counts = {}
    for name, entries in split_entries.items():
        estimated = sum(int(np.prod(entry.shape)) * itemsize + 64 for entry in entries)
        count = _shard_count(len(entries), estimated, num_shards, name)
        shard_counts[name] = count
        # Contiguous blocks, not round robin: sources often come sorted (one class
        # folder after another) and the writer cannot reorder without holding pixels.
        # Round robin would give every shard the same sorted profile, so reading shards
        # in parallel would still see one class first; contiguous blocks read in
        # parallel (load() interleaves up to 16 files record by record) mix the classes.
        for rank, entry in enumerate(entries):
            shard_plan[entry.position] = (name, rank * count // len(entries))

    # ---- pass 2: write --------------------------------------------------------------
    temp_dir = join(out_dir, f".incomplete-{uuid.uuid4().hex[:12]}")
    tf.io.gfile.makedirs(temp_dir)
    options = tf.io.TFRecordOptions(compression_type="" if compression == "NONE" else compression)
    # One open writer per split: shards are contiguous blocks of the split's records in
    # source order, so a shard is complete when the next one starts (thousands of
    # shards never mean thousands of open files or gs:// upload buffers).
    writers = {}  # split -> (shard index, TFRecordWriter)
    records_in_shard = collections.Counter()
    by_position = {entry.position: entry for entry in valid}
    progress_bar = _Progress(progress, len(shard_plan))

    def writer_for(split, index):
        current = writers.get(split)
        if current is None or current[0] != index:
            if current is not None:
                current[1].close()
            path = join(temp_dir, schema.shard_name(split, index, shard_counts[split]))
            writers[split] = (index, tf.io.TFRecordWriter(path, options))
        return writers[split][1]

    try:
        seen_second = 0
        for position, entry in enumerate(source):
            seen_second += 1
            if position >= len(sequence):
                raise RuntimeError(
                    "The source yielded more entries on the second pass than on the "
                    f"first ({len(sequence)}); sources must iterate reproducibly."
                )
            first = sequence[position]
            if not isinstance(entry, (Item, Rejected)) or entry.source != first.source:
                raise RuntimeError(
                    f"The source yielded a different sequence on the second pass at "
                    f"position {position}: {first.source!r} then "
                    f"{getattr(entry, 'source', entry)!r}; sources must iterate "
                    "reproducibly."
                )
            if position not in shard_plan:
                continue
            planned = by_position[position]
            pixels = schema.check_pixels(entry.pixels, where=entry.source)
            if schema.content_hash(pixels) != planned.digest:
                raise RuntimeError(
                    f"{entry.source}: pixels changed between the two passes over the "
                    "source; sources must iterate reproducibly."
                )
            if pixels.shape[-1] != planned.shape[-1]:
                pixels = np.repeat(pixels, planned.shape[-1], axis=-1)
            if size is not None:
                pixels = _resize(pixels, size)
            identifier = entry.record_id or schema.record_id(entry.source)
            split, index = shard_plan[position]
            writer_for(split, index).write(
                schema.make_example(
                    pixels, planned.labels, identifier, planned.patient, encoding
                )
            )
            records_in_shard[(split, index)] += 1
            progress_bar.update()
        if seen_second != len(sequence):
            raise RuntimeError(
                f"The source yielded {seen_second} entries on the second pass but "
                f"{len(sequence)} on the first; sources must iterate reproducibly."
            )
        for _, writer in writers.values():
            writer.close()
        writers.clear()

        # ---- move into place, checksums, rejected.csv, manifest last ----------------
        splits = {}
        for name, entries in split_entries.items():
            class_counts = collections.Counter()
            for entry in entries:
                for label in entry.labels:
                    class_counts[class_names[label]] += 1
            shards = []
            for index in range(shard_counts[name]):
                file_name = schema.shard_name(name, index, shard_counts[name])
                temp_path = join(temp_dir, file_name)
                shards.append(
                    schema.ShardInfo(
                        path=file_name,
                        records=records_in_shard[(name, index)],
                        sha256=sha256_of(temp_path),
                        bytes=tf.io.gfile.stat(temp_path).length,
                    )
                )
                tf.io.gfile.rename(temp_path, join(out_dir, file_name), overwrite=True)
            splits[name] = schema.SplitInfo(
                count=len(entries),
                class_counts={n: class_counts[n] for n in class_names},
                shards=shards,
            )

        rejected_rows = []
        for position, entry in enumerate(sequence):
            if isinstance(entry, Rejected):
                rejected_rows.append((entry.source, entry.reason))
            elif position in rejections:
                rejected_rows.append((entry.source, rejections[position]))
        buffer = io.StringIO()
        csv_writer = csv.writer(buffer, lineterminator="\n")
        csv_writer.writerow(["source", "reason"])
        csv_writer.writerows(rejected_rows)
        rejected_temp = join(temp_dir, schema.REJECTED_NAME)
        with tf.io.gfile.GFile(rejected_temp, "w") as handle:
            handle.write(buffer.getvalue())
        tf.io.gfile.rename(rejected_temp, join(out_dir, schema.REJECTED_NAME), overwrite=True)

        written = sum(split.count for split in splits.values())
        reason_counts = collections.Counter(reason for _, reason in rejected_rows)

        def describe_group(group):
            return {
                "sha256": group[0].digest,
                "sources": [entry.source for entry in group],
                "splits": sorted({entry.split for entry in group
                                  if entry.position not in rejections}),
            }

        duplicates = {
            "groups": len(duplicate_groups),
            "items": sum(len(group) for group in duplicate_groups),
            "dropped": dropped,
            "straddling": len(straddling),
            "list": [describe_group(group)
                     for group in duplicate_groups[:_MAX_LISTED_DUPLICATE_GROUPS]],
            "list_truncated": len(duplicate_groups) > _MAX_LISTED_DUPLICATE_GROUPS,
        }
        shapes = {entry.shape for entry in kept}
        height, width = (shapes.pop()[:2] if len(shapes) == 1 else (None, None))
        describe = getattr(source, "describe", None)
        import kmedimg

        manifest = schema.Manifest(
            task=task,
            class_names=class_names,
            encoding=encoding,
            dtype=dtype,
            channels=int(stored_channels),
            height=None if height is None else int(height),
            width=None if width is None else int(width),
            compression=compression,
            splits=splits,
            source=describe() if callable(describe) else {"repr": repr(source)},
            conversion={
                "writer": f"kmedimg {kmedimg.__version__}",
                "encoding": encoding,
                "compression": compression,
                "num_shards": num_shards,
                "val_fraction": val_fraction,
                "test_fraction": test_fraction,
                "seed": seed,
                "drop_duplicates": drop_duplicates,
                "image_size": list(size) if size else None,
                "channels": channels,
                "promoted_grey_to_rgb": promoted,
                "splits_given_by_source": len(kept) - len(unsplit),
                "args": dict(conversion_args or {}),
            },
            counts={
                "seen": len(sequence),
                "written": written,
                "rejected": len(rejected_rows),
                "rejected_by_source": rejected_by_source,
                "rejected_reasons": dict(reason_counts.most_common(20)),
                "per_split": {name: split.count for name, split in splits.items()},
            },
            duplicates=duplicates,
        )
        manifest.validate(manifest_path)
        manifest_temp = join(temp_dir, schema.MANIFEST_NAME)
        with tf.io.gfile.GFile(manifest_temp, "w") as handle:
            handle.write(manifest.to_json())
        tf.io.gfile.rename(manifest_temp, manifest_path, overwrite=True)
    finally:
        for _, writer in writers.values():
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - closing after the real error
                pass
        if tf.io.gfile.exists(temp_dir):
            tf.io.gfile.rmtree(temp_dir)

    # Stale shards of a replaced dataset (listed by the old manifest, not the new one).
    if old_manifest is not None:
        new_files = {shard.path for split in splits.values() for shard in split.shards}
        for split in old_manifest.splits.values():
            for shard in split.shards:
                path = join(out_dir, shard.path)
                if shard.path not in new_files and tf.io.gfile.exists(path):
                    tf.io.gfile.remove(path)
    manifest.directory = out_dir
    return manifest
