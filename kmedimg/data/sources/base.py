"""What every importer yields: an `Item` to write or a `Rejected` to list.

An importer is an iterable of `Item | Rejected`, produced one at a time so memory
stays bounded, plus a little metadata the writer puts in the manifest. Iterating it
twice yields the same sequence (the writer may make two passes: one to plan splits
and find duplicates, one to write).
"""

import dataclasses
import os
import re
import unicodedata
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


def printable_name(name):
    """`name` with bytes that are not UTF-8 shown as `\\xNN` escapes (safe to print and store).

    File names on Linux are bytes; Python decodes undecodable bytes as lone
    surrogates, which no UTF-8 file (records, rejected.csv, dataset.json) can hold.
    """
    return os.fsencode(name).decode("utf-8", errors="backslashreplace")


def is_utf8_name(name):
    """True when the file name `name` (str from the file system) is valid UTF-8."""
    return printable_name(name) == name


def _name_key(name):
    """What two class names that only a slip of the keyboard tells apart share."""
    return re.sub(r"[\s_\-]+", " ", unicodedata.normalize("NFKC", name)).strip().casefold()


def check_class_names(names, where):
    """Refuses class names that are empty, not UTF-8, hold control characters, or are
    near-duplicates of one another (differ only by case, spaces, `_` or `-`).

    Such names are almost always a slip (a NUL byte pasted into a label, `Pneumonia`
    beside `pneumonia`, `normal ` beside `normal`) that would silently add a class.

    Args:
        names: the class names.
        where: the file or folder they come from, for the message.

    Raises:
        ValueError: naming the bad class and saying the fix.
    """
    by_key = {}
    for name in names:
        name = str(name)
        if not name.strip():
            raise ValueError(
                f"{where}: empty class name. Give every class a name. Received: {list(names)}"
            )
        if not is_utf8_name(name) or any(unicodedata.category(c) in ("Cc", "Cf", "Cs")
                                         for c in name):
            raise ValueError(
                f"{where}: class name {printable_name(name)!r} holds a control or invalid "
                "character (e.g. a NUL byte or a non-UTF-8 byte); rename the folder or fix "
                f"the label. Received: class {printable_name(name)!r}"
            )
        other = by_key.setdefault(_name_key(name), name)
        if other != name:
            raise ValueError(
                f"{where}: class names {other!r} and {name!r} differ only by case, spaces, "
                "'_' or '-' (a typo would create a second class); merge them into one name. "
                f"Received: classes {sorted(map(str, names))}"
            )
