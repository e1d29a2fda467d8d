"""A TensorFlow Datasets dataset already on disk: `tfds:NAME[/CONFIG][:VERSION]`.

`tensorflow_datasets` is an optional extra (`pip install 'kmedimg[tfds]'`), imported
only when a `TfdsSource` is created.
"""

import contextlib
import os

import numpy as np

from kmedimg.data.sources.base import Item
from kmedimg.data.sources.registry import register_source

PREFIX = "tfds:"
#: TFDS split names -> kmedimg split names.
DEFAULT_SPLIT_NAMES = {"train": "train", "validation": "val", "val": "val", "test": "test"}
INSTALL_HINT = "pip install 'kmedimg[tfds]'"


def import_tfds():
    """Imports `tensorflow_datasets`, or raises ImportError with the install hint."""
    try:
        import tensorflow_datasets
    except ImportError as error:
        raise ImportError(
            "The tfds: source needs the optional package `tensorflow-datasets`, which is "
            f"not installed ({error}). Install it with `{INSTALL_HINT}`."
        ) from error
    return tensorflow_datasets


def parse_spec(spec):
    """`"tfds:mnist/config:1.0.0"` -> `"mnist/config:1.0.0"`; a bare name is kept."""
    spec = str(spec)
    name = spec[len(PREFIX):] if spec.startswith(PREFIX) else spec
    if not name or name.startswith("/"):
        raise ValueError(
            "A TFDS source is named `tfds:NAME[/CONFIG][:VERSION]` (e.g. `tfds:mnist`). "
            f"Received: spec={spec!r}"
        )
    return name


def map_splits(available, splits=None):
    """Pairs TFDS split names with kmedimg split names.

    Args:
        available: split names of the dataset.
        splits: None (every available split named train/validation/val/test), a list of
            TFDS split names, or a dict `{tfds_split: kmedimg_split}`.

    Returns:
        list of `(tfds_split, kmedimg_split)`.
    """
    available = list(available)
    if splits is None:
        unknown = [name for name in available if name not in DEFAULT_SPLIT_NAMES]
        if unknown:
            raise ValueError(
                f"The dataset has splits {unknown} with no kmedimg name; pass splits= as a "
                "dict {tfds_split: 'train'|'val'|'test'} (or a list of those to read). "
                f"Received: available splits={available}"
            )
        return [(name, DEFAULT_SPLIT_NAMES[name]) for name in available]
    if isinstance(splits, str):
        splits = [splits]
    if not isinstance(splits, dict):
        mapping = {}
        for name in splits:
            if name not in DEFAULT_SPLIT_NAMES:
                raise ValueError(
                    f"Split {name!r} has no kmedimg name; pass splits as a dict "
                    f"{{tfds_split: 'train'|'val'|'test'}}. Received: splits={splits}"
                )
            mapping[name] = DEFAULT_SPLIT_NAMES[name]
        splits = mapping
    missing = [name for name in splits if name not in available]
    if missing:
        raise ValueError(
            f"Splits {missing} are not in the dataset; available: {available}. "
            f"Received: splits={list(splits)}"
        )
    bad = sorted({v for v in splits.values() if v not in ("train", "val", "test")})
    if bad:
        raise ValueError(
            f"kmedimg split names must be 'train', 'val' or 'test'. Received: {bad}"
        )
    return list(splits.items())


def example_to_item(example, index, tfds_split, split, image_key, label_key, class_names, task,
                    label_indices=False):
    """Turns one numpy TFDS example (a dict) into an `Item`.

    `label_indices=True` (a Sequence of ClassLabel) reads a multi-label value as class
    indices; otherwise a bool or 0/1 vector as long as `class_names` is multi-hot.
    """
    for key in (image_key, label_key):
        if key not in example:
            raise ValueError(
                f"TFDS example has no feature {key!r}; features: {sorted(example)}. Pass "
                "image_key=/label_key= to choose. "
                f"Received: image_key={image_key!r}, label_key={label_key!r}"
            )
    pixels = np.asarray(example[image_key])
    if pixels.ndim == 3 and pixels.shape[-1] == 4:
        raise ValueError(
            f"TFDS feature {image_key!r} has 4 channels (RGBA); expected 1 or 3."
        )
    label = np.asarray(example[label_key])
    if task == "multilabel":
        if label_indices:
            names = tuple(class_names[int(k)] for k in np.atleast_1d(label))
        elif label.dtype == np.bool_ or (label.ndim == 1 and len(label) == len(class_names)
                                       and set(np.unique(label)) <= {0, 1}):
            names = tuple(class_names[k] for k in np.flatnonzero(label))
        else:
            names = tuple(class_names[int(k)] for k in np.atleast_1d(label))
    else:
        names = (class_names[int(label)],)
    return Item(
        source=f"tfds:{tfds_split}[{index}]",
        pixels=np.ascontiguousarray(pixels),
        labels=names,
        split=split,
    )


def _class_names_of(feature):
    """`(class_names, task)` from a ClassLabel or a Sequence of ClassLabel feature."""
    # First: a tfds Sequence forwards `.names` to its inner ClassLabel.
    inner_names = getattr(getattr(feature, "feature", None), "names", None)
    if inner_names:
        return list(inner_names), "multilabel"
    names = getattr(feature, "names", None)
    if names:
        return list(names), ("binary" if len(names) == 2 else "multiclass")
    return None, None


@contextlib.contextmanager
def _gcs_disabled(tfds):
    """TFDS's own switch against reaching gs://tfds-data (already on in tfds >= 4.9.x)."""
    gcs_utils = getattr(getattr(getattr(tfds, "core", None), "utils", None), "gcs_utils", None)
    if gcs_utils is None or not hasattr(gcs_utils, "_is_gcs_disabled"):
        yield
        return
    previous = gcs_utils._is_gcs_disabled
    gcs_utils._is_gcs_disabled = True
    try:
        yield
    finally:
        gcs_utils._is_gcs_disabled = previous


@register_source("tfds")
class TfdsSource:
    """Items of a TFDS dataset read from a local `data_dir`.

    Nothing is downloaded unless `download=True`: without it a dataset missing from
    `data_dir` is a clear error. The dataset's `validation` split becomes kmedimg's
    `val`; other split names need an explicit `splits` mapping.

    Args:
        name: `tfds:NAME[/CONFIG][:VERSION]` or `NAME`.
        data_dir: the TFDS data directory. Defaults to `None` (TFDS's default,
            `$TFDS_DATA_DIR` or `~/tensorflow_datasets`).
        download: download and prepare the dataset when missing. Defaults to `False`.
        splits: TFDS splits to read: a list, or a dict `{tfds_split: kmedimg_split}`.
            Defaults to `None` (all of train/validation/test present).
        image_key: the image feature. Defaults to `"image"`.
        label_key: the label feature (a ClassLabel, or a Sequence of ClassLabel for
            multi-label). Defaults to `"label"`.
        class_names: override the label names. Defaults to `None` (the feature's).

    Raises:
        ImportError: `tensorflow-datasets` is not installed (with the install hint).
        FileNotFoundError: the dataset is not in `data_dir` and `download` is False.

    Example:

    ```python
    source = TfdsSource("tfds:mnist", data_dir="/data/tfds")
    ```
    """

    def __init__(
        self,
        name,
        data_dir=None,
        download=False,
        splits=None,
        image_key="image",
        label_key="label",
        class_names=None,
    ):
        self.name = parse_spec(name)
        self.data_dir = os.fspath(data_dir) if data_dir is not None else None
        self.download = bool(download)
        self.image_key, self.label_key = image_key, label_key
        tfds = import_tfds()
        import tensorflow as tf

        offline = contextlib.nullcontext() if self.download else _gcs_disabled(tfds)
        try:
            with offline:
                builder = tfds.builder(self.name, data_dir=self.data_dir, try_gcs=False)
        except Exception as error:  # DatasetNotFoundError and friends
            raise ValueError(
                f"TFDS cannot find dataset {self.name!r} (data_dir={self.data_dir!r}): {error}"
            ) from error
        prepared = tf.io.gfile.exists(os.path.join(builder.data_dir, "dataset_info.json"))
        if not prepared:
            if not self.download:
                raise FileNotFoundError(
                    f"TFDS dataset {self.name!r} is not prepared in {builder.data_dir}; "
                    "kmedimg never downloads unless asked: pass download=True (CLI: "
                    "--tfds-download) or point data_dir (--tfds-data-dir) at a prepared copy."
                )
            builder.download_and_prepare()
        self._builder = builder
        features = builder.info.features
        if image_key not in features or label_key not in features:
            raise ValueError(
                f"TFDS dataset {self.name!r} has features {sorted(features.keys())}; "
                f"pass image_key=/label_key=. Received: image_key={image_key!r}, "
                f"label_key={label_key!r}"
            )
        detected, task = _class_names_of(features[label_key])
        self._label_indices = task == "multilabel"
        if class_names is None:
            class_names = detected
        if class_names is None:
            raise ValueError(
                f"TFDS feature {label_key!r} of {self.name!r} is not a ClassLabel; pass "
                "class_names=[...]. Received: class_names=None"
            )
        self.class_names = [str(n) for n in class_names]
        self.task = task or ("binary" if len(self.class_names) == 2 else "multiclass")
        self.splits = map_splits(builder.info.splits.keys(), splits)

    @classmethod
    def from_spec(cls, spec, **options):
        return cls(spec, **options)

    @staticmethod
    def sniff(spec):
        return 10 if spec.startswith(PREFIX) else 0

    def __iter__(self):
        tfds = import_tfds()
        for tfds_split, split in self.splits:
            dataset = self._builder.as_dataset(split=tfds_split, shuffle_files=False)
            for index, example in enumerate(tfds.as_numpy(dataset)):
                yield example_to_item(
                    example, index, tfds_split, split, self.image_key, self.label_key,
                    self.class_names, self.task, label_indices=self._label_indices,
                )

    def describe(self):
        return {
            "format": "tfds",
            "name": self.name,
            "data_dir": self.data_dir,
            "splits": dict(self.splits),
            "image_key": self.image_key,
            "label_key": self.label_key,
        }
