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

import dataclasses
import time
import weakref
from typing import Optional

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


# One compiled prediction function per (model, TTA mode): tracing a large backbone takes
# seconds, so repeated predictions with the same model must not retrace.
_PREDICT_FNS = weakref.WeakKeyDictionary()


def make_predict_fn(model, tta="none"):
    """A compiled function images [B, H, W, C] -> probabilities, averaging TTA views.

    The function is cached per model and TTA mode.
    """
    tta = _check_tta(tta)
    cached = _PREDICT_FNS.setdefault(model, {})
    if tta not in cached:
        cached[tta] = _compile_predict_fn(model, tta)
    return cached[tta]


def _compile_predict_fn(model, tta):
    import tensorflow as tf

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
            ids)` (from `kmedimg.evaluation.predict.records_with_ids`), or a tuple of
            arrays `(images, labels)`.
        tta: "none", "hflip" or "flips". Defaults to `"none"`.

    Returns:
        `Predictions`.
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
    all_labels, all_probs, all_ids = [], [], []
    for element in data:
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
        split name -> `Predictions`.
    """
    tta = _check_tta(tta)
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
        threshold = metrics.Threshold.argmax() if task == "multiclass" else metrics.Threshold.fixed(fixed)
    evaluated = predict_dataset(model, data, tta)
    labels, probs, seconds = evaluated.labels, evaluated.probs, evaluated.seconds
    predictions[split] = evaluated
    timing[f"{split}_predict_seconds"] = seconds
    timing[f"{split}_images_per_second"] = labels.shape[0] / seconds if seconds else None
    options = dict(task=task, threshold=threshold, split=split, class_names=class_names,
                   n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
    result = metrics.evaluate(labels, probs, **options)
    result["tta"] = {"mode": tta}
    if tta != "none":
        plain = predict_dataset(model, data, "none")
        predictions[f"{split}_without_tta"] = plain
        plain_result = metrics.evaluate(plain.labels, plain.probs, **options)
        result["tta"].update(metrics.paired_difference(
            labels, probs, plain.probs, **{k: v for k, v in options.items() if k != "class_names"}))
        result["tta"]["metrics_without_tta"] = plain_result["metrics"]
        timing[f"{split}_predict_seconds_without_tta"] = plain.seconds
    result["timing"] = timing
    return (result, predictions) if return_predictions else result


# ------------------------------------------------------------------- run directory


def evaluate_run(run_dir, data=None, split="test", val_split=None, tta="none", n_bootstrap=None,
                 threshold_rule=None, threshold_target=None, batch_size=64, cam_per_group=4,
                 report=True, seed=None):
    """Evaluates a run directory's model on a split and writes the results next to it.

    Writes `RUN_DIR/evaluation/`: `metrics_<split>.json` (the `evaluate_model` dict),
    `predictions_<split>.csv` and `predictions_<val_split>.csv` (record ids, labels,
    probabilities), `threshold.json` (the operating point `kmedimg predict` uses), and
    `RUN_DIR/report.html`.

    Args:
        run_dir: the run directory (with `model.keras`).
        data: dataset directory. Defaults to `None` (the run's `data.path`).
        split: split to evaluate. Defaults to `"test"`.
        val_split: split to choose the operating point on. Defaults to `None` (the
            run's `data.val_split`, else "val").
        tta: "none", "hflip" or "flips". Defaults to `"none"`.
        n_bootstrap: bootstrap replicates. Defaults to `None` (the run's
            `evaluation.bootstrap`, else 1000).
        threshold_rule: operating-point rule. Defaults to `None` (the run's).
        threshold_target: its target. Defaults to `None` (the run's).
        batch_size: images per batch. Defaults to `64`.
        cam_per_group: Grad-CAM cases per group in the report. Defaults to `4`.
        report: write report.html. Defaults to `True`.
        seed: bootstrap seed. Defaults to `None` (the run's `training.seed`, else 0).

    Returns:
        dict of written paths and the metrics dict (`"evaluation"`).
    """
    import json
    import os

    from kmedimg.evaluation import predict as predict_lib
    from kmedimg.evaluation import report as report_lib
    from kmedimg.evaluation.inputs import model_input_spec
    from kmedimg.evaluation.runs import EVALUATION_DIR, THRESHOLD_FILE, load_model_for_inference

    model, info = load_model_for_inference(run_dir, data)
    if info.get("manifest") is None:
        raise ValueError(
            f"{run_dir}: no dataset to evaluate on ({info.get('data_missing') or 'no data.path in config.yaml'}). "
            "Pass --data DIR. Received: data=None"
        )
    config = info.get("config") or {}
    evaluation_config = config.get("evaluation") or {}
    val_split = val_split or (config.get("data") or {}).get("val_split") or "val"
    if split == val_split:
        raise ValueError(
            f"The operating point is chosen on {val_split!r}; evaluate another split (e.g. test). "
            f"Received: split={split!r}"
        )
    manifest = info["manifest"]
    for name in (split, val_split):
        if name not in manifest.splits or not manifest.splits[name].count:
            raise ValueError(
                f"Dataset {info['data']} has no records in split {name!r}; splits: "
                f"{ {k: v.count for k, v in manifest.splits.items()} }. Received: split={name!r}"
            )
    rule = threshold_rule or evaluation_config.get("threshold_rule") or "youden"
    target = threshold_target if threshold_target is not None else evaluation_config.get("threshold_target")
    n_bootstrap = evaluation_config.get("bootstrap", 1000) if n_bootstrap is None else n_bootstrap
    seed = (config.get("training") or {}).get("seed", 0) if seed is None else seed
    height, width, channels = model_input_spec(model)

    def records(name):
        return predict_lib.records_with_ids(manifest, name, (height, width), channels, batch_size)

    result, predictions = evaluate_model(
        model, records(split), info["task"], val_data=records(val_split), split=split,
        val_split=val_split, threshold_rule=rule, threshold_target=target,
        class_names=info["class_names"], n_bootstrap=n_bootstrap,
        confidence=evaluation_config.get("confidence", 0.95), seed=seed, tta=tta,
        return_predictions=True)
    result["data"] = str(info["data"])
    result["model"] = info["model_path"]
    out_dir = os.path.join(run_dir, EVALUATION_DIR)
    os.makedirs(out_dir, exist_ok=True)
    written = {}
    written["metrics"] = os.path.join(out_dir, f"metrics_{split}.json")
    with open(written["metrics"], "w") as handle:
        json.dump(result, handle, indent=2)
    written["threshold"] = os.path.join(out_dir, THRESHOLD_FILE)
    with open(written["threshold"], "w") as handle:
        json.dump(result["threshold"], handle, indent=2)
    for name in (split, val_split):
        path = os.path.join(out_dir, f"predictions_{name}.csv")
        predict_lib.write_predictions_csv(path, predictions[name].ids, predictions[name].probs,
                                          info["task"], info["class_names"], result["threshold"],
                                          predictions[name].labels, id_column="id")
        written[f"predictions_{name}"] = path
    if report:
        cases, cam_seconds = _gradcam_cases(model, records(split), predictions[split], result,
                                            info, cam_per_group)
        info["timing"] = dict(info.get("timing") or {})
        if cam_seconds is not None:
            info["timing"]["grad_cam_seconds"] = cam_seconds
        info["model_summary"] = _model_summary(model, info)
        history = report_lib.read_history(os.path.join(run_dir, "history.csv"))
        written["report"] = report_lib.write_report(
            os.path.join(run_dir, "report.html"), result, predictions[split], info=info,
            history=history, cam_cases=cases, seed=seed)
    written["evaluation"] = result
    return written


def _model_summary(model, info):
    from kmedimg.evaluation.explain import _nested_models

    backbone = (info.get("config") or {}).get("model", {}).get("backbone") or ", ".join(
        m.name for m in _nested_models(model)) or "–"
    return {
        "model file": info["model_path"],
        "backbone": backbone,
        "input": "×".join(str(v) for v in model.inputs[0].shape[1:]) + " raw pixels",
        "outputs": f"{int(model.outputs[0].shape[-1])} ({info['task']})",
        "parameters": f"{model.count_params():,}",
    }


def _gradcam_cases(model, records, predictions, result, info, per_group):
    """Grad-CAM overlays of correct and wrong cases for the report ([], None if impossible)."""
    from kmedimg.evaluation import explain
    from kmedimg.evaluation.report import select_cases

    groups = select_cases(predictions, result, per_group)
    wanted = sorted({index for indices in groups.values() for index in indices})
    if not wanted:
        return [], None
    try:
        explainer = explain.GradCam(model, task=info["task"])
    except ValueError:
        return [], None
    images, position = {}, 0
    for batch in records:
        batch_images = batch[0].numpy()
        for offset in range(len(batch_images)):
            if position + offset in wanted:
                images[position + offset] = batch_images[offset]
        position += len(batch_images)
        if position > wanted[-1]:
            break
    start = time.perf_counter()
    stacked = np.stack([images[index] for index in wanted])
    heatmaps, probs, explained = explainer(stacked, return_details=True)
    seconds = time.perf_counter() - start
    by_index = {index: row for row, index in enumerate(wanted)}
    names = result["class_names"]
    cases = []
    for group, indices in groups.items():
        for index in indices:
            row = by_index[index]
            label = predictions.labels[index]
            if result["task"] == "binary":
                true = names[int(label[0] > 0.5)]
                detail = f"p({names[1]})={predictions.probs[index][0]:.2f}"
            elif result["task"] == "multiclass":
                true = names[int(np.argmax(label))]
                detail = f"pred {names[int(explained[row])]} {predictions.probs[index].max():.2f}"
            else:
                true = "|".join(n for n, on in zip(names, label) if on > 0.5) or "none"
                detail = f"CAM: {names[int(explained[row])]}"
            case_id = predictions.ids[index] if predictions.ids is not None else str(index)
            cases.append({"group": group, "image": images[index], "heatmap": heatmaps[row],
                          "caption": f"{case_id[:8]} · true {true}\n{detail}"})
    return cases, seconds


def add_evaluate_command(subparsers):
    parser = subparsers.add_parser(
        "evaluate", help="metrics with 95%% CIs at a validation-chosen operating point, and report.html",
        description="Chooses the operating point on the validation split, applies it to SPLIT, "
                    "writes RUN_DIR/evaluation/ and RUN_DIR/report.html.")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run directory holding model.keras")
    parser.add_argument("--data", default=None, help="dataset directory (default: the run's data.path)")
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument("--val-split", default=None,
                        help="split the operating point is chosen on (default: the run's, else val)")
    parser.add_argument("--tta", default="none", choices=TTA_MODES,
                        help="test-time augmentation; its effect is reported (default: none)")
    parser.add_argument("--threshold-rule", default=None,
                        choices=("youden", "f1", "sensitivity", "specificity", "fixed"),
                        help="operating-point rule (default: the run's evaluation.threshold_rule)")
    parser.add_argument("--target", type=float, default=None,
                        help="target sensitivity/specificity, or the fixed threshold")
    parser.add_argument("--bootstrap", type=int, default=None,
                        help="bootstrap replicates (default: the run's, else 1000)")
    parser.add_argument("--batch-size", type=int, default=64, help="default: 64")
    parser.add_argument("--no-report", action="store_true", help="skip report.html")
    parser.set_defaults(handler=_run_evaluate)


def _run_evaluate(args):
    written = evaluate_run(args.run_dir, data=args.data, split=args.split, val_split=args.val_split,
                           tta=args.tta, n_bootstrap=args.bootstrap,
                           threshold_rule=args.threshold_rule, threshold_target=args.target,
                           batch_size=args.batch_size, report=not args.no_report)
    result = written.pop("evaluation")
    headline = "roc_auc" if result["task"] == "binary" else "macro_roc_auc"
    entry = result["metrics"][headline]
    low = "" if entry["ci_low"] is None else f" (95% CI {entry['ci_low']:.3f}-{entry['ci_high']:.3f})"
    print(f"{result['split']}: {result['num_samples']} cases, {headline} {entry['value']:.3f}{low}")
    for name, path in written.items():
        print(f"  {name}: {path}")
    return 0
