"""What every importer yields: an `Item` to write or a `Rejected` to list.

An importer is an iterable of `Item | Rejected`, produced one at a time so memory
stays bounded, plus a little metadata the writer puts in the manifest. Iterating it
twice yields the same sequence (the writer may make two passes: one to plan splits
and find duplicates, one to write).
"""

import dataclasses
from typing import Iterator, Optional, Protocol, Union

import numpy as np


@dataclasses.dataclass(frozen=True)
class Item:
    """One image ready to be written.

    Attributes:
        source: what the item came from, for the manifest and error messages (a path
            relative to the source root, `npz:train[12]`, or for DICOM without
            `--keep-filenames` the record id, never a name that may hold PHI).
        pixels: HxW or HxWxC (C in 1, 3) array, uint8 or uint16.
        labels: class names of the item (one for binary/multiclass; any number for
            multilabel).
        split: the split the source assigns (e.g. MedMNIST's official splits), or None
            to let the writer split.
        patient: patient key used for patient-level splits (already hashed for DICOM),
            or None.
        record_id: stable id; defaults to one derived from `source`.
        metadata: extra non-PHI facts (e.g. modality, frame index).
    """

    source: str
    pixels: np.ndarray
    labels: tuple
    split: Optional[str] = None
    patient: Optional[str] = None
    record_id: Optional[str] = None
    metadata: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Rejected:
    """An input item that will not be written, with the reason (a line of rejected.csv)."""

    source: str
    reason: str


class Source(Protocol):
    """The importer interface the writer consumes."""

    #: "binary", "multiclass" or "multilabel".
    task: str
    #: ordered class names; label indices in the records index this list.
    class_names: list

    def __iter__(self) -> Iterator[Union[Item, Rejected]]: ...

    def describe(self) -> dict:
        """JSON-able description for the manifest's `source` field (format, root, options)."""
