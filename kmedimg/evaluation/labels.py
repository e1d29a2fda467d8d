"""Checking and normalising labels and probabilities before any metric is computed.

Every metric function in `kmedimg.evaluation` goes through `prepare`, so shapes,
value ranges and the task are validated in one place with one set of messages.
"""

import hashlib

import numpy as np

from kmedimg.core.vocabulary import TASKS


def as_probabilities(probs, name="probs"):
    """`probs` as float64 clipped to [0, 1]; refuses NaN/inf and values outside [0, 1]."""
    probs = np.asarray(probs, dtype=np.float64)
    if not np.all(np.isfinite(probs)):
        raise ValueError(f"`{name}` must be finite. Received: {name} with NaN or inf values.")
    if probs.size and (probs.min() < -1e-6 or probs.max() > 1 + 1e-6):
        raise ValueError(
            f"`{name}` must be probabilities in [0, 1] (model outputs after sigmoid or "
            f"softmax). Received: {name} in [{probs.min():.4g}, {probs.max():.4g}]"
        )
    return np.clip(probs, 0.0, 1.0)


def check_task(task):
    """Raises a ValueError listing `TASKS` unless `task` is one of them."""
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
    check_task(task)
    labels = np.asarray(labels)
    probs = as_probabilities(probs)
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
        labels = _multiclass_indices(labels, probs)
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


def _multiclass_indices(labels, probs):
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
    return labels


def fingerprint(labels, probs):
    """A short hash of labels and (rounded) probabilities: "was it chosen on this data?"."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(np.round(probs, 6), dtype=np.float64).tobytes())
    return digest.hexdigest()[:16]


def resolve_class_names(class_names, task, num_classes):
    """The given class names checked against the task, or generic ones when None."""
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
