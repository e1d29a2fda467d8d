"""Running a model over data: ordered predictions, test-time augmentation, record ids.

`predict_dataset` runs a classifier once over a finite `tf.data.Dataset` (or arrays)
with one compiled forward pass per model and TTA mode; `predict_records` predicts a
TFRecord split with its record ids; `predict_files` predicts loose image, `.npy` and
DICOM files read exactly as training saw them.

Example:

```python
from kmedimg.data.pipeline import load
from kmedimg.evaluation import predict_dataset

predictions = predict_dataset(model, load("/tmp/phantoms", "test"), tta="hflip")
predictions.probs[:3]
```
"""

import dataclasses
import time
import weakref
from typing import Optional

import numpy as np
import tensorflow as tf

from kmedimg.core.progress import progress
from kmedimg.data.manifest_files import as_manifest
from kmedimg.data.pipeline import load
from kmedimg.evaluation import inputs

TTA_MODES = ("none", "hflip", "flips")


def check_tta(tta):
    tta = "none" if tta in (None, False) else tta
    if tta not in TTA_MODES:
        raise ValueError(
            f"`tta` must be one of {TTA_MODES} ('hflip': mean of the image and its mirror; "
            f"'flips': also the vertical flips). Received: tta={tta!r}"
        )
    return tta


def tta_views(images, tta):
    """The test-time views of a batch [B, H, W, C], stacked on a new leading axis."""
    views = [images]
    if tta in ("hflip", "flips"):
        views.append(tf.reverse(images, axis=[2]))
    if tta == "flips":
        views.append(tf.reverse(images, axis=[1]))
        views.append(tf.reverse(images, axis=[1, 2]))
    return tf.stack(views)


# One compiled prediction function per (model, TTA mode): tracing a large backbone takes
# seconds, so repeated predictions with the same model must not retrace.
_PREDICT_FNS = weakref.WeakKeyDictionary()


def make_predict_fn(model, tta="none"):
    """A compiled function images [B, H, W, C] -> probabilities, averaging TTA views.

    The function is cached per model and TTA mode.
    """
    tta = check_tta(tta)
    cached = _PREDICT_FNS.setdefault(model, {})
    if tta not in cached:
        cached[tta] = _compile_predict_fn(model, tta)
    return cached[tta]


def _compile_predict_fn(model, tta):
    # The cache above is keyed weakly by the model; a function holding the model
    # itself would keep every evaluated model (and its graphs) alive forever.
    model_ref = weakref.ref(model)

    def predict(images):
        model = model_ref()
        if tta == "none":
            return tf.cast(model(images, training=False), tf.float32)
        views = tta_views(images, tta)
        count = tf.shape(views)[0]
        flat = tf.reshape(views, tf.concat([[-1], tf.shape(images)[1:]], axis=0))
        probs = tf.cast(model(flat, training=False), tf.float32)
        probs = tf.reshape(probs, tf.concat([[count, -1], tf.shape(probs)[1:]], axis=0))
        return tf.reduce_mean(probs, axis=0)

    return tf.function(predict, reduce_retracing=True)


@dataclasses.dataclass
class Predictions:
    """Model outputs over one split, in dataset order.

    Attributes:
        labels: pipeline labels, [N, 1] (binary) or [N, K].
        probs: probabilities, same shape.
        ids: record ids when the dataset yields `(images, labels, ids)`, else None.
        seconds: wall time of the prediction pass.
    """

    labels: np.ndarray
    probs: np.ndarray
    ids: Optional[np.ndarray] = None
    seconds: float = 0.0


def predict_dataset(model, data, tta="none"):
    """Runs `model` over `data` once.

    Args:
        model: a Keras classifier taking raw pixels.
        data: a finite `tf.data.Dataset` of `(images, labels)` (from
            `kmedimg.data.pipeline.load(..., training=False)`) or of `(images, labels,
            ids)` (from `kmedimg.data.load(..., with_ids=True)`), or a tuple of
            arrays `(images, labels)`.
        tta: "none", "hflip" or "flips". Defaults to `"none"`.

    Returns:
        `Predictions`.
    """
    predict = make_predict_fn(model, tta)
    if isinstance(data, (tuple, list)):
        if len(data) != 2:
            raise ValueError(
                "`data` must be a tf.data.Dataset or a tuple (images, labels). "
                f"Received: a {type(data).__name__} of length {len(data)}"
            )
        images, labels = np.asarray(data[0], np.float32), np.asarray(data[1], np.float32)
        data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(64)
    elif not isinstance(data, tf.data.Dataset):
        raise ValueError(
            "`data` must be a tf.data.Dataset of (images, labels) or a tuple of arrays. "
            f"Received: data of type {type(data).__name__}"
        )
    if data.cardinality() == tf.data.INFINITE_CARDINALITY:
        raise ValueError(
            "`data` repeats forever; evaluate a finite split: load(..., training=False). "
            "Received: an infinite dataset"
        )
    start = time.perf_counter()
    all_labels, all_probs, all_ids = [], [], []
    for element in progress(data, max(int(data.cardinality()), 0) or None, "predict", "batch"):
        images, labels = element[0], element[1]
        all_probs.append(predict(images).numpy())
        all_labels.append(labels.numpy())
        if len(element) > 2:
            all_ids.extend(value.decode("utf-8") for value in element[2].numpy())
    seconds = time.perf_counter() - start
    if not all_probs:
        raise ValueError("`data` is empty: no batches to evaluate. Received: 0 batches")
    return Predictions(np.concatenate(all_labels), np.concatenate(all_probs),
                       np.asarray(all_ids) if all_ids else None, seconds)


def check_split(path_or_manifest, split, purpose="predict"):
    """The dataset's `Manifest`, after checking that `split` holds records.

    Args:
        path_or_manifest: a dataset directory or its `Manifest`.
        split: the split to read.
        purpose: what the split is read for, named in the error. Defaults to `"predict"`.

    Raises:
        ValueError: naming the dataset, the splits that hold records and the split.
    """
    manifest = as_manifest(path_or_manifest)
    if split not in manifest.splits or not manifest.splits[split].count:
        held = {name: info.count for name, info in manifest.splits.items() if info.count}
        raise ValueError(
            f"Dataset {manifest.directory} has no records in split {split!r} to {purpose}; "
            f"the splits with records are {held}: pass one of them. Received: split={split!r}"
        )
    return manifest


def predict_records(model, data_dir, split, batch_size=64, tta="none"):
    """Predicts one TFRecord split: `(ids, labels, probs)` numpy arrays in record order.

    Args:
        model: a Keras classifier taking raw pixels.
        data_dir: a dataset directory (TFRecords + dataset.json; local, gs:// or ram://)
            or its `Manifest`.
        split: the split to predict.
        batch_size: images per batch. Defaults to `64`.
        tta: "none", "hflip" or "flips". Defaults to `"none"`.
    """
    manifest = check_split(data_dir, split)
    height, width, channels = inputs.model_input_spec(model)
    records = load(manifest, split, image_size=(height, width), channels=channels,
                   batch_size=batch_size, with_ids=True)
    result = predict_dataset(model, records, tta)
    return result.ids, result.labels, result.probs


def predict_files(model, paths, dtype="auto", batch_size=32, dicom=None, tta="none"):
    """Predicts image/.npy/DICOM files: `(paths, probs)`; folders are expanded.

    Args:
        model: a Keras classifier taking raw pixels.
        paths: files or folders.
        dtype: stored pixel type the model was trained on ("uint8", "uint16") or
            "auto". Defaults to `"auto"`.
        batch_size: images per forward pass. Defaults to `32`.
        dicom: DICOM settings `{"window", "offset", "scale"}` of the training dataset.
            Defaults to `None` (full bit depth, offset 1024).
        tta: "none", "hflip" or "flips". Defaults to `"none"`.
    """
    spec = inputs.model_input_spec(model)
    predict = make_predict_fn(model, tta)
    files = inputs.expand_inputs(paths)
    probs = []
    for start in range(0, len(files), batch_size):
        batch = [inputs.fit_to_model(inputs.read_pixels(path, dtype, dicom=dicom), spec)
                 for path in files[start:start + batch_size]]
        probs.append(predict(np.stack(batch)).numpy())
    return np.asarray(files), np.concatenate(probs)
