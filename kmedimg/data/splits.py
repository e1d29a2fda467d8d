"""Split planning: stratified, patient-grouped, duplicate-aware train/val/test assignment.

The writer calls `plan_splits` after its first pass over a source, when it knows each
item's labels, patient key and content hash but holds no pixels.

Items that must stay together form one *unit*: all images of one patient, and all
exact copies of one image (by content hash), joined transitively (a patient whose
image is duplicated in another patient's folder pulls both patients into one unit).
Units are then assigned per stratum (the label set of the unit's first item) to the
split whose item count is furthest below its target fraction, so every split gets
roughly its share of every class while no unit is ever divided.
"""

import collections

import numpy as np

SPLIT_ORDER = ("train", "val", "test")


def _check_fraction(name, value):
    if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(
            f"`{name}` must be a number in [0, 1). Received: {name}={value!r}"
        )


def check_fractions(val_fraction, test_fraction):
    """Validates the held-out fractions (each in [0, 1), together below 1)."""
    _check_fraction("val_fraction", val_fraction)
    _check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            "`val_fraction + test_fraction` must be below 1 so that some images train. "
            f"Received: val_fraction={val_fraction}, test_fraction={test_fraction}"
        )


class _UnionFind:
    def __init__(self, size):
        self.parent = list(range(size))

    def find(self, index):
        root = index
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[index] != root:
            self.parent[index], index = root, self.parent[index]
        return root

    def union(self, first, second):
        first, second = self.find(first), self.find(second)
        if first != second:
            self.parent[max(first, second)] = min(first, second)


def group_units(patients, hashes):
    """Groups item positions into units that must share a split.

    Args:
        patients: per item, a patient key or None/"" when unknown.
        hashes: per item, the content hash.

    Returns:
        A list of units (lists of item positions), in order of first appearance.
    """
    union_find = _UnionFind(len(hashes))
    first_seen = {}
    for position, (patient, digest) in enumerate(zip(patients, hashes)):
        keys = [("h", digest)]
        if patient:
            keys.append(("p", patient))
        for key in keys:
            if key in first_seen:
                union_find.union(first_seen[key], position)
            else:
                first_seen[key] = position
    units = collections.OrderedDict()
    for position in range(len(hashes)):
        units.setdefault(union_find.find(position), []).append(position)
    return list(units.values())


def plan_splits(labels, patients, hashes, val_fraction=0.0, test_fraction=0.0, seed=0):
    """Assigns each item to "train", "val" or "test".

    Args:
        labels: per item, a tuple of label indices (the stratification key).
        patients: per item, a patient key or None.
        hashes: per item, the content hash (exact copies stay together).
        val_fraction: share of items for "val". Defaults to `0.0`.
        test_fraction: share of items for "test". Defaults to `0.0`.
        seed: shuffling seed; the same inputs and seed give the same plan.
            Defaults to `0`.

    Returns:
        A list with one split name per item.

    Example:

    >>> plan_splits([(0,), (1,), (0,), (1,)], [None] * 4, ["a", "b", "c", "d"],
    ...             val_fraction=0.5)
    ['train', 'train', 'val', 'val']
    """
    check_fractions(val_fraction, test_fraction)
    fractions = {"train": 1.0 - val_fraction - test_fraction, "val": val_fraction,
                 "test": test_fraction}
    active = [name for name in SPLIT_ORDER if fractions[name] > 0]
    assignment = ["train"] * len(hashes)
    if active == ["train"]:
        return assignment
    units = group_units(patients, hashes)
    strata = collections.defaultdict(list)
    for unit in units:
        strata[tuple(sorted(labels[unit[0]]))].append(unit)
    rng = np.random.default_rng(seed)
    total_items = len(hashes)
    global_counts = dict.fromkeys(active, 0)
    # Largest strata first, so the small ones can even out the global counts.
    for key in sorted(strata, key=lambda k: (-len(strata[k]), k)):
        stratum = strata[key]
        order = rng.permutation(len(stratum))
        stratum_items = sum(len(unit) for unit in stratum)
        counts = dict.fromkeys(active, 0)
        for index in order:
            unit = stratum[index]

            def priority(name):
                stratum_deficit = fractions[name] * stratum_items - counts[name]
                global_deficit = fractions[name] * total_items - global_counts[name]
                return (stratum_deficit, global_deficit, -SPLIT_ORDER.index(name))

            chosen = max(active, key=priority)
            counts[chosen] += len(unit)
            global_counts[chosen] += len(unit)
            for position in unit:
                assignment[position] = chosen
    return assignment
