"""MedMNIST-style `.npz` archives: `{train,val,test}_images` + `{train,val,test}_labels`."""

import math
import os
import re
import zipfile

import numpy as np

from kmedimg.core.vocabulary import SPLITS
from kmedimg.data.sources.base import Item
from kmedimg.data.sources.registry import register_source

_KEY_PATTERN = re.compile(r"^(train|val|test)_(images|labels)$")
# Rows are streamed from the archive in blocks of about this many bytes.
_BLOCK_BYTES = 1 << 22
#: At most this many classes "0".."max label" are inferred (a stray 10**9 label would
#: allocate a billion class names); more need `class_names`.
MAX_INFERRED_CLASSES = 1000

_ORGAN = [
    "bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right",
    "liver", "lung-left", "lung-right", "pancreas", "spleen",
]
#: Class names of the 2D MedMNIST v2 datasets (medmnist/info.py), by file-name prefix.
MEDMNIST_CLASS_NAMES = {
    "pneumoniamnist": ["normal", "pneumonia"],
    "breastmnist": ["malignant", "normal/benign"],
    "chestmnist": [
        "atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule",
        "pneumonia", "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis",
        "pleural", "hernia",
    ],
    "octmnist": ["choroidal neovascularization", "diabetic macular edema", "drusen", "normal"],
    "pathmnist": [
        "adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
        "normal colon mucosa", "cancer-associated stroma",
        "colorectal adenocarcinoma epithelium",
    ],
    "dermamnist": [
        "actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
        "benign keratosis-like lesions", "dermatofibroma", "melanoma", "melanocytic nevi",
        "vascular lesions",
    ],
    "bloodmnist": [
        "basophil", "eosinophil", "erythroblast", "immature granulocytes", "lymphocyte",
        "monocyte", "neutrophil", "platelet",
    ],
    "retinamnist": ["0", "1", "2", "3", "4"],
    "organamnist": _ORGAN,
    "organcmnist": _ORGAN,
    "organsmnist": _ORGAN,
}


class _NpyMember:
    """An `.npy` array inside a `.npz`, read row by row without loading it whole."""

    def __init__(self, archive_path, key):
        self.archive_path, self.key = archive_path, key
        with self._open_member() as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                header = np.lib.format.read_array_header_1_0(handle)
            elif version == (2, 0):
                header = np.lib.format.read_array_header_2_0(handle)
            else:
                header = None
        # Streaming reads .npy format 1.0/2.0 C-order arrays; anything else (format 3.0,
        # Fortran order) is loaded whole when iterated.
        self.streamable = header is not None and not header[1]
        if header is None:
            array = self._load_whole()
            self.shape, self.fortran_order, self.dtype = array.shape, False, array.dtype
        else:
            self.shape, self.fortran_order, self.dtype = header
        if self.dtype.hasobject:
            raise ValueError(
                f"{archive_path}: key {key!r} holds Python objects; expected a numeric array. "
                f"Re-save it with a numeric dtype. Received: dtype={self.dtype}"
            )

    def _open_member(self):
        archive = zipfile.ZipFile(self.archive_path)
        try:
            return archive.open(self.key + ".npy")
        finally:
            archive.close()  # the member keeps its own file handle

    def _load_whole(self):
        with np.load(self.archive_path, allow_pickle=False) as data:
            return data[self.key]

    def blocks(self):
        """Yields consecutive C-order row blocks of the array."""
        if not self.streamable or not self.shape:
            whole = np.ascontiguousarray(self._load_whole())
            yield whole
            return
        row_shape = self.shape[1:]
        row_bytes = int(np.prod(row_shape, dtype=np.int64)) * self.dtype.itemsize
        rows_per_block = max(1, _BLOCK_BYTES // max(row_bytes, 1))
        with self._open_member() as handle:
            self._skip_header(handle)
            remaining = self.shape[0]
            while remaining:
                count = min(rows_per_block, remaining)
                data = _read_exactly(handle, count * row_bytes, self.archive_path, self.key)
                yield np.frombuffer(data, dtype=self.dtype).reshape((count, *row_shape))
                remaining -= count

    @staticmethod
    def _skip_header(handle):
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            np.lib.format.read_array_header_1_0(handle)
        else:
            np.lib.format.read_array_header_2_0(handle)


def _read_exactly(handle, size, archive_path, key):
    chunks, remaining = [], size
    while remaining:
        chunk = handle.read(remaining)
        if not chunk:
            raise ValueError(f"{archive_path}: key {key!r} is truncated.")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


@register_source("npz")
class NpzSource:
    """A MedMNIST-style `.npz`: 2D images with their official splits.

    The archive holds, for any subset of the splits `train`, `val`, `test`, a pair
    `{split}_images` (N, H, W) or (N, H, W, C) with C in 1, 3, and `{split}_labels`
    (N,), (N, 1) (one class index per image) or (N, K) with K > 1 (multi-label 0/1
    indicators). Each item keeps its split (`Item.split`), so the official splits are
    written as they are; a file with only `test_*` is fine.

    Images are streamed from the archive block by block (bounded memory even for the
    224-pixel MedMNIST+ files). uint8 and uint16 arrays are used as they are; other
    integer or float arrays are accepted only when every value is a whole number in
    0..65535 (stored as uint8 when all fit in 0..255): no silent rescaling. NaN/inf in
    a float array is an error naming the key.

    Class names: `class_names` if given, else MedMNIST's for a file whose name starts
    with a known dataset (`pneumoniamnist_*.npz` -> normal, pneumonia; `breastmnist`
    -> malignant, normal/benign; ...), else "0", "1", ...

    Args:
        path: the `.npz` file.
        class_names: class names in label-index order. Defaults to `None`.
        splits: which splits to read (a subset of those present). Defaults to `None`
            (all present).

    Raises:
        ValueError: an empty or non-zip file, unknown keys, a split with images but no
            labels (or the reverse), mismatched lengths, 3D volumes, NaN/inf or
            out-of-range values, labels beyond `class_names` (or, without them, beyond
            `MAX_INFERRED_CLASSES`) — each naming the key (and the label's row).

    Example:

    ```python
    source = NpzSource("pneumoniamnist.npz")
    source.class_names  # ['normal', 'pneumonia']
    ```
    """

    def __init__(self, path, class_names=None, splits=None):
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"npz file not found: {path}")
        self.path = path
        self.splits = self._present_splits(splits)
        self._open_splits()
        self._choose_classes(class_names)

    def _present_splits(self, splits):
        """The splits to read: those the file holds (each with images and labels)."""
        path = self.path
        expected = "a .npz (zip) archive of {split}_images and {split}_labels arrays"
        if os.path.getsize(path) == 0:
            raise ValueError(f"{path}: the file is empty (0 bytes); expected {expected}. "
                             "Download or save it again. Received: 0 bytes")
        if not zipfile.is_zipfile(path):
            raise ValueError(f"{path}: not a zip archive; expected {expected} (np.savez). "
                             f"Received: {os.path.getsize(path)} bytes of another format")
        try:
            with np.load(path, allow_pickle=False) as data:
                keys = list(data.files)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            raise ValueError(f"{path}: not a readable .npz archive ({error}).") from None
        unknown = [key for key in keys if not _KEY_PATTERN.match(key)]
        if unknown:
            raise ValueError(
                f"{path}: unexpected keys {unknown}. Allowed keys: "
                f"{[f'{s}_{k}' for s in SPLITS for k in ('images', 'labels')]}. "
                f"Received: keys={keys}"
            )
        present = [s for s in SPLITS if f"{s}_images" in keys or f"{s}_labels" in keys]
        if not present:
            raise ValueError(
                f"{path}: no `{{split}}_images` arrays (split in {list(SPLITS)}). "
                f"Received: keys={keys}"
            )
        for split in present:
            for kind in ("images", "labels"):
                if f"{split}_{kind}" not in keys:
                    other = "labels" if kind == "images" else "images"
                    raise ValueError(
                        f"{path}: key {split}_{other!s} has no matching {split}_{kind}. "
                        f"Received: keys={keys}"
                    )
        if splits is not None:
            splits = [splits] if isinstance(splits, str) else list(splits)
            missing = [s for s in splits if s not in present]
            if missing:
                raise ValueError(
                    f"{path}: splits {missing} are not in the file; present: {present}. "
                    f"Received: splits={splits}"
                )
            present = [s for s in SPLITS if s in splits]
        return present

    def _open_splits(self):
        """Checks every split's image array and loads its labels."""
        path = self.path
        self._images = {}
        self._labels = {}
        self._image_dtype = {}
        shapes = {}
        for split in self.splits:
            member = _NpyMember(path, f"{split}_images")
            if len(member.shape) == 4 and member.shape[-1] not in (1, 3):
                raise ValueError(
                    f"{path}: key {split}_images has shape {member.shape}; expected "
                    "(N, H, W) or (N, H, W, C) with C in (1, 3). 3D volumes (N, D, H, W) "
                    "are not supported by the npz importer (2D only). "
                    f"Received: {split}_images.shape={member.shape}"
                )
            if len(member.shape) not in (3, 4):
                raise ValueError(
                    f"{path}: key {split}_images has shape {member.shape}; expected "
                    f"(N, H, W) or (N, H, W, C) with C in (1, 3). "
                    f"Received: {split}_images.shape={member.shape}"
                )
            self._images[split] = member
            self._image_dtype[split] = self._check_image_values(member)
            shapes[split] = member.shape[1:] if len(member.shape) == 4 else (*member.shape[1:], 1)
            self._labels[split] = self._load_labels(split, member.shape[0])
        channel_counts = {split: shape[-1] for split, shape in shapes.items()}
        if len(set(channel_counts.values())) > 1:
            raise ValueError(
                f"{path}: all splits must have the same channel count (1 or 3). "
                f"Received: channels={channel_counts}"
            )
        if len(set(self._image_dtype.values())) > 1:
            # Keep one dtype across splits: the widest.
            widest = "uint16" if "uint16" in self._image_dtype.values() else "uint8"
            self._image_dtype = {split: widest for split in self.splits}

    def _choose_classes(self, class_names):
        """Sets `task`, `class_names` and `class_names_detected` from the labels."""
        path = self.path
        label_widths = {split: labels.shape[1] for split, labels in self._labels.items()}
        if len(set(label_widths.values())) > 1:
            raise ValueError(
                f"{path}: all label arrays must have the same width. "
                f"Received: widths={label_widths}"
            )
        width = next(iter(label_widths.values()))
        self.task = "multilabel" if width > 1 else None
        detected = self._known_class_names()
        if class_names is not None:
            class_names = [str(name) for name in class_names]
        else:
            class_names = detected
        if width > 1:
            if class_names is None:
                class_names = [str(i) for i in range(width)]
            if len(class_names) != width:
                raise ValueError(
                    f"{path}: multi-label arrays have {width} columns but {len(class_names)} "
                    f"class names were given. Received: class_names={class_names}"
                )
        else:
            split, row, largest = self._largest_label()
            where = f"{path}: key {split}_labels row {row} holds class index {largest}"
            if class_names is None:
                if largest >= MAX_INFERRED_CLASSES:
                    raise ValueError(
                        f"{where}; without class_names that means {largest + 1} classes "
                        f"(at most {MAX_INFERRED_CLASSES} are inferred). Fix the label or pass "
                        f"class_names (CLI: --class-names). Received: {split}_labels[{row}]="
                        f"{largest}"
                    )
                class_names = [str(i) for i in range(max(largest + 1, 2))]
            if largest >= len(class_names):
                raise ValueError(
                    f"{where}, beyond the {len(class_names)} class names. Fix the label or "
                    f"the class names. Received: class_names={class_names}"
                )
            self.task = "binary" if len(class_names) == 2 else "multiclass"
        if len(set(class_names)) != len(class_names):
            raise ValueError(f"`class_names` has repeated names. Received: {class_names}")
        self.class_names = class_names
        self.class_names_detected = detected is not None and class_names == detected

    def _largest_label(self):
        """`(split, row, value)` of the largest single-label class index."""
        best = (self.splits[0], 0, 0)
        for split, labels in self._labels.items():
            if labels.size and int(labels.max()) > best[2]:
                best = (split, int(labels[:, 0].argmax()), int(labels.max()))
        return best

    @classmethod
    def from_spec(cls, spec, **options):
        return cls(spec, **options)

    @staticmethod
    def sniff(spec):
        return 1 if spec.lower().endswith(".npz") and os.path.isfile(spec) else 0

    def _known_class_names(self):
        match = re.match(r"^([a-z]+mnist)", os.path.basename(self.path).lower())
        if match and match.group(1) in MEDMNIST_CLASS_NAMES:
            return list(MEDMNIST_CLASS_NAMES[match.group(1)])
        return None

    def _check_image_values(self, member):
        """Returns the output dtype name; streams non-uint8/16 arrays to validate them."""
        if member.dtype in (np.uint8, np.uint16):
            return member.dtype.name
        if not (np.issubdtype(member.dtype, np.integer) or np.issubdtype(member.dtype, np.floating)
                or member.dtype == np.bool_):
            raise ValueError(
                f"{self.path}: key {member.key} must hold integer or float pixel values. "
                f"Received: dtype={member.dtype}"
            )
        low, high, offset = math.inf, -math.inf, 0
        for block in member.blocks():
            if np.issubdtype(block.dtype, np.floating):
                bad = ~np.isfinite(block)
                if bad.any():
                    index = offset + int(np.argwhere(bad)[0][0])
                    raise ValueError(
                        f"{self.path}: key {member.key} contains NaN or inf (first at image "
                        f"{index}). Clean the array before converting. "
                        f"Received: {member.key}[{index}] with non-finite values"
                    )
                if np.any(block != np.round(block)):
                    raise ValueError(
                        f"{self.path}: key {member.key} holds non-integer float pixels; "
                        "kmedimg stores images losslessly as uint8/uint16. Scale and round "
                        "them (e.g. to 0..255 or 0..65535) before converting. "
                        f"Received: dtype={member.dtype} with fractional values"
                    )
            if block.size:
                low, high = min(low, float(block.min())), max(high, float(block.max()))
            offset += block.shape[0]
        if low < 0 or high > 65535:
            raise ValueError(
                f"{self.path}: key {member.key} has pixel values {low}..{high} outside "
                "0..65535 (uint16). Rescale them before converting. "
                f"Received: min={low}, max={high}"
            )
        return "uint8" if high <= 255 else "uint16"

    def _load_labels(self, split, count):
        key = f"{split}_labels"
        with np.load(self.path, allow_pickle=False) as data:
            labels = data[key]
        if labels.ndim == 1:
            labels = labels[:, np.newaxis]
        if labels.ndim != 2:
            raise ValueError(
                f"{self.path}: key {key} must have shape (N,), (N, 1) or (N, K). "
                f"Received: shape={labels.shape}"
            )
        if labels.shape[0] != count:
            raise ValueError(
                f"{self.path}: key {key} has {labels.shape[0]} rows but {split}_images has "
                f"{count} images; they must match. Received: {key}.shape={labels.shape}"
            )
        if np.issubdtype(labels.dtype, np.floating):
            if not np.isfinite(labels).all():
                row = int(np.argwhere(~np.isfinite(labels))[0][0])
                raise ValueError(
                    f"{self.path}: key {key} contains NaN or inf (first at row {row}). "
                    f"Received: {key}[{row}]={labels[row].tolist()}"
                )
            if np.any(labels != np.round(labels)):
                raise ValueError(
                    f"{self.path}: key {key} must hold whole-number class indices. "
                    f"Received: dtype={labels.dtype} with fractional values"
                )
        elif not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
            raise ValueError(
                f"{self.path}: key {key} must hold integer class indices. "
                f"Received: dtype={labels.dtype}"
            )
        labels = labels.astype(np.int64)
        if labels.size and labels.min() < 0:
            raise ValueError(
                f"{self.path}: key {key} must hold non-negative class indices. "
                f"Received: min={int(labels.min())}"
            )
        if labels.shape[1] > 1 and labels.size and labels.max() > 1:
            raise ValueError(
                f"{self.path}: key {key} has {labels.shape[1]} columns (multi-label), so its "
                f"values must be 0/1. Received: max={int(labels.max())}"
            )
        return labels

    def __iter__(self):
        for split in self.splits:
            labels = self._labels[split]
            dtype = self._image_dtype[split]
            index = 0
            for block in self._images[split].blocks():
                for image in block:
                    row = labels[index]
                    if self.task == "multilabel":
                        names = tuple(self.class_names[k] for k in np.flatnonzero(row))
                    else:
                        names = (self.class_names[int(row[0])],)
                    pixels = image if image.ndim == 3 else image[..., np.newaxis]
                    yield Item(
                        source=f"npz:{split}[{index}]",
                        pixels=np.ascontiguousarray(pixels.astype(dtype, copy=False)),
                        labels=names,
                        split=split,
                    )
                    index += 1

    def describe(self):
        return {
            "format": "npz",
            "path": os.path.abspath(self.path),
            "splits": {split: int(self._labels[split].shape[0]) for split in self.splits},
            "class_names_detected": self.class_names_detected,
        }
