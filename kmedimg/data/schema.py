"""The one definition of kmedimg's TFRecord features and of the `dataset.json` manifest.

Every record is a `tf.train.Example` with these features:

| key | type | meaning |
| --- | --- | --- |
| `image/encoded` | bytes | raw C-order tensor bytes (little endian) or a PNG |
| `image/encoding` | bytes | `raw` or `png` |
| `image/height`, `image/width`, `image/channels` | int64 | stored shape |
| `image/dtype` | bytes | `uint8` or `uint16` |
| `label` | int64 list | class indices (one for binary/multiclass, 0..n for multilabel) |
| `id` | bytes | stable record id (hex) |
| `patient` | bytes | patient key (a salted hash for DICOM), empty when unknown |

Images are stored losslessly; intensity handling happens at read time or in the model.
"""

import dataclasses
import hashlib
import io
import json
from typing import Any

import numpy as np

from kmedimg.core.vocabulary import PIXEL_DTYPES, TASKS

SCHEMA_VERSION = 1
MANIFEST_NAME = "dataset.json"
REJECTED_NAME = "rejected.csv"

ENCODINGS = ("raw", "png")
DTYPES = PIXEL_DTYPES
CHANNELS = (1, 3)
COMPRESSIONS = ("NONE", "ZLIB", "GZIP")

IMAGE_KEY = "image/encoded"
ENCODING_KEY = "image/encoding"
HEIGHT_KEY = "image/height"
WIDTH_KEY = "image/width"
CHANNELS_KEY = "image/channels"
DTYPE_KEY = "image/dtype"
LABEL_KEY = "label"
ID_KEY = "id"
PATIENT_KEY = "patient"


def shard_name(split, index, num_shards):
    """File name of shard `index` (0-based) of `num_shards` for `split`."""
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def record_id(*parts):
    """A stable 16-hex-digit id from the given identifying strings or bytes."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else str(part).encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def content_hash(pixels):
    """sha256 of an image's shape, dtype and pixel values (for exact-duplicate detection)."""
    pixels = np.ascontiguousarray(pixels)
    digest = hashlib.sha256(f"{pixels.shape}|{pixels.dtype.str}|".encode())
    digest.update(pixels.tobytes())
    return digest.hexdigest()


def check_pixels(pixels, where="pixels"):
    """Validates an image array and returns it as an HxWxC array.

    Args:
        pixels: array of shape (H, W) or (H, W, C) with C in {1, 3}, dtype uint8 or
            uint16.
        where: what to name in the error message (a file, a field).

    Raises:
        ValueError: naming `where` and what was expected.
    """
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = pixels[..., np.newaxis]
    if pixels.ndim != 3 or pixels.shape[-1] not in CHANNELS:
        raise ValueError(
            f"{where}: expected an image of shape (H, W), (H, W, 1) or (H, W, 3). "
            f"Received: shape={pixels.shape}"
        )
    if pixels.dtype.name not in DTYPES:
        raise ValueError(
            f"{where}: expected dtype one of {DTYPES}. Received: dtype={pixels.dtype}"
        )
    if pixels.shape[0] < 1 or pixels.shape[1] < 1:
        raise ValueError(f"{where}: image is empty. Received: shape={pixels.shape}")
    return pixels


def encode_image(pixels, encoding):
    """Encodes an HxWxC uint8/uint16 array losslessly as `raw` bytes or `png`."""
    if encoding not in ENCODINGS:
        raise ValueError(
            f"`encoding` must be one of {ENCODINGS}. Received: encoding={encoding!r}"
        )
    pixels = np.ascontiguousarray(pixels)
    if encoding == "raw":
        return pixels.astype(pixels.dtype.newbyteorder("<"), copy=False).tobytes()
    from PIL import Image

    buffer = io.BytesIO()
    if pixels.dtype == np.uint16:
        if pixels.shape[-1] != 1:
            raise ValueError(
                "PNG encoding of uint16 images supports 1 channel only (Pillow cannot "
                "write 16-bit RGB). Use encoding='raw'. "
                f"Received: shape={pixels.shape}"
            )
        # Pillow maps a little-endian uint16 array to mode "I;16" by itself; passing
        # mode= explicitly is rejected by Pillow >= 13 ("Invalid mode for data type").
        image = Image.fromarray(pixels[..., 0].astype("<u2"))
    else:
        image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def make_example(pixels, label_indices, record_identifier, patient="", encoding="raw"):
    """Builds one serialized `tf.train.Example` (bytes) in the kmedimg schema."""
    import tensorflow as tf

    pixels = check_pixels(pixels)

    def _bytes(value):
        value = value if isinstance(value, bytes) else str(value).encode("utf-8")
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def _ints(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))

    height, width, channels = pixels.shape
    features = {
        IMAGE_KEY: _bytes(encode_image(pixels, encoding)),
        ENCODING_KEY: _bytes(encoding),
        HEIGHT_KEY: _ints([height]),
        WIDTH_KEY: _ints([width]),
        CHANNELS_KEY: _ints([channels]),
        DTYPE_KEY: _bytes(pixels.dtype.name),
        LABEL_KEY: _ints(label_indices),
        ID_KEY: _bytes(record_identifier),
        PATIENT_KEY: _bytes(patient or ""),
    }
    example = tf.train.Example(features=tf.train.Features(feature=features))
    return example.SerializeToString()


def feature_spec():
    """The `tf.io.parse_example` spec of a kmedimg record."""
    import tensorflow as tf

    return {
        IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
        ENCODING_KEY: tf.io.FixedLenFeature([], tf.string),
        HEIGHT_KEY: tf.io.FixedLenFeature([], tf.int64),
        WIDTH_KEY: tf.io.FixedLenFeature([], tf.int64),
        CHANNELS_KEY: tf.io.FixedLenFeature([], tf.int64),
        DTYPE_KEY: tf.io.FixedLenFeature([], tf.string),
        LABEL_KEY: tf.io.VarLenFeature(tf.int64),
        ID_KEY: tf.io.FixedLenFeature([], tf.string),
        PATIENT_KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
    }


@dataclasses.dataclass
class ShardInfo:
    """One TFRecord file of a split."""

    path: str  # relative to the dataset directory
    records: int
    sha256: str
    bytes: int


@dataclasses.dataclass
class SplitInfo:
    """Counts and shards of one split."""

    count: int = 0
    class_counts: dict = dataclasses.field(default_factory=dict)
    shards: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Manifest:
    """`dataset.json`: everything a reader needs to trust and decode the records.

    `image.height`/`image.width` are set when every record has the same size (the
    fast vectorised read path needs that), otherwise null. `checksum` is the sha256
    of everything else (`manifest_checksum`), written by `to_json`: reading a manifest
    whose content no longer matches it fails, so edited counts, shapes or class names
    are caught (`""` in a manifest written by hand: nothing to compare).
    """

    task: str
    class_names: list
    encoding: str
    dtype: str
    channels: int
    height: Any = None
    width: Any = None
    compression: str = "NONE"
    splits: dict = dataclasses.field(default_factory=dict)
    source: dict = dataclasses.field(default_factory=dict)
    conversion: dict = dataclasses.field(default_factory=dict)
    counts: dict = dataclasses.field(default_factory=dict)
    duplicates: dict = dataclasses.field(default_factory=dict)
    extra: dict = dataclasses.field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    checksum: str = ""

    def validate(self, where=MANIFEST_NAME):
        """Raises ValueError naming `where` and the field when the manifest is inconsistent."""
        checks = [
            ("schema_version", self.schema_version, (SCHEMA_VERSION,)),
            ("task", self.task, TASKS),
            ("encoding", self.encoding, ENCODINGS),
            ("dtype", self.dtype, DTYPES),
            ("channels", self.channels, CHANNELS),
            ("compression", self.compression, COMPRESSIONS),
        ]
        for field, value, allowed in checks:
            if value not in allowed:
                raise ValueError(
                    f"{where}: field `{field}` must be one of {allowed}. Received: {value!r}"
                )
        if not self.class_names:
            raise ValueError(f"{where}: field `class_names` is empty.")
        _check_numbers(self, where)
        for name, split in self.splits.items():
            for index, shard in enumerate(split.shards):
                check_shard_path(shard.path, where, f"splits.{name}.shards[{index}].path")
            shard_total = sum(shard.records for shard in split.shards)
            if shard_total != split.count:
                raise ValueError(
                    f"{where}: split {name!r} has count={split.count} but its shards hold "
                    f"{shard_total} records."
                )
        counts = self.counts
        if counts and counts.get("seen") != counts.get("written", 0) + counts.get(
            "rejected", 0
        ):
            raise ValueError(
                f"{where}: counts do not add up: seen={counts.get('seen')} != "
                f"written={counts.get('written')} + rejected={counts.get('rejected')}."
            )

    @property
    def num_classes(self):
        return len(self.class_names)

    def to_json(self):
        """The manifest as JSON, with `checksum` computed over everything else."""
        content = dataclasses.asdict(self)
        content["checksum"] = manifest_checksum(content)
        return json.dumps(content, indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text, where=MANIFEST_NAME):
        """Parses and validates `dataset.json` text; `where` names the file in errors."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not valid JSON ({error}).") from error
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: a manifest must be a JSON object. "
                             f"Received: {type(raw).__name__}")
        _check_checksum(raw, where)
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known, key=str)
        if unknown:
            raise ValueError(
                f"{where}: unknown fields {unknown}; expected only {sorted(known)}."
            )
        raw["splits"] = _splits_from_json(raw.get("splits", {}), where)
        try:
            manifest = cls(**raw)
            manifest.validate(where)
        except (TypeError, AttributeError) as error:
            raise ValueError(f"{where}: missing or malformed fields ({error}).") from error
        return manifest


def _is_count(value, minimum=0):
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _check_numbers(manifest, where):
    """Sizes and counts are ints (a NaN height or a string count is refused here)."""
    fields = [("height", manifest.height, 1), ("width", manifest.width, 1)]
    for name, split in manifest.splits.items():
        fields.append((f"splits.{name}.count", split.count, 0))
        for index, shard in enumerate(split.shards):
            fields += [(f"splits.{name}.shards[{index}].records", shard.records, 0),
                       (f"splits.{name}.shards[{index}].bytes", shard.bytes, 0)]
    for name, value, minimum in fields:
        if value is not None and not _is_count(value, minimum):
            raise ValueError(f"{where}: field `{name}` must be an int >= {minimum}"
                             f"{' or null' if minimum else ''}. Received: {name}={value!r}")
    names = manifest.class_names
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names) or len(
            set(names)) != len(names):
        raise ValueError(f"{where}: field `class_names` must be a list of distinct, "
                         f"non-empty names. Received: class_names={names!r}")


def manifest_checksum(manifest):
    """The sha256 (hex) of a manifest's content, every field but `checksum` itself.

    Args:
        manifest: a `Manifest` or its JSON mapping (a parsed `dataset.json`).

    Returns:
        64 hex digits; the same for a `Manifest` and for the `dataset.json` it wrote.
    """
    content = dataclasses.asdict(manifest) if isinstance(manifest, Manifest) else dict(manifest)
    content.pop("checksum", None)
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      default=repr)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _check_checksum(raw, where):
    stored = raw.get("checksum", "")
    if stored in ("", None):
        return
    actual = manifest_checksum(raw)
    if stored != actual:
        raise ValueError(
            f"{where}: the manifest was edited after the conversion: its content (counts, "
            "shapes, class names, shard list...) no longer matches its `checksum`. "
            "Restore the file or re-run `kmedimg convert`. "
            f"Received: checksum={stored!r}, content sha256={actual!r}"
        )


def _splits_from_json(raw_splits, where):
    if not isinstance(raw_splits, dict):
        raise ValueError(f"{where}: field `splits` must be a mapping of split names. "
                         f"Received: splits={raw_splits!r}")
    splits = {}
    for name, split in raw_splits.items():
        shards = split.get("shards", []) if isinstance(split, dict) else None
        if not isinstance(shards, list) or not all(isinstance(s, dict) for s in shards):
            raise ValueError(f"{where}: field `splits.{name}` must be a mapping with a "
                             f"list of shard mappings. Received: {split!r}")
        try:
            shard_infos = [ShardInfo(**shard) for shard in shards]
        except TypeError as error:
            raise ValueError(f"{where}: malformed shard in `splits.{name}.shards` "
                             f"({error}).") from error
        splits[name] = SplitInfo(count=split.get("count", 0),
                                 class_counts=split.get("class_counts", {}),
                                 shards=shard_infos)
    return splits


def check_shard_path(path, where, name):
    """Raises unless `path` is a relative path inside the dataset directory.

    A manifest names its shards relative to its own directory; an absolute path, a
    URL or a `..` component would make `load` or `verify` read any file.
    """
    parts = path.replace("\\", "/").split("/") if isinstance(path, str) else []
    if (not isinstance(path, str) or not path or path.startswith(("/", "\\"))
            or "\0" in path or ":" in parts[0] or any(part in ("", "..") for part in parts)):
        raise ValueError(
            f"{where}: field `{name}` must be a relative path inside the dataset "
            "directory (no leading `/`, no `..`, no `scheme://`); re-run `kmedimg "
            f"convert` to rewrite the manifest. Received: {name}={path!r}"
        )
