"""Clinical metrics with stratified-bootstrap confidence intervals, per task.

Pure numpy. Every metric is computed by one code path from per-sample *weights*
(`kmedimg.evaluation.kernels`): the point estimate uses weight 1 for every sample, a
bootstrap replicate uses how often each sample was drawn. So the confidence intervals
are exactly "the same metric on resampled data", and all replicates are computed at
once as matrix operations.

The operating point is chosen on the validation split with `choose_threshold`
(`kmedimg.evaluation.thresholds`) and then handed to `evaluate` for the test split.
`evaluate` refuses a threshold chosen on the split it is evaluating (by name and by
content), so choosing on test cannot happen by accident.

Example:

```python
from kmedimg.evaluation import choose_threshold, evaluate

threshold = choose_threshold(val_labels, val_probs, rule="sensitivity",
                             target=0.95, split="val")
result = evaluate(test_labels, test_probs, task="binary",
                  threshold=threshold, split="test")
result["metrics"]["specificity"]  # {"value": 0.81, "ci_low": 0.74, "ci_high": 0.87}
```
"""

import warnings

import numpy as np

from kmedimg.evaluation import bootstrap, kernels
from kmedimg.evaluation.labels import check_task, prepare, resolve_class_names
from kmedimg.evaluation.thresholds import check_threshold


def confusion_matrix(true_classes, predicted_classes, num_classes):
    """Counts [num_classes, num_classes]: rows are true classes, columns predictions."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(true_classes), np.asarray(predicted_classes)), 1)
    return matrix


def reliability_curve(outcome, confidence, n_bins=10):
    """Reliability diagram bins (equal width, as sklearn's calibration_curve "uniform").

    Args:
        outcome: 0/1 array [N] (label, or "prediction was correct").
        confidence: predicted probability of that outcome [N].
        n_bins: number of equal-width bins on [0, 1]. Defaults to `10`.

    Returns:
        A list of dicts, one per bin: `lower`, `upper`, `count`, `mean_predicted`,
        `fraction_positive` (the last two None for empty bins).
    """
    outcome = np.asarray(outcome, dtype=np.float64)
    confidence = np.asarray(confidence, dtype=np.float64)
    bins = kernels.bin_ids(confidence, n_bins)
    counts = np.bincount(bins, minlength=n_bins)
    sum_conf = np.bincount(bins, weights=confidence, minlength=n_bins)
    sum_out = np.bincount(bins, weights=outcome, minlength=n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    rows = []
    for index in range(n_bins):
        count = int(counts[index])
        rows.append({
            "lower": float(edges[index]),
            "upper": float(edges[index + 1]),
            "count": count,
            "mean_predicted": float(sum_conf[index] / count) if count else None,
            "fraction_positive": float(sum_out[index] / count) if count else None,
        })
    return rows


def binary_metrics(labels, probs, threshold, *, split, class_names=None, n_bootstrap=1000,
                   confidence=0.95, seed=0, n_bins=10):
    """Binary metrics at an operating point, with bootstrap confidence intervals.

    Args:
        labels: 0/1 labels [N] or [N, 1].
        probs: probability of the positive class [N] or [N, 1].
        threshold: a `Threshold` chosen on another split (or `Threshold.fixed`).
        split: name of the split evaluated (e.g. "test"); recorded in the result.
        class_names: [negative, positive] names. Defaults to `None`.
        n_bootstrap: bootstrap replicates; 0 disables intervals. Defaults to `1000`.
        confidence: interval coverage. Defaults to `0.95`.
        seed: bootstrap seed. Defaults to `0`.
        n_bins: calibration bins. Defaults to `10`.

    Returns:
        JSON-able dict: `task`, `split`, `num_samples`, `class_names`, `class_counts`,
        `threshold`, `metrics` (name -> {value, ci_low, ci_high}), `confusion_matrix`,
        `calibration`, `bootstrap`.
    """
    bootstrap.check_arguments(n_bootstrap, confidence, n_bins)
    labels, probs = prepare(labels, probs, "binary")
    class_names = resolve_class_names(class_names, "binary", 2)
    threshold = check_threshold(threshold, labels, probs, "binary", split, 1)
    decisions = (probs >= threshold.values[0]).astype(np.int64)
    kernel = _task_kernel("binary", labels, probs, threshold, n_bins)
    matrix = confusion_matrix(labels, decisions, 2)
    return {
        "task": "binary",
        "split": split,
        "num_samples": int(labels.shape[0]),
        "class_names": class_names,
        "positive_class": class_names[1],
        "class_counts": {name: int(np.sum(labels == index)) for index, name in enumerate(class_names)},
        "threshold": threshold.to_dict(),
        "metrics": bootstrap.intervals(kernel, labels, "binary", n_bootstrap, confidence, seed),
        "confusion_matrix": {"labels": class_names, "matrix": matrix.tolist(),
                             "rows": "true", "columns": "predicted"},
        "calibration": {"kind": "positive class", "n_bins": int(n_bins),
                        "bins": reliability_curve(labels, probs, n_bins)},
        "bootstrap": bootstrap.describe(n_bootstrap, confidence, seed, "binary"),
    }


_PER_CLASS = ("roc_auc", "pr_auc", "sensitivity", "specificity", "ppv", "npv", "f1")


def multiclass_metrics(labels, probs, threshold=None, *, split, class_names=None,
                       n_bootstrap=1000, confidence=0.95, seed=0, n_bins=10):
    """Multiclass metrics (decision = argmax), per class one-vs-rest and macro, with CIs.

    Args:
        labels: class indices [N] or one-hot [N, K].
        probs: softmax probabilities [N, K].
        threshold: `None` or `Threshold.argmax()`/`choose_threshold(..., task="multiclass")`.
            Defaults to `None`.
        split: name of the split evaluated.
        class_names: K names. Defaults to `None`.
        n_bootstrap: bootstrap replicates; 0 disables intervals. Defaults to `1000`.
        confidence: interval coverage. Defaults to `0.95`.
        seed: bootstrap seed. Defaults to `0`.
        n_bins: calibration bins (top-label confidence). Defaults to `10`.

    Returns:
        JSON-able dict as `binary_metrics`, plus `per_class` (name -> metric -> interval);
        macro averages are in `metrics` as `macro_<name>`.
    """
    bootstrap.check_arguments(n_bootstrap, confidence, n_bins)
    labels, probs = prepare(labels, probs, "multiclass")
    num_classes = probs.shape[1]
    class_names = resolve_class_names(class_names, "multiclass", num_classes)
    threshold = check_threshold(threshold, labels, probs, "multiclass", split, num_classes)
    predicted = probs.argmax(axis=1)
    correct = (predicted == labels).astype(np.float64)
    top_confidence = probs.max(axis=1)

    kernel = _task_kernel("multiclass", labels, probs, threshold, n_bins)
    intervals = bootstrap.intervals(kernel, labels, "multiclass", n_bootstrap, confidence, seed)
    return _assemble_multi("multiclass", split, labels.shape[0], class_names,
                           np.bincount(labels, minlength=num_classes), threshold, intervals,
                           {"labels": class_names,
                            "matrix": confusion_matrix(labels, predicted, num_classes).tolist(),
                            "rows": "true", "columns": "predicted"},
                           {"kind": "top-label confidence", "n_bins": int(n_bins),
                            "bins": reliability_curve(correct, top_confidence, n_bins)},
                           bootstrap.describe(n_bootstrap, confidence, seed, "multiclass"))


def multilabel_metrics(labels, probs, threshold, *, split, class_names=None, n_bootstrap=1000,
                       confidence=0.95, seed=0, n_bins=10):
    """Multilabel metrics, each label at its own threshold, per label and macro, with CIs.

    Args:
        labels: multi-hot [N, K].
        probs: sigmoid probabilities [N, K].
        threshold: a `Threshold` with K values chosen on another split.
        split: name of the split evaluated.
        class_names: K names. Defaults to `None`.
        n_bootstrap: bootstrap replicates; 0 disables intervals. Defaults to `1000`.
        confidence: interval coverage. Defaults to `0.95`.
        seed: bootstrap seed. Defaults to `0`.
        n_bins: calibration bins (all labels pooled). Defaults to `10`.

    Returns:
        JSON-able dict as `multiclass_metrics`; `metrics` also holds `subset_accuracy`
        (every label right) and `accuracy` (mean over labels, 1 - Hamming loss); the
        confusion matrix is one 2x2 matrix per label.
    """
    bootstrap.check_arguments(n_bootstrap, confidence, n_bins)
    labels, probs = prepare(labels, probs, "multilabel")
    num_classes = probs.shape[1]
    class_names = resolve_class_names(class_names, "multilabel", num_classes)
    threshold = check_threshold(threshold, labels, probs, "multilabel", split, num_classes)
    decisions = (probs >= np.asarray(threshold.values)[np.newaxis, :]).astype(np.int64)
    kernel = _task_kernel("multilabel", labels, probs, threshold, n_bins)
    flat_probs, flat_labels = probs.ravel(), labels.ravel().astype(np.float64)
    intervals = bootstrap.intervals(kernel, labels, "multilabel", n_bootstrap, confidence, seed)
    matrices = {
        name: {"labels": ["absent", "present"],
               "matrix": confusion_matrix(labels[:, k], decisions[:, k], 2).tolist(),
               "rows": "true", "columns": "predicted"}
        for k, name in enumerate(class_names)
    }
    return _assemble_multi("multilabel", split, labels.shape[0], class_names, labels.sum(axis=0),
                           threshold, intervals, matrices,
                           {"kind": "all labels pooled", "n_bins": int(n_bins),
                            "bins": reliability_curve(flat_labels, flat_probs, n_bins)},
                           bootstrap.describe(n_bootstrap, confidence, seed, "multilabel"))


def _task_kernel(task, labels, probs, threshold, n_bins):
    """The function weights [B, N] -> {metric: [B]} for `task` at `threshold`.

    Per-class metrics of multiclass/multilabel tasks are keyed "<index>/<name>".
    """
    if task == "binary":
        decisions = (probs >= threshold.values[0]).astype(np.int64)
        return lambda weights: kernels.binary_kernel(labels, probs, decisions, weights, n_bins)
    num_classes = probs.shape[1]
    if task == "multiclass":
        predicted = probs.argmax(axis=1)
        correct = (predicted == labels).astype(np.float64)
        top_confidence = probs.max(axis=1)
        one_hot = np.eye(num_classes, dtype=np.int64)[labels]
        predicted_one_hot = np.eye(num_classes, dtype=np.int64)[predicted]

        def multiclass_kernel(weights):
            out = {
                "accuracy": kernels.safe_divide(weights @ correct, weights.sum(axis=1)),
                "ece": kernels.weighted_ece(top_confidence, correct, weights, n_bins),
            }
            per_class = [
                kernels.binary_kernel(one_hot[:, k], probs[:, k], predicted_one_hot[:, k], weights, n_bins)
                for k in range(num_classes)
            ]
            for name in _PER_CLASS:
                stacked = np.stack([stats[name] for stats in per_class])
                out[f"macro_{name}"] = stacked.mean(axis=0)
                for k in range(num_classes):
                    out[f"{k}/{name}"] = stacked[k]
            out["balanced_accuracy"] = out["macro_sensitivity"]
            return out

        return multiclass_kernel
    decisions = (probs >= np.asarray(threshold.values)[np.newaxis, :]).astype(np.int64)
    subset_correct = np.all(decisions == labels, axis=1).astype(np.float64)
    flat_probs, flat_labels = probs.ravel(), labels.ravel().astype(np.float64)

    def multilabel_kernel(weights):
        per_class = [
            kernels.binary_kernel(labels[:, k], probs[:, k], decisions[:, k], weights, n_bins)
            for k in range(num_classes)
        ]
        out = {
            "subset_accuracy": kernels.safe_divide(weights @ subset_correct, weights.sum(axis=1)),
            "ece": kernels.weighted_ece(flat_probs, flat_labels, np.repeat(weights, num_classes, axis=1),
                                 n_bins),
        }
        for name in _PER_CLASS + ("accuracy", "balanced_accuracy"):
            stacked = np.stack([stats[name] for stats in per_class])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                # A label without positives in a replicate has no AUC; average the others.
                mean = np.nanmean(stacked, axis=0) if name in ("roc_auc", "pr_auc") else (
                    stacked.mean(axis=0))
            out[name if name in ("accuracy", "balanced_accuracy") else f"macro_{name}"] = mean
            for k in range(num_classes):
                out[f"{k}/{name}"] = stacked[k]
        return out

    return multilabel_kernel


def paired_difference(labels, probs_a, probs_b, *, task, threshold=None, split="test",
                      n_bootstrap=1000, confidence=0.95, seed=0, n_bins=10):
    """Metric(probs_a) - metric(probs_b) on the same samples, with paired bootstrap CIs.

    Both prediction sets are evaluated on the same resampled cases in every replicate,
    so the interval reflects the difference, not the two separate uncertainties
    (e.g. the effect of test-time augmentation, or of one model over another).

    Args:
        labels: labels (see `prepare`).
        probs_a: first predictions.
        probs_b: second predictions (the reference).
        task: "binary", "multiclass" or "multilabel".
        threshold: the operating point, applied to both. Defaults to `None`.
        split: name of the evaluated split. Defaults to `"test"`.
        n_bootstrap: replicates. Defaults to `1000`.
        confidence: interval level. Defaults to `0.95`.
        seed: bootstrap seed. Defaults to `0`.
        n_bins: calibration bins. Defaults to `10`.

    Returns:
        dict with `difference` (metric -> {value, ci_low, ci_high}, a minus b; per-class
        entries dropped) and `bootstrap`.
    """
    check_task(task)
    bootstrap.check_arguments(n_bootstrap, confidence, n_bins)
    labels_a, probs_a = prepare(labels, probs_a, task)
    labels_b, probs_b = prepare(labels, probs_b, task)
    num_outputs = 1 if task == "binary" else probs_a.shape[1]
    threshold = check_threshold(threshold, labels_a, probs_a, task, split, num_outputs)
    kernel_a = _task_kernel(task, labels_a, probs_a, threshold, n_bins)
    kernel_b = _task_kernel(task, labels_b, probs_b, threshold, n_bins)

    def kernel(weights):
        first, second = kernel_a(weights), kernel_b(weights)
        return {name: first[name] - second[name] for name in first if "/" not in name}

    return {
        "difference": bootstrap.intervals(kernel, labels_a, task, n_bootstrap, confidence, seed),
        "bootstrap": bootstrap.describe(n_bootstrap, confidence, seed, task),
    }


def _assemble_multi(task, split, num_samples, class_names, counts, threshold, intervals,
                    matrix, calibration, bootstrap):
    per_class = {name: {} for name in class_names}
    overall = {}
    for key, interval in intervals.items():
        if "/" in key:
            index, name = key.split("/", 1)
            per_class[class_names[int(index)]][name] = interval
        else:
            overall[key] = interval
    return {
        "task": task,
        "split": split,
        "num_samples": int(num_samples),
        "class_names": class_names,
        "class_counts": {name: int(count) for name, count in zip(class_names, counts)},
        "threshold": threshold.to_dict(),
        "metrics": overall,
        "per_class": per_class,
        "confusion_matrix": matrix,
        "calibration": calibration,
        "bootstrap": bootstrap,
    }


def evaluate(labels, probs, *, task, threshold=None, split="test", class_names=None,
             n_bootstrap=1000, confidence=0.95, seed=0, n_bins=10):
    """Metrics for `task` at `threshold` with bootstrap intervals (dispatches by task).

    Args:
        labels: labels of the evaluated split (see `prepare`).
        probs: model probabilities on that split.
        task: "binary", "multiclass" or "multilabel".
        threshold: a `Threshold` chosen on another split; required for binary and
            multilabel. Defaults to `None`.
        split: name of the evaluated split. Defaults to `"test"`.
        class_names: class names. Defaults to `None`.
        n_bootstrap: bootstrap replicates; 0 disables intervals. Defaults to `1000`.
        confidence: interval coverage. Defaults to `0.95`.
        seed: bootstrap seed. Defaults to `0`.
        n_bins: calibration bins. Defaults to `10`.

    Returns:
        A JSON-able dict (see `binary_metrics`).
    """
    check_task(task)
    function = {"binary": binary_metrics, "multiclass": multiclass_metrics,
                "multilabel": multilabel_metrics}[task]
    return function(labels, probs, threshold, split=split, class_names=class_names,
                    n_bootstrap=n_bootstrap, confidence=confidence, seed=seed, n_bins=n_bins)
