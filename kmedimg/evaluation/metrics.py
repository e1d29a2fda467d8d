"""Clinical metrics with stratified-bootstrap confidence intervals, operating points, calibration.

Pure numpy. Every metric is computed by one code path from per-sample *weights*: the
point estimate uses weight 1 for every sample, a bootstrap replicate uses how often
each sample was drawn. So the confidence intervals are exactly "the same metric on
resampled data", and all replicates are computed at once as matrix operations.

The operating point (the probability threshold that turns a score into a decision)
is chosen on the validation split with `choose_threshold` and then handed to
`evaluate` for the test split. `evaluate` refuses a threshold chosen on the split it
is evaluating (by name and by content), so choosing on test cannot happen by accident.

Example:

```python
from kmedimg.evaluation import metrics

threshold = metrics.choose_threshold(val_labels, val_probs, rule="sensitivity",
                                     target=0.95, split="val")
result = metrics.evaluate(test_labels, test_probs, task="binary",
                          threshold=threshold, split="test")
result["metrics"]["specificity"]  # {"value": 0.81, "ci_low": 0.74, "ci_high": 0.87}
```
"""

import dataclasses
import hashlib
import math
import warnings

import numpy as np

TASKS = ("binary", "multiclass", "multilabel")
THRESHOLD_RULES = ("youden", "sensitivity", "specificity", "f1", "fixed", "argmax")

# Bootstrap weights are built in chunks of at most this many matrix cells
# (replicates x samples) so memory stays bounded for large test sets.
_CHUNK_CELLS = 2_000_000
# In multilabel stratification, label combinations rarer than this are pooled.
_MIN_STRATUM = 5


# --------------------------------------------------------------------------- inputs


def _as_float_probs(probs, name="probs"):
    probs = np.asarray(probs, dtype=np.float64)
    if not np.all(np.isfinite(probs)):
        raise ValueError(f"`{name}` must be finite. Received: {name} with NaN or inf values.")
    if probs.size and (probs.min() < -1e-6 or probs.max() > 1 + 1e-6):
        raise ValueError(
            f"`{name}` must be probabilities in [0, 1] (model outputs after sigmoid or "
            f"softmax). Received: {name} in [{probs.min():.4g}, {probs.max():.4g}]"
        )
    return np.clip(probs, 0.0, 1.0)


def _check_task(task):
    if task not in TASKS:
        raise ValueError(f"`task` must be one of {TASKS}. Received: task={task!r}")


def prepare(labels, probs, task):
    """Validates and normalises labels/probabilities for `task`.

    Args:
        labels: binary: shape [N] or [N, 1] of 0/1; multiclass: class indices [N] or
            one-hot [N, K]; multilabel: multi-hot [N, K].
        probs: binary: [N] or [N, 1]; multiclass and multilabel: [N, K].
        task: "binary", "multiclass" or "multilabel".

    Returns:
        `(labels, probs)`: binary -> int [N] and float [N]; multiclass -> int class
        indices [N] and float [N, K]; multilabel -> int [N, K] and float [N, K].

    Raises:
        ValueError: on a shape, value or task mismatch.
    """
    _check_task(task)
    labels = np.asarray(labels)
    probs = _as_float_probs(probs)
    if task == "binary":
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if probs.ndim == 2 and probs.shape[1] == 1:
            probs = probs[:, 0]
        if labels.ndim != 1 or probs.ndim != 1:
            raise ValueError(
                "Binary task: `labels` and `probs` must have shape [N] or [N, 1]. "
                f"Received: labels.shape={labels.shape}, probs.shape={probs.shape}"
            )
    elif task == "multiclass":
        if probs.ndim != 2 or probs.shape[1] < 2:
            raise ValueError(
                "Multiclass task: `probs` must have shape [N, K] with K >= 2. "
                f"Received: probs.shape={probs.shape}"
            )
        if labels.ndim == 2:
            if labels.shape != probs.shape:
                raise ValueError(
                    "Multiclass task: one-hot `labels` must match `probs` in shape. "
                    f"Received: labels.shape={labels.shape}, probs.shape={probs.shape}"
                )
            if not np.all(np.isin(labels, (0, 1))) or not np.all(labels.sum(axis=1) == 1):
                raise ValueError(
                    "Multiclass task: 2-D `labels` must be one-hot (exactly one 1 per row). "
                    f"Received: row sums {np.unique(labels.sum(axis=1)).tolist()}"
                )
            labels = labels.argmax(axis=1)
        if labels.ndim != 1:
            raise ValueError(
                "Multiclass task: `labels` must be class indices [N] or one-hot [N, K]. "
                f"Received: labels.shape={labels.shape}"
            )
        if labels.size and (labels.min() < 0 or labels.max() >= probs.shape[1]):
            raise ValueError(
                f"Multiclass task: class indices must be in [0, {probs.shape[1] - 1}]. "
                f"Received: labels in [{labels.min()}, {labels.max()}]"
            )
    else:
        if labels.ndim != 2 or labels.shape != probs.shape:
            raise ValueError(
                "Multilabel task: `labels` and `probs` must both have shape [N, K]. "
                f"Received: labels.shape={labels.shape}, probs.shape={probs.shape}"
            )
    if labels.shape[0] != probs.shape[0]:
        raise ValueError(
            "`labels` and `probs` must have the same number of samples. "
            f"Received: {labels.shape[0]} labels and {probs.shape[0]} probs"
        )
    if labels.shape[0] == 0:
        raise ValueError("`labels` and `probs` are empty. Received: N=0")
    if task != "multiclass" and not np.all(np.isin(labels, (0, 1))):
        raise ValueError(
            f"{task.capitalize()} task: `labels` must be 0/1. "
            f"Received: values {np.unique(labels)[:10].tolist()}"
        )
    return labels.astype(np.int64), probs


def _fingerprint(labels, probs):
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(np.round(probs, 6), dtype=np.float64).tobytes())
    return digest.hexdigest()[:16]


def _class_names(class_names, task, num_classes):
    if class_names is None:
        if task == "binary":
            return ["negative", "positive"]
        return [f"class_{index}" for index in range(num_classes)]
    class_names = [str(name) for name in class_names]
    expected = 2 if task == "binary" else num_classes
    if len(class_names) != expected:
        raise ValueError(
            f"`class_names` must list {expected} names for this {task} task. "
            f"Received: class_names={class_names}"
        )
    return class_names


# ---------------------------------------------------------------- weighted kernels


def _safe_divide(numerator, denominator):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)


def _grouped_by_score(scores, labels, weights):
    """Per distinct score (ascending): weighted positives and negatives, shape [B, U]."""
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    sorted_weights = weights[:, order]
    positive = labels[order].astype(np.float64)
    pos = np.add.reduceat(sorted_weights * positive, starts, axis=1)
    neg = np.add.reduceat(sorted_weights * (1.0 - positive), starts, axis=1)
    return sorted_scores[starts], pos, neg


def _weighted_roc_auc(scores, labels, weights):
    _, pos, neg = _grouped_by_score(scores, labels, weights)
    negatives_below = np.cumsum(neg, axis=1) - neg
    concordant = np.sum(pos * (negatives_below + 0.5 * neg), axis=1)
    return _safe_divide(concordant, pos.sum(axis=1) * neg.sum(axis=1))


def _weighted_average_precision(scores, labels, weights):
    _, pos, neg = _grouped_by_score(scores, labels, weights)
    true_pos = np.cumsum(pos[:, ::-1], axis=1)
    false_pos = np.cumsum(neg[:, ::-1], axis=1)
    total_pos = true_pos[:, -1:]
    predicted = true_pos + false_pos
    precision = np.where(predicted > 0, true_pos / np.where(predicted > 0, predicted, 1), 1.0)
    recall = true_pos / np.where(total_pos > 0, total_pos, 1)
    recall_step = np.diff(recall, axis=1, prepend=0.0)
    ap = np.sum(recall_step * precision, axis=1)
    return np.where(total_pos[:, 0] > 0, ap, np.nan)


def _bin_ids(confidence, n_bins):
    # Same binning as sklearn.calibration.calibration_curve(strategy="uniform").
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.searchsorted(edges[1:-1], confidence)


def _weighted_ece(confidence, outcome, weights, n_bins):
    bins = _bin_ids(confidence, n_bins)
    membership = np.zeros((confidence.shape[0], n_bins))
    membership[np.arange(confidence.shape[0]), bins] = 1.0
    count = weights @ membership
    mean_confidence = (weights * confidence) @ membership
    mean_outcome = (weights * outcome) @ membership
    gap = np.abs(mean_confidence - mean_outcome)
    return _safe_divide(gap.sum(axis=1), count.sum(axis=1))


def _binary_kernel(labels, scores, decisions, weights, n_bins):
    """All binary metrics for each weight row; returns name -> array [B]."""
    labels_f = labels.astype(np.float64)
    decisions_f = decisions.astype(np.float64)
    tp = weights @ (labels_f * decisions_f)
    fp = weights @ ((1 - labels_f) * decisions_f)
    fn = weights @ (labels_f * (1 - decisions_f))
    tn = weights @ ((1 - labels_f) * (1 - decisions_f))
    sensitivity = _safe_divide(tp, tp + fn)
    specificity = _safe_divide(tn, tn + fp)
    return {
        "accuracy": _safe_divide(tp + tn, tp + tn + fp + fn),
        "balanced_accuracy": (sensitivity + specificity) / 2,
        "roc_auc": _weighted_roc_auc(scores, labels, weights),
        "pr_auc": _weighted_average_precision(scores, labels, weights),
        "sensitivity": sensitivity,
        "specificity": specificity,
        "ppv": _safe_divide(tp, tp + fp),
        "npv": _safe_divide(tn, tn + fn),
        "f1": _safe_divide(2 * tp, 2 * tp + fp + fn),
        "brier": _safe_divide(weights @ (scores - labels_f) ** 2, weights.sum(axis=1)),
        "ece": _weighted_ece(scores, labels_f, weights, n_bins),
    }


# ------------------------------------------------------------------------ bootstrap


def stratified_bootstrap_weights(strata, n_bootstrap, seed=0):
    """Yields chunks of bootstrap weights, each of shape [b, N], b summing to n_bootstrap.

    Each replicate draws, with replacement, as many samples from every stratum as the
    stratum holds, so class counts are the same in every replicate. Row `i`, column
    `j` counts how often sample `j` was drawn in replicate `i`.

    Args:
        strata: int array [N], the stratum of each sample.
        n_bootstrap: number of replicates.
        seed: seed of the numpy Generator. Defaults to `0`.
    """
    strata = np.asarray(strata)
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(strata == value) for value in np.unique(strata)]
    chunk = max(1, _CHUNK_CELLS // max(1, strata.shape[0]))
    done = 0
    while done < n_bootstrap:
        size = min(chunk, n_bootstrap - done)
        weights = np.zeros((size, strata.shape[0]))
        for index in members:
            weights[:, index] = rng.multinomial(index.size, np.full(index.size, 1.0 / index.size), size=size)
        done += size
        yield weights


def _strata(labels, task):
    if task != "multilabel":
        return labels
    _, combination = np.unique(labels, axis=0, return_inverse=True)
    combination = combination.ravel()
    counts = np.bincount(combination)
    rare = counts[combination] < _MIN_STRATUM
    return np.where(rare, -1, combination)


def _interval(kernel, labels, task, n_bootstrap, confidence, seed):
    """Point estimates and percentile intervals for every metric `kernel` returns."""
    point = {name: float(value[0]) for name, value in kernel(np.ones((1, labels.shape[0]))).items()}
    result = {}
    if n_bootstrap <= 0:
        return {name: {"value": _json_float(value), "ci_low": None, "ci_high": None} for name, value in point.items()}
    replicates = {name: [] for name in point}
    for weights in stratified_bootstrap_weights(_strata(labels, task), n_bootstrap, seed):
        for name, values in kernel(weights).items():
            replicates[name].append(values)
    tail = (1 - confidence) / 2 * 100
    for name, value in point.items():
        values = np.concatenate(replicates[name])
        values = values[np.isfinite(values)]
        if values.size:
            low, high = np.percentile(values, [tail, 100 - tail])
        else:
            low = high = math.nan
        result[name] = {"value": _json_float(value), "ci_low": _json_float(low), "ci_high": _json_float(high)}
    return result


def _json_float(value):
    value = float(value)
    return None if not math.isfinite(value) else value


# ----------------------------------------------------------------------- thresholds


@dataclasses.dataclass(frozen=True)
class Threshold:
    """An operating point chosen on one split, to be applied to another.

    Attributes:
        rule: how it was chosen: one of `THRESHOLD_RULES`.
        values: one probability threshold per output (binary: one; multilabel: one per
            class; multiclass: empty, the decision is the argmax). A sample is called
            positive when its probability is `>=` the threshold.
        chosen_on: name of the split it was chosen on ("val"), or "fixed".
        num_samples: number of samples it was chosen on.
        target: the target of a "sensitivity"/"specificity" rule, or the fixed value.
        achieved: per output, the sensitivity and specificity on `chosen_on`.
        fingerprint: hash of the labels and probabilities it was chosen on; `evaluate`
            refuses to apply it to the same data.
    """

    rule: str
    values: tuple
    chosen_on: str
    num_samples: int = 0
    target: float = None
    achieved: tuple = ()
    fingerprint: str = ""

    @classmethod
    def fixed(cls, value=0.5, num_outputs=1):
        """A fixed threshold, not chosen on data (e.g. 0.5). Defaults to `0.5`, one output."""
        value = float(value)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"A fixed threshold must be in [0, 1]. Received: value={value}")
        return cls(rule="fixed", values=(value,) * num_outputs, chosen_on="fixed", target=value)

    @classmethod
    def argmax(cls):
        """The multiclass decision: the most probable class."""
        return cls(rule="argmax", values=(), chosen_on="fixed")

    def to_dict(self):
        return {
            "rule": self.rule,
            "values": [float(value) for value in self.values],
            "chosen_on": self.chosen_on,
            "num_samples": int(self.num_samples),
            "target": self.target,
            "achieved": [dict(item) for item in self.achieved],
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_dict(cls, config):
        config = dict(config)
        unknown = sorted(set(config) - {field.name for field in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"Unknown Threshold fields {unknown}. Received: {config}")
        config["values"] = tuple(config.get("values", ()))
        config["achieved"] = tuple(config.get("achieved", ()))
        return cls(**config)


def _candidate_operating_points(labels, scores):
    """Sensitivity/specificity at every distinct score used as threshold (descending)."""
    thresholds, pos, neg = _grouped_by_score(scores, labels, np.ones((1, scores.shape[0])))
    # Descending, preceded by a threshold above every score (nothing called positive).
    thresholds = np.r_[np.nextafter(thresholds[-1], np.inf), thresholds[::-1]]
    tp, fp = np.cumsum(np.r_[0.0, pos[0, ::-1]]), np.cumsum(np.r_[0.0, neg[0, ::-1]])
    total_pos, total_neg = tp[-1], fp[-1]
    sensitivity = tp / total_pos
    specificity = 1 - fp / total_neg
    f1 = 2 * tp / (2 * tp + fp + (total_pos - tp))
    return thresholds, sensitivity, specificity, f1


def _choose_one(labels, scores, rule, target, where):
    if labels.min() == labels.max():
        raise ValueError(
            f"{where}: choosing a threshold needs both positive and negative samples. "
            f"Received: only label {labels[0]} in {labels.shape[0]} samples"
        )
    thresholds, sensitivity, specificity, f1 = _candidate_operating_points(labels, scores)
    if rule == "youden":
        index = int(np.argmax(sensitivity + specificity - 1))
    elif rule == "f1":
        index = int(np.argmax(f1))
    elif rule == "sensitivity":
        # Highest threshold (so best specificity) that still reaches the target.
        index = int(np.flatnonzero(sensitivity >= target - 1e-12)[0])
    else:  # specificity
        index = int(np.flatnonzero(specificity >= target - 1e-12)[-1])
    return float(thresholds[index]), {
        "sensitivity": float(sensitivity[index]),
        "specificity": float(specificity[index]),
    }


def choose_threshold(labels, probs, rule="youden", *, task="binary", target=None, split="val"):
    """Chooses the operating point on a validation split.

    Args:
        labels: validation labels (see `prepare` for shapes).
        probs: validation probabilities.
        rule: "youden" (max sensitivity + specificity - 1), "sensitivity" (highest
            threshold whose sensitivity >= `target`, i.e. best specificity there),
            "specificity" (lowest threshold whose specificity >= `target`), "f1" (max
            F1). Multiclass decisions are the argmax; its only rule is "argmax".
            Defaults to `"youden"`.
        task: "binary", "multiclass" or "multilabel" (one threshold per label).
            Defaults to `"binary"`.
        target: the sensitivity or specificity to reach, in (0, 1]; required by those
            two rules. Defaults to `None`.
        split: name of the split `labels`/`probs` come from. "test" is refused.
            Defaults to `"val"`.

    Returns:
        A `Threshold` to pass to `evaluate` on another split.

    Example:

    ```python
    threshold = choose_threshold(val_y, val_p, rule="sensitivity", target=0.95)
    ```
    """
    _check_task(task)
    if split == "test":
        raise ValueError(
            "An operating point chosen on the test split makes every test metric at that "
            "point optimistic. Choose it on the validation split and apply it to test. "
            f"Received: split={split!r}"
        )
    labels, probs = prepare(labels, probs, task)
    if task == "multiclass":
        if rule not in ("argmax", "youden"):
            raise ValueError(
                "Multiclass decisions are the argmax; the only rule is 'argmax'. "
                f"Received: rule={rule!r}"
            )
        return dataclasses.replace(
            Threshold.argmax(), chosen_on=split, num_samples=int(labels.shape[0]),
            fingerprint=_fingerprint(labels, probs),
        )
    allowed = ("youden", "sensitivity", "specificity", "f1")
    if rule not in allowed:
        raise ValueError(
            f"`rule` must be one of {allowed} (use Threshold.fixed(value) for a fixed "
            f"threshold). Received: rule={rule!r}"
        )
    if rule in ("sensitivity", "specificity"):
        if target is None or not 0.0 < float(target) <= 1.0:
            raise ValueError(
                f"rule={rule!r} needs `target` in (0, 1], e.g. target=0.95. Received: target={target!r}"
            )
        target = float(target)
    elif target is not None:
        raise ValueError(f"rule={rule!r} takes no `target`. Received: target={target!r}")
    columns = [(labels, probs)] if task == "binary" else [
        (labels[:, k], probs[:, k]) for k in range(labels.shape[1])
    ]
    values, achieved = [], []
    for index, (column_labels, column_probs) in enumerate(columns):
        where = f"{split} split" + ("" if task == "binary" else f", label {index}")
        value, point = _choose_one(column_labels, column_probs, rule, target, where)
        values.append(value)
        achieved.append(point)
    return Threshold(
        rule=rule, values=tuple(values), chosen_on=split, num_samples=int(labels.shape[0]),
        target=target, achieved=tuple(achieved), fingerprint=_fingerprint(labels, probs),
    )


def _check_threshold(threshold, labels, probs, task, split, num_outputs):
    if threshold is None:
        if task == "multiclass":
            return Threshold.argmax()
        raise ValueError(
            f"A {task} evaluation needs an operating point: pass "
            "threshold=choose_threshold(val_labels, val_probs, ...) (chosen on validation) "
            "or threshold=Threshold.fixed(0.5). Received: threshold=None"
        )
    if isinstance(threshold, dict):
        threshold = Threshold.from_dict(threshold)
    if not isinstance(threshold, Threshold):
        raise ValueError(
            "`threshold` must be a Threshold (from choose_threshold or Threshold.fixed). "
            f"Received: threshold={threshold!r}"
        )
    if threshold.chosen_on != "fixed" and threshold.chosen_on == split:
        raise ValueError(
            f"The threshold was chosen on the {split!r} split; applying it to the same split "
            "reports optimistic metrics. Choose it on validation and evaluate on test. "
            f"Received: split={split!r}, threshold.chosen_on={threshold.chosen_on!r}"
        )
    if threshold.fingerprint and threshold.fingerprint == _fingerprint(labels, probs):
        raise ValueError(
            "The threshold was chosen on exactly these labels and probabilities (same "
            f"fingerprint), although it claims to come from {threshold.chosen_on!r}. Choose "
            f"it on the validation split. Received: split={split!r}"
        )
    if task == "multiclass":
        if threshold.rule != "argmax":
            raise ValueError(
                f"Multiclass decisions are the argmax. Received: threshold.rule={threshold.rule!r}"
            )
    elif threshold.rule == "fixed" and len(threshold.values) == 1 and num_outputs > 1:
        threshold = dataclasses.replace(threshold, values=threshold.values * num_outputs)
    elif len(threshold.values) != num_outputs:
        raise ValueError(
            f"The {task} task has {num_outputs} output(s) but the threshold has "
            f"{len(threshold.values)} value(s). Received: threshold.values={list(threshold.values)}"
        )
    return threshold


# ------------------------------------------------------------------------- results


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
    bins = _bin_ids(confidence, n_bins)
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


def _bootstrap_info(n_bootstrap, confidence, seed, task):
    return {
        "n_bootstrap": int(n_bootstrap),
        "confidence": float(confidence),
        "seed": int(seed),
        "method": "percentile",
        "stratified_by": "label combination (rare ones pooled)" if task == "multilabel" else "class",
    }


def _check_bootstrap_args(n_bootstrap, confidence, n_bins):
    if int(n_bootstrap) < 0:
        raise ValueError(f"`n_bootstrap` must be >= 0. Received: n_bootstrap={n_bootstrap}")
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"`confidence` must be in (0, 1). Received: confidence={confidence}")
    if int(n_bins) < 1:
        raise ValueError(f"`n_bins` must be >= 1. Received: n_bins={n_bins}")


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
    _check_bootstrap_args(n_bootstrap, confidence, n_bins)
    labels, probs = prepare(labels, probs, "binary")
    class_names = _class_names(class_names, "binary", 2)
    threshold = _check_threshold(threshold, labels, probs, "binary", split, 1)
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
        "metrics": _interval(kernel, labels, "binary", n_bootstrap, confidence, seed),
        "confusion_matrix": {"labels": class_names, "matrix": matrix.tolist(),
                             "rows": "true", "columns": "predicted"},
        "calibration": {"kind": "positive class", "n_bins": int(n_bins),
                        "bins": reliability_curve(labels, probs, n_bins)},
        "bootstrap": _bootstrap_info(n_bootstrap, confidence, seed, "binary"),
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
    _check_bootstrap_args(n_bootstrap, confidence, n_bins)
    labels, probs = prepare(labels, probs, "multiclass")
    num_classes = probs.shape[1]
    class_names = _class_names(class_names, "multiclass", num_classes)
    threshold = _check_threshold(threshold, labels, probs, "multiclass", split, num_classes)
    predicted = probs.argmax(axis=1)
    correct = (predicted == labels).astype(np.float64)
    top_confidence = probs.max(axis=1)

    kernel = _task_kernel("multiclass", labels, probs, threshold, n_bins)
    intervals = _interval(kernel, labels, "multiclass", n_bootstrap, confidence, seed)
    return _assemble_multi("multiclass", split, labels.shape[0], class_names,
                           np.bincount(labels, minlength=num_classes), threshold, intervals,
                           {"labels": class_names,
                            "matrix": confusion_matrix(labels, predicted, num_classes).tolist(),
                            "rows": "true", "columns": "predicted"},
                           {"kind": "top-label confidence", "n_bins": int(n_bins),
                            "bins": reliability_curve(correct, top_confidence, n_bins)},
                           _bootstrap_info(n_bootstrap, confidence, seed, "multiclass"))


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
    _check_bootstrap_args(n_bootstrap, confidence, n_bins)
    labels, probs = prepare(labels, probs, "multilabel")
    num_classes = probs.shape[1]
    class_names = _class_names(class_names, "multilabel", num_classes)
    threshold = _check_threshold(threshold, labels, probs, "multilabel", split, num_classes)
    decisions = (probs >= np.asarray(threshold.values)[np.newaxis, :]).astype(np.int64)
    kernel = _task_kernel("multilabel", labels, probs, threshold, n_bins)
    flat_probs, flat_labels = probs.ravel(), labels.ravel().astype(np.float64)
    intervals = _interval(kernel, labels, "multilabel", n_bootstrap, confidence, seed)
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
                           _bootstrap_info(n_bootstrap, confidence, seed, "multilabel"))


def _task_kernel(task, labels, probs, threshold, n_bins):
    """The function weights [B, N] -> {metric: [B]} for `task` at `threshold`.

    Per-class metrics of multiclass/multilabel tasks are keyed "<index>/<name>".
    """
    if task == "binary":
        decisions = (probs >= threshold.values[0]).astype(np.int64)
        return lambda weights: _binary_kernel(labels, probs, decisions, weights, n_bins)
    num_classes = probs.shape[1]
    if task == "multiclass":
        predicted = probs.argmax(axis=1)
        correct = (predicted == labels).astype(np.float64)
        top_confidence = probs.max(axis=1)
        one_hot = np.eye(num_classes, dtype=np.int64)[labels]
        predicted_one_hot = np.eye(num_classes, dtype=np.int64)[predicted]

        def multiclass_kernel(weights):
            out = {
                "accuracy": _safe_divide(weights @ correct, weights.sum(axis=1)),
                "ece": _weighted_ece(top_confidence, correct, weights, n_bins),
            }
            per_class = [
                _binary_kernel(one_hot[:, k], probs[:, k], predicted_one_hot[:, k], weights, n_bins)
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
            _binary_kernel(labels[:, k], probs[:, k], decisions[:, k], weights, n_bins)
            for k in range(num_classes)
        ]
        out = {
            "subset_accuracy": _safe_divide(weights @ subset_correct, weights.sum(axis=1)),
            "ece": _weighted_ece(flat_probs, flat_labels, np.repeat(weights, num_classes, axis=1),
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
    _check_task(task)
    _check_bootstrap_args(n_bootstrap, confidence, n_bins)
    labels_a, probs_a = prepare(labels, probs_a, task)
    labels_b, probs_b = prepare(labels, probs_b, task)
    num_outputs = 1 if task == "binary" else probs_a.shape[1]
    threshold = _check_threshold(threshold, labels_a, probs_a, task, split, num_outputs)
    kernel_a = _task_kernel(task, labels_a, probs_a, threshold, n_bins)
    kernel_b = _task_kernel(task, labels_b, probs_b, threshold, n_bins)

    def kernel(weights):
        first, second = kernel_a(weights), kernel_b(weights)
        return {name: first[name] - second[name] for name in first if "/" not in name}

    return {
        "difference": _interval(kernel, labels_a, task, n_bootstrap, confidence, seed),
        "bootstrap": _bootstrap_info(n_bootstrap, confidence, seed, task),
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
    _check_task(task)
    function = {"binary": binary_metrics, "multiclass": multiclass_metrics,
                "multilabel": multilabel_metrics}[task]
    return function(labels, probs, threshold, split=split, class_names=class_names,
                    n_bootstrap=n_bootstrap, confidence=confidence, seed=seed, n_bins=n_bins)


# -------------------------------------------------------------------------- curves


def roc_curve(labels, scores):
    """ROC points (ascending FPR) with the threshold of each: `(fpr, tpr, thresholds)`."""
    labels = np.asarray(labels).astype(np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    thresholds, sensitivity, specificity, _ = _candidate_operating_points(labels, scores)
    return 1 - specificity, sensitivity, np.r_[np.inf, thresholds[1:]]


def curve_band(labels, scores, kind="roc", *, n_bootstrap=200, confidence=0.95, seed=0, grid_size=101):
    """A curve on a fixed grid with a pointwise bootstrap band, for plotting.

    Args:
        labels: 0/1 labels [N] (one-vs-rest for one class).
        scores: scores [N].
        kind: "roc" (TPR on an FPR grid) or "pr" (interpolated precision on a recall
            grid). Defaults to `"roc"`.
        n_bootstrap: replicates. Defaults to `200`.
        confidence: band coverage. Defaults to `0.95`.
        seed: bootstrap seed. Defaults to `0`.
        grid_size: grid points on [0, 1]. Defaults to `101`.

    Returns:
        dict with `grid`, `value`, `low`, `high` (lists of floats).
    """
    if kind not in ("roc", "pr"):
        raise ValueError(f"`kind` must be one of ('roc', 'pr'). Received: kind={kind!r}")
    labels = np.asarray(labels).astype(np.int64).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    grid = np.linspace(0.0, 1.0, grid_size)

    def curves(weights):
        _, pos, neg = _grouped_by_score(scores, labels, weights)
        tp = np.cumsum(pos[:, ::-1], axis=1)
        fp = np.cumsum(neg[:, ::-1], axis=1)
        tpr = tp / np.maximum(tp[:, -1:], 1e-12)
        rows = []
        if kind == "roc":
            fpr = fp / np.maximum(fp[:, -1:], 1e-12)
            for row in range(weights.shape[0]):
                rows.append(np.interp(grid, np.r_[0.0, fpr[row]], np.r_[0.0, tpr[row]]))
        else:
            precision = tp / np.maximum(tp + fp, 1e-12)
            # Interpolated precision: the best precision at any recall >= r.
            best = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
            for row in range(weights.shape[0]):
                index = np.searchsorted(tpr[row], grid, side="left")
                index = np.minimum(index, tpr.shape[1] - 1)
                rows.append(best[row, index])
        return np.stack(rows)

    value = curves(np.ones((1, labels.shape[0])))[0]
    replicates = np.concatenate(
        [curves(weights) for weights in stratified_bootstrap_weights(labels, n_bootstrap, seed)]
    ) if n_bootstrap > 0 else value[np.newaxis]
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(replicates, [tail, 100 - tail], axis=0)
    return {"grid": grid.tolist(), "value": value.tolist(), "low": low.tolist(), "high": high.tolist()}
