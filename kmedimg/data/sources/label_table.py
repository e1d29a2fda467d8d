"""Labels for the medical importers: from the folder tree or from a CSV.

- `folders`: the first directory under the source root names the class
  (`root/pneumonia/patient7/img1.dcm` -> `pneumonia`; hidden directories are not
  classes). Files directly in the root, or in a hidden directory, have no label and
  are rejected with that reason.
- CSV: a header row with one key column and a `label` column. The key column is
  `path` (relative to the source root, `/`-separated), or, for DICOM,
  `StudyInstanceUID` or `SOPInstanceUID` (a study label applies to every file of the
  study). Multi-label rows separate names with `|` (`effusion|nodule`).

The task is `binary` for two classes, `multiclass` for more, unless given; a row
holding several names is an error unless `task="multilabel"` (one stray `a|b` row
must not turn a whole table multi-label). The CSV must be UTF-8, and class names
holding control characters or differing only by case/spaces are refused.
"""

import csv
import os
import pathlib

from kmedimg.core.vocabulary import TASKS
from kmedimg.data.sources.base import check_class_names

KEY_COLUMNS = ("path", "StudyInstanceUID", "SOPInstanceUID")
LABEL_COLUMNS = ("label", "labels")
MULTI_LABEL_SEPARATOR = "|"


def is_index(text):
    """True for a label cell that is a 0-based class index (ASCII digits only)."""
    return text.isascii() and text.isdigit()


def check_utf8(path):
    """Raises ValueError naming the first line of the text file `path` that is not UTF-8.

    Tables exported from spreadsheets are often latin-1 or cp1252; decoding them as
    UTF-8 would fail half-way through a conversion (or, read as latin-1, silently
    garble names).
    """
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"{path}: line {number} is not UTF-8 (byte 0x{line[error.start]:02x} at "
                    f"column {error.start + 1}); CSV files are read as UTF-8. Re-save it as "
                    f"UTF-8, e.g. `iconv -f latin1 -t utf-8 {os.path.basename(path)}`. "
                    f"Received: a file in another encoding (latin-1 or cp1252?)"
                ) from None


class LabelTable:
    """Maps an input file (and, for DICOM, its UIDs) to its class names.

    Args:
        kind: `"folders"` or `"csv"`.
        mapping: key -> tuple of class names.
        key_column: for CSV, which key the mapping uses (one of `KEY_COLUMNS`).
        class_names: ordered class names.
        task: `"binary"`, `"multiclass"` or `"multilabel"`.
    """

    def __init__(self, kind, mapping, key_column, class_names, task):
        self.kind = kind
        self.mapping = mapping
        self.key_column = key_column
        self.class_names = list(class_names)
        self.task = task

    @classmethod
    def from_folders(cls, root, class_names=None, task=None):
        """One class per directory directly under `root`."""
        root = pathlib.Path(root)
        found = sorted(entry.name for entry in os.scandir(root)
                       if entry.is_dir() and not entry.name.startswith("."))
        if not found:
            raise ValueError(
                f"{root}: no class folders found (labels='folders' expects one directory "
                "per class under the root). Pass a labels CSV instead. "
                f"Received: root={str(root)!r}"
            )
        names = _check_class_names(class_names, found, f"{root} (class folders)")
        check_class_names(names, f"{root} (class folders)")
        return cls("folders", {}, "path", names, _infer_task(task, names, multi=False))

    @classmethod
    def from_csv(cls, csv_path, class_names=None, task=None, allowed_keys=KEY_COLUMNS):
        """Reads `key,label` rows; see the module docstring for the columns."""
        csv_path = pathlib.Path(csv_path)
        if not csv_path.is_file():
            raise FileNotFoundError(f"labels CSV not found: {csv_path}")
        check_utf8(csv_path)
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            lowered = {name.strip().lower(): name for name in header}
            key_column = next((k for k in allowed_keys if k.lower() in lowered), None)
            label_column = next((lowered[c] for c in LABEL_COLUMNS if c in lowered), None)
            if key_column is None or label_column is None:
                raise ValueError(
                    f"{csv_path}: the header must have one key column of "
                    f"{list(allowed_keys)} and a label column of {list(LABEL_COLUMNS)}. "
                    f"Received: header={header}"
                )
            raw_key = lowered[key_column.lower()]
            mapping, multi, seen = {}, False, []
            for line, row in enumerate(reader, start=2):
                key = (row.get(raw_key) or "").strip()
                value = (row.get(label_column) or "").strip()
                if not key or not value:
                    raise ValueError(
                        f"{csv_path}, line {line}: empty {key_column!r} or label. "
                        f"Received: row={dict(row)}"
                    )
                if key_column == "path":
                    key = key.replace("\\", "/")
                    while key.startswith("./"):
                        key = key[2:]
                names = tuple(n.strip() for n in value.split(MULTI_LABEL_SEPARATOR) if n.strip())
                if len(names) > 1 and task != "multilabel":
                    raise ValueError(
                        f"{csv_path}, line {line}: {len(names)} labels {value!r} but the task "
                        "is not multi-label; pass task='multilabel' (CLI: --task multilabel) "
                        f"for a multi-label table, or fix the row. Received: task={task!r}"
                    )
                multi = multi or len(names) > 1
                if key in mapping and mapping[key] != names:
                    raise ValueError(
                        f"{csv_path}, line {line}: {key_column} {key!r} has two different "
                        f"labels. Received: {mapping[key]} and {names}"
                    )
                mapping[key] = names
                seen.extend(names)
        if not mapping:
            raise ValueError(f"{csv_path}: no label rows.")
        names = _check_class_names(class_names, sorted(set(seen)), str(csv_path))
        check_class_names(names, str(csv_path))
        return cls("csv", mapping, key_column, names, _infer_task(task, names, multi))

    def lookup(self, relative_path, uids=None):
        """Class names of one file, or None when it has no label.

        Args:
            relative_path: `/`-separated path relative to the source root.
            uids: dict with `StudyInstanceUID`/`SOPInstanceUID` values (DICOM only).
        """
        if self.kind == "folders":
            parts = relative_path.split("/")
            return (parts[0],) if len(parts) > 1 and parts[0] in self.class_names else None
        if self.key_column == "path":
            return self.mapping.get(relative_path)
        value = (uids or {}).get(self.key_column)
        return self.mapping.get(str(value).strip()) if value else None

    def describe(self):
        return {"kind": self.kind, "key": self.key_column}


def _check_class_names(class_names, found, where):
    if class_names is None:
        return list(found)
    class_names = list(class_names)
    missing = sorted(set(found) - set(class_names))
    if missing:
        raise ValueError(
            f"{where}: labels {missing} are not in `class_names`. "
            f"Received: class_names={class_names}"
        )
    return class_names


def _infer_task(task, names, multi):
    if task is not None:
        if task not in TASKS:
            raise ValueError(f"`task` must be one of {TASKS}. Received: task={task!r}")
        return task
    if multi:
        return "multilabel"
    return "binary" if len(names) == 2 else "multiclass"
