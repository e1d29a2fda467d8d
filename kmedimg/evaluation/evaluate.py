"""Evaluating a trained model: predictions over a split, test-time augmentation, metrics.

`evaluate_model` is what `kmedimg.training.run` and `kmedimg evaluate` call: it
predicts the validation split (to choose the operating point) and the evaluated
split (to apply it), optionally with test-time augmentation, and returns the
JSON-able result of `kmedimg.evaluation.metrics.evaluate`.

Example:

```python
from kmedimg.data.pipeline import load
from kmedimg.evaluation import evaluate_model

val = load("/tmp/phantoms", "val", image_size=64, batch_size=64)
test = load("/tmp/phantoms", "test", image_size=64, batch_size=64)
result = evaluate_model(model, test, "binary", val_data=val, class_names=["normal", "opacity"])
result["metrics"]["roc_auc"]
```
"""

import time

import numpy as np

from kmedimg.evaluation import metrics

TTA_MODES = ("none", "hflip", "flips")


def _check_tta(tta):
    tta = "none" if tta in (None, False) else tta
    if tta not in TTA_MODES:
        raise ValueError(
            f"`tta` must be one of {TTA_MODES} ('hflip': mean of the image and its mirror; "
            f"'flips': also the vertical flips). Received: tta={tta!r}"
        )
    return tta


def tta_views(images, tta):
    """The test-time views of a batch [B, H, W, C], stacked on a new leading axis."""
    import tensorflow as tf

    views = [images]
    if tta in ("hflip", "flips"):
        views.append(tf.reverse(images, axis=[2]))
    if tta == "flips":
        views.append(tf.reverse(images, axis=[1]))
        views.append(tf.reverse(images, axis=[1, 2]))
    return tf.stack(views)


def make_predict_fn(model, tta="none"):
    """A compiled function images [B, H, W, C] -> probabilities, averaging TTA views."""
    import tensorflow as tf

    tta = _check_tta(tta)

    def predict(images):
        if tta == "none":
            return tf.cast(model(images, training=False), tf.float32)
        views = tta_views(images, tta)
        count = tf.shape(views)[0]
        flat = tf.reshape(views, tf.concat([[-1], tf.shape(images)[1:]], axis=0))
        probs = tf.cast(model(flat, training=False), tf.float32)
        probs = tf.reshape(probs, tf.concat([[count, -1], tf.shape(probs)[1:]], axis=0))
        return tf.reduce_mean(probs, axis=0)

    return tf.function(predict, reduce_retracing=True)


def predict_dataset(model, data, tta="none"):
    """Runs `model` over `data` once.

    Args:
        model: a Keras classifier taking raw pixels.
        data: a finite `tf.data.Dataset` of `(images, labels)` (from
            `kmedimg.data.pipeline.load(..., training=False)`) or a tuple of arrays
            `(images, labels)`.
        tta: "none", "hflip" or "flips". Defaults to `"none"`.

    Returns:
        `(labels, probs)` as float32 numpy arrays in dataset order, and the seconds
        spent, as a tuple `(labels, probs, seconds)`.
    """
    import tensorflow as tf

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
    all_labels, all_probs = [], []
    for images, labels in data:
        all_probs.append(predict(images).numpy())
        all_labels.append(labels.numpy())
    seconds = time.perf_counter() - start
    if not all_probs:
        raise ValueError("`data` is empty: no batches to evaluate. Received: 0 batches")
    return np.concatenate(all_labels), np.concatenate(all_probs), seconds


def threshold_from_validation(labels, probs, task, rule="youden", target=None, split="val"):
    """The operating point: `Threshold.fixed(target or 0.5)` for rule "fixed", else chosen on val."""
    if task == "multiclass":
        return metrics.Threshold.argmax()
    if rule == "fixed":
        num_outputs = 1 if task == "binary" else np.asarray(probs).shape[-1]
        return metrics.Threshold.fixed(0.5 if target is None else target, num_outputs)
    return metrics.choose_threshold(labels, probs, rule, task=task, target=target, split=split)


def evaluate_model(model, data, task, *, val_data=None, split="test", val_split="val",
                   threshold=None, threshold_rule="youden", threshold_target=None,
                   class_names=None, n_bootstrap=1000, confidence=0.95, seed=0, tta="none",
                   return_predictions=False):
    """Metrics of `model` on one split, at an operating point chosen on validation.

    Args:
        model: a trained Keras classifier (raw pixels in).
        data: the evaluated split: finite `tf.data.Dataset` of `(images, labels)` or a
            tuple of arrays.
        task: "binary", "multiclass" or "multilabel".
        val_data: the validation split, to choose the operating point on. When None
            and no `threshold` is given, binary/multilabel use the fixed 0.5 threshold
            (recorded as rule "fixed"). Defaults to `None`.
        split: name of the evaluated split. Defaults to `"test"`.
        val_split: name of the validation split. Defaults to `"val"`.
        threshold: an explicit `Threshold` (then `val_data` is not needed).
            Defaults to `None`.
        threshold_rule: rule for `choose_threshold`, or "fixed". Defaults to `"youden"`.
        threshold_target: target sensitivity/specificity, or the fixed value.
            Defaults to `None`.
        class_names: class names. Defaults to `None`.
        n_bootstrap: bootstrap replicates (0: no intervals). Defaults to `1000`.
        confidence: interval level. Defaults to `0.95`.
        seed: bootstrap seed. Defaults to `0`.
        tta: "none", "hflip" or "flips"; with TTA the result also holds `tta` with the
            metrics without TTA and the paired differences. Defaults to `"none"`.
        return_predictions: also return the predictions. Defaults to `False`.

    Returns:
        The JSON-able dict of `metrics.evaluate` plus `timing` (seconds, images/s); with
        `return_predictions`, a tuple `(result, predictions)` where predictions maps
        split name -> `(labels, probs)`.
    """
    tta = _check_tta(tta)
    predictions = {}
    timing = {}
    if threshold is None and val_data is not None:
        val_labels, val_probs, seconds = predict_dataset(model, val_data, tta)
        predictions[val_split] = (val_labels, val_probs)
        timing[f"{val_split}_predict_seconds"] = seconds
        threshold = threshold_from_validation(val_labels, val_probs, task, threshold_rule,
                                              threshold_target, val_split)
    elif threshold is None:
        # No validation data: a fixed threshold, recorded as such, never one chosen on `data`.
        fixed = threshold_target if threshold_rule == "fixed" and threshold_target is not None else 0.5
        threshold = metrics.Threshold.argmax() if task == "multiclass" else metrics.Threshold.fixed(fixed)
    labels, probs, seconds = predict_dataset(model, data, tta)
    predictions[split] = (labels, probs)
    timing[f"{split}_predict_seconds"] = seconds
    timing[f"{split}_images_per_second"] = labels.shape[0] / seconds if seconds else None
    options = dict(task=task, threshold=threshold, split=split, class_names=class_names,
                   n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
    result = metrics.evaluate(labels, probs, **options)
    result["tta"] = {"mode": tta}
    if tta != "none":
        plain_labels, plain_probs, plain_seconds = predict_dataset(model, data, "none")
        predictions[f"{split}_without_tta"] = (plain_labels, plain_probs)
        plain = metrics.evaluate(plain_labels, plain_probs, **options)
        result["tta"].update(metrics.paired_difference(
            labels, probs, plain_probs, **{k: v for k, v in options.items() if k != "class_names"}))
        result["tta"]["metrics_without_tta"] = plain["metrics"]
        timing[f"{split}_predict_seconds_without_tta"] = plain_seconds
    result["timing"] = timing
    return (result, predictions) if return_predictions else result
