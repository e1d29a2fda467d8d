"""`evaluate_model`: predictions over a split, test-time augmentation, metrics.

`evaluate_model` is what training and `kmedimg evaluate` (`kmedimg.runs`) call: it
predicts the validation split (to choose the operating point) and the evaluated
split (to apply it), optionally with test-time augmentation, and returns the
JSON-able result of `kmedimg.evaluation.evaluate`.

Example:

```python
from kmedimg.data.pipeline import load
from kmedimg.evaluation import evaluate_model

val = load("/tmp/phantoms", "val", image_size=64, batch_size=64)
test = load("/tmp/phantoms", "test", image_size=64, batch_size=64)
result = evaluate_model(model, test, val_data=val, class_names=["normal", "opacity"])
result["metrics"]["roc_auc"]
```
"""

from kmedimg.evaluation.metrics import evaluate, paired_difference
from kmedimg.evaluation.model_file import as_classifier
from kmedimg.evaluation.prediction import check_tta, predict_dataset
from kmedimg.evaluation.thresholds import Threshold, threshold_from_validation


def evaluate_model(model, data, task=None, *, val_data=None, split="test", val_split="val",
                   threshold=None, threshold_rule="youden", threshold_target=None,
                   class_names=None, n_bootstrap=1000, confidence=0.95, seed=0, tta="none",
                   return_predictions=False):
    """Metrics of `model` on one split, at an operating point chosen on validation.

    Args:
        model: a trained `ImageClassifier` (raw pixels in); a classifier saved by
            kmedimg 0.1.0 is converted (`kmedimg.models.as_image_classifier`).
        data: the evaluated split: finite `tf.data.Dataset` of `(images, labels)` or a
            tuple of arrays.
        task: "binary", "multiclass" or "multilabel", checked against the model's.
            Defaults to `None` (the model's `task`).
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
        The JSON-able dict of `evaluate` plus `timing` (seconds, images/s); with
        `return_predictions`, a tuple `(result, predictions)` where predictions maps
        split name -> `Predictions`.
    """
    tta = check_tta(tta)
    model = as_classifier(model, task=task)
    task = model.task
    predictions = {}
    timing = {}
    if threshold is None and val_data is not None:
        val = predict_dataset(model, val_data, tta)
        predictions[val_split] = val
        timing[f"{val_split}_predict_seconds"] = val.seconds
        threshold = threshold_from_validation(val.labels, val.probs, task, threshold_rule,
                                              threshold_target, val_split)
    elif threshold is None:
        # No validation data: a fixed threshold, recorded as such, never one chosen on `data`.
        fixed = threshold_target if threshold_rule == "fixed" and threshold_target is not None else 0.5
        threshold = Threshold.argmax() if task == "multiclass" else Threshold.fixed(fixed)
    evaluated = predict_dataset(model, data, tta)
    labels, probs, seconds = evaluated.labels, evaluated.probs, evaluated.seconds
    predictions[split] = evaluated
    timing[f"{split}_predict_seconds"] = seconds
    timing[f"{split}_images_per_second"] = labels.shape[0] / seconds if seconds else None
    options = dict(task=task, threshold=threshold, split=split, class_names=class_names,
                   n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
    result = evaluate(labels, probs, **options)
    result["tta"] = {"mode": tta}
    if tta != "none":
        plain = predict_dataset(model, data, "none")
        predictions[f"{split}_without_tta"] = plain
        plain_result = evaluate(plain.labels, plain.probs, **options)
        result["tta"].update(paired_difference(
            labels, probs, plain.probs, **{k: v for k, v in options.items() if k != "class_names"}))
        result["tta"]["metrics_without_tta"] = plain_result["metrics"]
        timing[f"{split}_predict_seconds_without_tta"] = plain.seconds
    result["timing"] = timing
    return (result, predictions) if return_predictions else result
