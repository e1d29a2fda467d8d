"""Tiny in-memory sources for data-layer tests (writer, pipeline, and anyone else's)."""

import numpy as np

from kmedimg.data.sources.base import Item, Rejected


class ListSource:
    """A Source over a fixed list of `Item`/`Rejected` (iterates the same way each time).

    Args:
        entries: the items and rejections, in order.
        task: "binary", "multiclass" or "multilabel". Defaults to `"binary"`.
        class_names: ordered class names. Defaults to `["neg", "pos"]`.
        fail_at: raise RuntimeError when reaching this position on the pass number
            `fail_on_pass` (1-based), to simulate an interrupted conversion.
            Defaults to `None`.
        fail_on_pass: see `fail_at`. Defaults to `2`.
    """

    def __init__(self, entries, task="binary", class_names=("neg", "pos"), fail_at=None,
                 fail_on_pass=2):
        self.entries = list(entries)
        self.task = task
        self.class_names = list(class_names)
        self.fail_at = fail_at
        self.fail_on_pass = fail_on_pass
        self.passes = 0

    def __iter__(self):
        self.passes += 1
        for position, entry in enumerate(self.entries):
            if self.fail_at == position and self.passes == self.fail_on_pass:
                raise RuntimeError(f"simulated failure at item {position}")
            yield entry

    def describe(self):
        return {"format": "test-list", "entries": len(self.entries)}


def image(index, size=8, channels=1, dtype="uint8"):
    """A deterministic image unique to `index` (pixel [0, 0, 0] encodes the index)."""
    rng = np.random.default_rng(index)
    limit = np.iinfo(dtype).max
    pixels = rng.integers(0, limit, size=(size, size, channels), endpoint=True).astype(dtype)
    pixels[0, 0, 0] = index % (limit + 1)
    return pixels


def binary_items(count, size=8, channels=1, dtype="uint8", positive_every=3,
                 patients=None):
    """`count` binary items; every `positive_every`-th is "pos"."""
    items = []
    for index in range(count):
        label = "pos" if index % positive_every == 0 else "neg"
        patient = None if patients is None else f"patient-{index // patients}"
        items.append(Item(f"img-{index:04d}.png", image(index, size, channels, dtype),
                          (label,), patient=patient))
    return items


__all__ = ["Item", "ListSource", "Rejected", "binary_items", "image"]
