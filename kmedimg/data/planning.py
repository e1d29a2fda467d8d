"""`plan_conversion`: pass 1 of a conversion, a pure plan with no TensorFlow and no output.

`write_dataset` is `plan_conversion` (read every item once, keep ~200 bytes of facts
per item) then `write_shards` (read the items again and write the planned records)
then `finalize` (checksums, `rejected.csv`, the manifest, renames). The plan decides
everything that needs the whole dataset: labels, the dataset's dtype and channel
count, which items are rejected and why, exact duplicates, splits, and the shard of
every record. It holds no pixels, touches no file, and imports no TensorFlow, so it
can be inspected (or tested) before anything is written.

Consistency rules (all recorded in the manifest's `conversion` field):

* dtype: the most common dtype among valid items is the dataset's; items of another
  dtype are rejected (converting uint16 <-> uint8 would change the intensity scale).
* channels: `channels=None` takes the most common channel count and rejects the
  others (the reason says to pass `channels=3`); `channels=3` promotes grey items to
  RGB losslessly; `channels=1` rejects RGB items (no silent lossy conversion).
* `image_size` resizes at conversion, so all records share one shape and the fast
  vectorised read applies.
"""

import collections
import dataclasses
import logging
import math
import re
import sys

import numpy as np

from kmedimg.core.vocabulary import SPLITS
from kmedimg.data import schema
from kmedimg.data.conflicts import patients_in_several_splits, reject_label_conflicts
from kmedimg.data.sources.base import Item, Rejected, check_class_names
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


@dataclasses.dataclass(slots=True)
class PlannedItem:
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


@dataclasses.dataclass
class ConversionPlan:
    """Everything pass 1 decided; `write_shards` and `finalize` only execute it.

    Attributes:
        task, class_names: the source's task and ordered class names.
        encoding, compression, image_size, channels, num_shards, val_fraction,
            test_fraction, seed, drop_duplicates: the conversion's settings
            (`image_size` normalised to `(height, width)` or None).
        dtype, stored_channels: the dataset's pixel dtype and channel count.
        entries: per source position, a `PlannedItem` or the source's `Rejected`.
        rejections: position -> reason, for valid items the plan rejects.
        promoted: grey items promoted to RGB.
        duplicate_groups: lists of `PlannedItem`s with identical pixels.
        dropped: duplicate copies rejected (`drop_duplicates=True`).
        straddling: duplicate groups the source's own splits put in several splits.
        label_conflicts: duplicate groups with different labels (all copies rejected).
        patients_in_several_splits: patient key -> its splits, for patients the
            source's own splits divide (kept as given, warned).
        splits: split name -> its `PlannedItem`s in source order.
        shard_counts: split name -> number of shard files.
        shard_of: position -> `(split, shard index)` of every record to write.
        splits_given_by_source: written items whose split the source gave.
        rejected_by_source: entries the source itself yielded as `Rejected`.
    """

    task: str
    class_names: list
    encoding: str
    compression: str
    image_size: object
    channels: object
    num_shards: object
    val_fraction: float
    test_fraction: float
    seed: int
    drop_duplicates: bool
    dtype: str = None
    stored_channels: int = None
    entries: list = dataclasses.field(default_factory=list)
    rejections: dict = dataclasses.field(default_factory=dict)
    promoted: int = 0
    duplicate_groups: list = dataclasses.field(default_factory=list)
    dropped: int = 0
    straddling: list = dataclasses.field(default_factory=list)
    label_conflicts: list = dataclasses.field(default_factory=list)
    patients_in_several_splits: dict = dataclasses.field(default_factory=dict)
    splits: dict = dataclasses.field(default_factory=collections.OrderedDict)
    shard_counts: dict = dataclasses.field(default_factory=dict)
    shard_of: dict = dataclasses.field(default_factory=dict)
    splits_given_by_source: int = 0
    rejected_by_source: int = 0

    def valid(self):
        """The `PlannedItem`s of pass 1 (before the plan's own rejections)."""
        return [entry for entry in self.entries if isinstance(entry, PlannedItem)]

    def kept(self):
        """The `PlannedItem`s that will be written, in source order."""
        return [entry for entry in self.valid() if entry.position not in self.rejections]

    def rejected_rows(self):
        """`(source, reason)` of every entry not written, in source order."""
        rows = []
        for position, entry in enumerate(self.entries):
            if isinstance(entry, Rejected):
                rows.append((entry.source, entry.reason))
            elif position in self.rejections:
                rows.append((entry.source, self.rejections[position]))
        return rows


def check_choice(name, value, allowed):
    """Raises ValueError unless `value` is one of `allowed`."""
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {allowed}. Received: {name}={value!r}")


def normalize_size(image_size):
    """None, an int or a (height, width) pair -> None or a `(height, width)` tuple."""
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


def check_conversion_arguments(source, encoding, compression, channels, val_fraction,
                               test_fraction, image_size):
    """Validates a conversion's arguments and the source's task and class names.

    Returns:
        `(task, class_names, size)`: the source's task, its class names as strings
        and the normalised `image_size`.
    """
    check_choice("encoding", encoding, schema.ENCODINGS)
    check_choice("compression", compression, schema.COMPRESSIONS)
    check_choice("channels", channels, (None,) + schema.CHANNELS)
    check_fractions(val_fraction, test_fraction)
    size = normalize_size(image_size)
    task = getattr(source, "task", None)
    check_choice("source.task", task, schema.TASKS)
    class_names = [str(name) for name in getattr(source, "class_names", None) or []]
    if not class_names:
        raise ValueError(f"`source.class_names` is empty. Received: source={source!r}")
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"`source.class_names` has repeated names. Received: {class_names}")
    check_class_names(class_names, f"{type(source).__name__}.class_names")
    if task == "binary" and len(class_names) != 2:
        raise ValueError(
            "A binary source needs exactly 2 class names (negative, positive). "
            f"Received: class_names={class_names}"
        )
    return task, class_names, size


def label_indices(labels, task, class_names, index_of):
    """Returns an item's sorted label indices or raises ValueError with the reason."""
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


def shard_count(records, estimated_bytes, requested, split):
    """Shards of one split: `requested` (int or dict split -> int) or by size."""
    if requested is not None:
        if isinstance(requested, dict):
            requested = requested.get(split)
            if requested is None:
                return shard_count(records, estimated_bytes, None, split)
        if not isinstance(requested, (int, np.integer)) or requested < 1:
            raise ValueError(
                "`num_shards` must be a positive int (or a dict split -> int). "
                f"Received: num_shards={requested!r}"
            )
        return max(1, min(int(requested), records))
    by_size = math.ceil(estimated_bytes / TARGET_SHARD_BYTES)
    return max(1, by_size, min(records, MIN_SHARDS_PER_SPLIT))


def plan_conversion(
    source,
    *,
    encoding="raw",
    compression="NONE",
    num_shards=None,
    val_fraction=0.0,
    test_fraction=0.0,
    seed=0,
    drop_duplicates=False,
    image_size=None,
    channels=None,
    progress=False,
):
    """Pass 1 of a conversion: reads every item once and plans the whole dataset.

    Args: as `kmedimg.data.write_dataset` (without the output arguments);
        `progress=True` prints a scanning line on stderr. Defaults as there.

    Returns:
        A `ConversionPlan`; nothing is written.

    Raises:
        ValueError: for invalid arguments or a source with no valid item.

    Example:

    ```python
    plan = plan_conversion(PhantomSource(num_images=100), val_fraction=0.2)
    {name: len(items) for name, items in plan.splits.items()}
    ```
    """
    task, class_names, size = check_conversion_arguments(
        source, encoding, compression, channels, val_fraction, test_fraction, image_size)
    plan = ConversionPlan(
        task=task, class_names=class_names, encoding=encoding, compression=compression,
        image_size=size, channels=channels, num_shards=num_shards,
        val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
        drop_duplicates=drop_duplicates,
    )
    plan.entries, plan.rejected_by_source = _scan(
        source, task, class_names, show=progress is True)
    _choose_format(plan)
    _find_duplicates(plan)
    if not plan.kept():  # e.g. every image is a copy under conflicting labels
        raise ValueError(f"No image is left to write; every entry is rejected, e.g. "
                         f"{plan.rejected_rows()[-1]}. Received: source={source!r}")
    _assign_splits(plan)
    _assign_shards(plan)
    return plan


def _scan(source, task, class_names, show):
    """Validates, hashes and keeps the facts of every entry of the source.

    Returns:
        `(entries, rejected_by_source)`: a `PlannedItem` or `Rejected` per entry, and
        how many entries the source itself rejected.
    """
    index_of = {name: index for index, name in enumerate(class_names)}
    entries = []
    rejected_by_source = 0
    for position, entry in enumerate(source):
        if show and position % 500 == 0:
            sys.stderr.write(f"\rscanning {position} items (pass 1 of 2)")
            sys.stderr.flush()
        if isinstance(entry, Rejected):
            entries.append(entry)
            rejected_by_source += 1
            continue
        if not isinstance(entry, Item):
            raise TypeError(
                "A source must yield kmedimg Item or Rejected objects. "
                f"Received: {type(entry).__name__} at position {position}"
            )
        try:
            entries.append(_planned_item(position, entry, task, class_names, index_of))
        except ValueError as error:
            entries.append(Rejected(entry.source, str(error)))
    if show:
        sys.stderr.write(f"\rscanned {len(entries)} items (pass 1 of 2)\n")
    if not any(isinstance(entry, PlannedItem) for entry in entries):
        reasons = collections.Counter(entry.reason for entry in entries)
        raise ValueError(
            f"The source yielded no valid image ({len(entries)} entries, all rejected). "
            f"Most common reasons: {reasons.most_common(3)}. Received: source={source!r}"
        )
    return entries, rejected_by_source


def _planned_item(position, item, task, class_names, index_of):
    pixels = schema.check_pixels(item.pixels, where="image")
    labels = label_indices(item.labels, task, class_names, index_of)
    if item.split is not None and not _SPLIT_NAME.match(str(item.split)):
        raise ValueError(
            f"split name must match [A-Za-z0-9_]+. Received: split={item.split!r}"
        )
    return PlannedItem(
        position=position,
        source=item.source,
        labels=labels,
        patient=str(item.patient or ""),
        digest=schema.content_hash(pixels),
        split=None if item.split is None else str(item.split),
        shape=pixels.shape,
        dtype=pixels.dtype.name,
        channels=pixels.shape[-1],
    )


def _choose_format(plan):
    """The dataset's dtype and channels; rejects or promotes the items that differ."""
    valid = plan.valid()
    dtype = collections.Counter(entry.dtype for entry in valid).most_common(1)[0][0]
    channels = plan.channels
    if channels is None:
        stored = collections.Counter(entry.channels for entry in valid).most_common(1)[0][0]
    else:
        stored = channels
    if plan.encoding == "png" and dtype == "uint16" and stored == 3:
        raise ValueError(
            "PNG encoding of 16-bit RGB images is not supported (Pillow cannot write "
            "them); use encoding='raw'. Received: encoding='png', dtype=uint16, channels=3"
        )
    plan.dtype, plan.stored_channels = dtype, stored
    for entry in valid:
        if entry.dtype != dtype:
            plan.rejections[entry.position] = (
                f"dtype {entry.dtype} differs from the dataset's {dtype} (the most common); "
                "convert the source images to one bit depth"
            )
        elif entry.channels != stored:
            if entry.channels == 1 and stored == 3 and channels == 3:
                plan.promoted += 1
            elif channels is None:
                plan.rejections[entry.position] = (
                    f"{entry.channels} channel(s) but the dataset has {stored} "
                    "(the most common); pass channels=3 (CLI: --channels 3) to promote "
                    "grey images to RGB"
                )
            else:
                plan.rejections[entry.position] = (
                    f"{entry.channels} channels but channels={channels} was requested; "
                    "RGB is not reduced to grey silently"
                )
        height, width = plan.image_size if plan.image_size is not None else entry.shape[:2]
        entry.shape = (height, width, stored)


def _find_duplicates(plan):
    """Groups exact duplicates, rejects copies under conflicting labels; with
    `drop_duplicates`, rejects all but the first copy."""
    by_digest = collections.defaultdict(list)
    for entry in plan.kept():
        by_digest[entry.digest].append(entry)
    groups = [group for group in by_digest.values() if len(group) > 1]
    plan.label_conflicts, plan.duplicate_groups = reject_label_conflicts(
        groups, plan.rejections, plan.class_names)
    if plan.drop_duplicates:
        for group in plan.duplicate_groups:
            for copy in group[1:]:
                plan.rejections[copy.position] = (
                    f"exact duplicate of {group[0].source} (drop_duplicates=True)"
                )
                plan.dropped += 1


def _assign_splits(plan):
    """Splits the items the source left unsplit; reports duplicates across given splits."""
    kept = plan.kept()
    unsplit = [entry for entry in kept if entry.split is None]
    plan.splits_given_by_source = len(kept) - len(unsplit)
    if unsplit:
        assignment = plan_splits(
            [entry.labels for entry in unsplit],
            [entry.patient for entry in unsplit],
            [entry.digest for entry in unsplit],
            val_fraction=plan.val_fraction,
            test_fraction=plan.test_fraction,
            seed=plan.seed,
        )
        for entry, split in zip(unsplit, assignment):
            entry.split = split
    plan.splits = collections.OrderedDict()
    for name in sorted({entry.split for entry in kept},
                       key=lambda s: ((SPLITS + (s,)).index(s), s)):
        plan.splits[name] = [entry for entry in kept if entry.split == name]
    # Duplicates the source itself placed in different splits (e.g. an official split
    # that leaks): kept as given, but reported, since given splits are the source's truth.
    for group in plan.duplicate_groups:
        members = [entry for entry in group if entry.position not in plan.rejections]
        if len({entry.split for entry in members}) > 1:
            plan.straddling.append(group)
    plan.patients_in_several_splits = patients_in_several_splits(kept)
    if plan.straddling:
        logger.warning(
            "%d exact-duplicate groups straddle the splits given by the source; kept as "
            "given (see duplicates.straddling in %s; drop_duplicates=True removes copies).",
            len(plan.straddling), schema.MANIFEST_NAME,
        )


def _assign_shards(plan):
    """The shard count of every split and the shard of every record."""
    itemsize = np.dtype(plan.dtype).itemsize
    for name, entries in plan.splits.items():
        estimated = sum(int(np.prod(entry.shape)) * itemsize + 64 for entry in entries)
        count = shard_count(len(entries), estimated, plan.num_shards, name)
        plan.shard_counts[name] = count
        # Contiguous blocks, not round robin: sources often come sorted (one class
        # folder after another) and the writer cannot reorder without holding pixels.
        # Round robin would give every shard the same sorted profile, so reading shards
        # in parallel would still see one class first; contiguous blocks read in
        # parallel (load() interleaves up to 16 files record by record) mix the classes.
        for rank, entry in enumerate(entries):
            plan.shard_of[entry.position] = (name, rank * count // len(entries))
