"""Operating points: a `Threshold` is chosen on validation and applied unchanged to test.

`choose_threshold` picks the probability threshold on the validation split (Youden,
target sensitivity or specificity, F1); the metric functions refuse a threshold
chosen on the split they evaluate, by name and by content (a fingerprint of the
labels and probabilities it was chosen on).

Example:

```python
threshold = choose_threshold(val_labels, val_probs, rule="sensitivity", target=0.95)
result = evaluate(test_labels, test_probs, task="binary", threshold=threshold)
```
"""

import dataclasses

import numpy as np

from kmedimg.evaluation import kernels
from kmedimg.evaluation.labels import check_task, fingerprint, prepare

THRESHOLD_RULES = ("youden", "sensitivity", "specificity", "f1", "fixed", "argmax")
CHOSEN_RULES = ("youden", "sensitivity", "specificity", "f1")


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


def _choose_one(labels, scores, rule, target, where):
    if labels.min() == labels.max():
        raise ValueError(
            f"{where}: choosing a threshold needs both positive and negative samples. "
            f"Received: only label {labels[0]} in {labels.shape[0]} samples"
        )
    thresholds, sensitivity, specificity, f1 = kernels.operating_points(labels, scores)
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
    check_task(task)
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
            fingerprint=fingerprint(labels, probs),
        )
    if rule not in CHOSEN_RULES:
        raise ValueError(
            f"`rule` must be one of {CHOSEN_RULES} (use Threshold.fixed(value) for a fixed "
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
        target=target, achieved=tuple(achieved), fingerprint=fingerprint(labels, probs),
    )


def threshold_from_validation(labels, probs, task, rule="youden", target=None, split="val"):
    """The operating point for `task`: argmax, `Threshold.fixed(target or 0.5)` for rule
    "fixed", else `choose_threshold` on the validation labels and probabilities."""
    if task == "multiclass":
        return Threshold.argmax()
    if rule == "fixed":
        num_outputs = 1 if task == "binary" else np.asarray(probs).shape[-1]
        return Threshold.fixed(0.5 if target is None else target, num_outputs)
    return choose_threshold(labels, probs, rule, task=task, target=target, split=split)


def check_threshold(threshold, labels, probs, task, split, num_outputs):
    """The `Threshold` to apply to `split`, refusing one chosen on the same data.

    Args:
        threshold: a `Threshold`, its dict, or None (multiclass: argmax).
        labels: prepared labels of the evaluated split.
        probs: prepared probabilities of the evaluated split.
        task: the task.
        split: name of the evaluated split.
        num_outputs: model outputs (a fixed single value is repeated for each).

    Raises:
        ValueError: for a missing, mismatched or same-split threshold.
    """
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
    if threshold.fingerprint and threshold.fingerprint == fingerprint(labels, probs):
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
