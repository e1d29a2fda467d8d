"""A CSV (or TSV) table of image paths and labels."""

import collections
import csv
import logging
import os

from kmedimg.data.sources import image_files, privacy
from kmedimg.data.sources.base import Item, Rejected, check_class_names
from kmedimg.data.sources.label_table import check_utf8, is_index
from kmedimg.data.sources.registry import register_source

logger = logging.getLogger(__name__)

PATH_COLUMN = "path"
LABEL_COLUMN = "label"
OPTIONAL_COLUMNS = ("patient_id", "split")
SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "test": "test"}
TASKS = ("binary", "multiclass", "multilabel")
#: Integer labels without `class_names` mean classes "0".."max"; above this many the
#: table is refused (a stray 10**9 would otherwise allocate a billion class names).
MAX_INFERRED_CLASSES = 1000


@register_source("csv")
class CsvSource:
    """Images listed in a CSV with columns `path,label[,patient_id][,split]`.

    Paths are relative to `root` (default: the CSV's folder); absolute paths are
    accepted when they lie inside it. Labels are class names or 0-based indices into
    `class_names`. With `task="multilabel"` (and only then: one stray `a|b` row must
    not turn a table multi-label) a row lists several labels separated by `|`
    (`effusion|mass`, an empty cell meaning no finding). Without `class_names` the
    classes are the sorted distinct names, or `"0".."max"` when every label is an
    integer (at most `MAX_INFERRED_CLASSES`).

    Problems of a single row (missing file, a path outside the root, an unknown
    label, an empty label, several labels outside a multi-label task, an unknown
    split, a repeated path, an unreadable image) become a `Rejected` line naming the
    row; a wrong header, a file that is not UTF-8, or class names holding control
    characters or differing only by case/spaces fail the whole file.

    `patient_id` values are never stored: records carry a salted hash of them (the
    same hash as DICOM's PatientID, see `kmedimg.data.sources.privacy`). A patient
    whose rows name several splits is a leak between training and evaluation: it is
    logged as a warning and counted in `describe()["patients_in_several_splits"]`.

    Args:
        csv_path: the table. `.tsv` files are read tab-separated.
        root: folder the paths are relative to. Defaults to `None` (the CSV's folder).
        class_names: the classes in label order. Defaults to `None` (from the table).
        task: `"binary"`, `"multiclass"` or `"multilabel"`. Defaults to `None`
            (binary for 2 classes, else multiclass; multi-label is never inferred).
        channels: `"auto"`, 1 or 3 (see `FolderSource`). Defaults to `"auto"`.
        dtype: `"auto"`, `"uint8"` or `"uint16"`. Defaults to `"auto"`.
        grey_tolerance: see `FolderSource`. Defaults to `8.0`.
        label_separator: separator of multi-label cells. Defaults to `"|"`.
        ignore_extra_columns: accept columns other than the known ones (they are not
            read). Defaults to `False`.
        salt: salt of the patient-key hashes (str/bytes). Defaults to `None` (read or
            create `salt_file`; only when the table has a `patient_id` column).
        salt_file: where the salt is kept, outside the dataset. Defaults to `None`
            (`~/.kmedimg/patient_salt`).

    Example:

    ```python
    # labels.csv:
    # path,label,patient_id
    # images/a.png,pneumonia,p001
    source = CsvSource("labels.csv", class_names=["normal", "pneumonia"])
    ```
    """

    def __init__(
        self,
        csv_path,
        root=None,
        class_names=None,
        task=None,
        channels="auto",
        dtype="auto",
        grey_tolerance=8.0,
        label_separator="|",
        ignore_extra_columns=False,
        salt=None,
        salt_file=None,
    ):
        csv_path = os.fspath(csv_path)
        if not os.path.isfile(csv_path):
            raise FileNotFoundError(f"CSV file not found: {csv_path}")
        check_utf8(csv_path)
        self.csv_path = csv_path
        self.root = os.path.abspath(
            os.fspath(root) if root is not None else os.path.dirname(os.path.abspath(csv_path))
        )
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"{csv_path}: root folder not found: {self.root}")
        self.channels = image_files.check_channels(channels)
        self.dtype = image_files.check_dtype(dtype)
        self.grey_tolerance = float(grey_tolerance)
        self.label_separator = label_separator
        self.ignore_extra_columns = ignore_extra_columns
        self.delimiter = "\t" if csv_path.lower().endswith(".tsv") else ","
        if task is not None and task not in TASKS:
            raise ValueError(f"`task` must be one of {TASKS}. Received: task={task!r}")
        self._resolved = None

        self.columns = self._check_header()
        self._salt = None
        if "patient_id" in self.columns:
            self._salt = privacy.load_salt(salt, salt_file)
        labels_seen, multi_rows, rows = set(), [], 0
        for number, row in self._rows():
            rows += 1
            cell = (row.get(LABEL_COLUMN) or "").strip()
            tokens = [t.strip() for t in cell.split(label_separator) if t.strip()]
            if len(tokens) > 1:
                multi_rows.append(number)
            if len(tokens) == 1 or task == "multilabel":
                labels_seen.update(tokens)
        if rows == 0:
            raise ValueError(
                f"{csv_path}: the table has a header but no rows; add one row per image. "
                f"Received: header={self.columns}"
            )
        if class_names is None:
            class_names = self._infer_class_names(labels_seen)
        class_names = [str(name) for name in class_names]
        if len(set(class_names)) != len(class_names):
            raise ValueError(
                f"`class_names` has repeated names. Received: class_names={class_names}"
            )
        check_class_names(class_names, csv_path)
        if task is None:
            task = "binary" if len(class_names) == 2 else "multiclass"
        minimum = 1 if task == "multilabel" else 2
        if len(class_names) < minimum:
            hint = (f" Rows {multi_rows[:5]} hold several labels: pass task='multilabel' "
                    "(CLI: --task multilabel) for a multi-label table."
                    if multi_rows and task != "multilabel" else "")
            raise ValueError(
                f"{csv_path}: a {task} task needs at least {minimum} classes.{hint} "
                f"Received: class_names={class_names}"
            )
        if task == "binary" and len(class_names) != 2:
            raise ValueError(
                f"task='binary' needs exactly 2 classes. Received: class_names={class_names}"
            )
        self.class_names = class_names
        self.task = task
        self.patients_in_several_splits = self._count_patients_in_several_splits()

    # Called by `kmedimg convert` before converting: the salt must live outside OUT.
    check_options = staticmethod(privacy.check_salt_options)

    def _infer_class_names(self, labels_seen):
        """Sorted distinct names, or "0".."max" when every label is an integer."""
        if not labels_seen or not all(is_index(label) for label in labels_seen):
            return sorted(labels_seen)
        largest = max(int(label) for label in labels_seen)
        if largest >= MAX_INFERRED_CLASSES:
            raise ValueError(
                f"{self.csv_path}: integer label {largest} would mean {largest + 1} classes "
                f"(\"0\"..\"{largest}\"); without `class_names` at most "
                f"{MAX_INFERRED_CLASSES} are inferred. Fix the label or pass class_names "
                f"(CLI: --class-names). Received: largest label {largest}"
            )
        return [str(i) for i in range(largest + 1)]

    def _count_patients_in_several_splits(self):
        """Patients whose rows name different splits (a warning, not an error)."""
        if not {"patient_id", "split"} <= set(self.columns):
            return 0
        splits, rows = collections.defaultdict(set), collections.defaultdict(list)
        for number, row in self._rows():
            patient, split = row.get("patient_id"), SPLIT_NAMES.get(row.get("split", "").lower())
            if patient and split:
                splits[patient].add(split)
                rows[patient].append(number)
        leaking = [patient for patient, names in splits.items() if len(names) > 1]
        if leaking:
            logger.warning(
                "%s: %d patients have rows in several splits (e.g. rows %s); their images "
                "leak between training and evaluation. Give each patient one split.",
                self.csv_path, len(leaking), rows[leaking[0]][:4],
            )
        return len(leaking)
    @classmethod
    def from_spec(cls, spec, **options):
        return cls(spec, **options)

    @staticmethod
    def sniff(spec):
        return 1 if spec.lower().endswith((".csv", ".tsv")) and os.path.isfile(spec) else 0

    def _open(self):
        return open(self.csv_path, newline="", encoding="utf-8-sig")

    def _check_header(self):
        with self._open() as handle:
            header = next(csv.reader(handle, delimiter=self.delimiter), None)
        if not header:
            raise ValueError(
                f"{self.csv_path}: the file is empty; expected a header row with columns "
                f"{[PATH_COLUMN, LABEL_COLUMN, *OPTIONAL_COLUMNS]}. Received: an empty file"
            )
        header = [name.strip() for name in header]
        allowed = [PATH_COLUMN, LABEL_COLUMN, *OPTIONAL_COLUMNS]
        for required in (PATH_COLUMN, LABEL_COLUMN):
            if required not in header:
                raise ValueError(
                    f"{self.csv_path}: missing column {required!r}. Allowed columns: "
                    f"{allowed} (path and label required). Received: header={header}"
                )
        unknown = [name for name in header if name not in allowed]
        if unknown and not self.ignore_extra_columns:
            raise ValueError(
                f"{self.csv_path}: unknown column {unknown[0]!r}. Allowed columns: {allowed}; "
                "pass ignore_extra_columns=True to skip others. "
                f"Received: header={header}"
            )
        repeated = sorted({name for name in header if header.count(name) > 1})
        if repeated:
            raise ValueError(f"{self.csv_path}: repeated columns {repeated}. Received: {header}")
        return header

    def _rows(self):
        """Yields `(row_number, {column: cell})`; row 2 is the first after the header."""
        with self._open() as handle:
            reader = csv.reader(handle, delimiter=self.delimiter)
            next(reader, None)
            for number, cells in enumerate(reader, start=2):
                if not any(cell.strip() for cell in cells):
                    continue  # blank line
                yield number, dict(zip(self.columns, (cell.strip() for cell in cells)))

    def _resolve_path(self, cell):
        """`(absolute_path, None)` or `(None, reason)`."""
        if not cell:
            return None, "empty path"
        full = os.path.normpath(os.path.join(self.root, cell))
        if os.path.commonpath([self.root, full]) != self.root:
            return None, f"path points outside the root {self.root}"
        if not os.path.exists(full):
            return None, f"file not found: {full}"
        if not os.path.isfile(full):
            return None, f"not a file: {full}"
        return full, None

    def _parse_labels(self, cell):
        """`(labels_tuple, None)` or `(None, reason)`."""
        tokens = [t.strip() for t in cell.split(self.label_separator) if t.strip()]
        if self.task != "multilabel" and len(tokens) != 1:
            if not tokens:
                return None, "empty label"
            return None, (
                f"{len(tokens)} labels ({cell!r}) in a {self.task} task; a multi-label "
                "table needs task='multilabel' (CLI: --task multilabel)"
            )
        labels = []
        for token in tokens:
            if token in self.class_names:
                labels.append(token)
            elif is_index(token) and int(token) < len(self.class_names):
                labels.append(self.class_names[int(token)])
            else:
                return None, (
                    f"unknown label {token!r}; known: {self.class_names} or indices "
                    f"0..{len(self.class_names) - 1}"
                )
        # Class order, without repeats: `b|a` and `a|b` are the same multi-label.
        return tuple(sorted(set(labels), key=self.class_names.index)), None

    def _plan(self):
        """Yields per row `(source, row_number, path_or_None, labels, split, patient, reason)`."""
        seen = {}
        for number, row in self._rows():
            cell = row.get(PATH_COLUMN, "")
            source = cell or f"{os.path.basename(self.csv_path)}:row {number}"
            path, reason = self._resolve_path(cell)
            labels, split, patient = None, None, self._patient_key(row.get("patient_id"))
            if reason is None:
                if path in seen:
                    reason = f"same file as row {seen[path]}"
                else:
                    seen[path] = number
            if reason is None:
                labels, reason = self._parse_labels(row.get(LABEL_COLUMN, ""))
            if reason is None and "split" in self.columns:
                value = row.get("split", "").lower()
                split = SPLIT_NAMES.get(value)
                if split is None:
                    reason = f"unknown split {value!r}; allowed: {sorted(SPLIT_NAMES)}"
            yield source, number, path, labels, split, patient, reason

    def _patient_key(self, value):
        """The salted hash of a `patient_id` cell (DICOM's PatientID hash), or None."""
        if not value:
            return None
        return privacy.salted_hash(self._salt, "PatientID", value)

    def resolve(self):
        """The `(channels, dtype)` actually written (runs the `"auto"` scan once)."""
        if self._resolved is None:
            paths = (plan[2] for plan in self._plan() if plan[6] is None)
            self._resolved = image_files.scan(
                paths, self.channels, self.dtype, self.grey_tolerance
            )
        return self._resolved

    def __iter__(self):
        channels, dtype = self.resolve()
        for source, number, path, labels, split, patient, reason in self._plan():
            if reason is None:
                try:
                    pixels = image_files.load(path, channels, dtype)
                except image_files.ImageFileError as error:
                    reason = str(error)
            if reason is not None:
                yield Rejected(source, f"row {number}: {reason}")
                continue
            yield Item(
                source=source, pixels=pixels, labels=labels, split=split, patient=patient
            )

    def describe(self):
        channels, dtype = self.resolve()
        return {
            "format": "csv",
            "csv": os.path.abspath(self.csv_path),
            "root": self.root,
            "columns": list(self.columns),
            "channels": channels,
            "dtype": dtype,
            "channel_policy": self.channels,
            "dtype_policy": self.dtype,
            "label_separator": self.label_separator,
            "patients_in_several_splits": self.patients_in_several_splits,
            "privacy": None if self._salt is None else {
                "patient": "salted sha256 of patient_id (as DICOM PatientID)",
                "salt_fingerprint": privacy.salt_fingerprint(self._salt),
            },
        }
