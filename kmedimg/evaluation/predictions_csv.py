"""Predictions as CSV: one row per input with every class probability and the decision.

The decision uses the operating point chosen on validation (`threshold.json` of an
evaluated run), else 0.5 for sigmoid outputs and the argmax for softmax outputs.
"""

import csv
import io

import numpy as np

from kmedimg.core.run_directory import write_text


def class_columns(task, class_names, num_outputs):
    """Names of the probability columns: binary -> [positive class], else all classes."""
    if class_names is None:
        class_names = (["negative", "positive"] if task == "binary"
                       else [f"class_{index}" for index in range(num_outputs)])
    return [class_names[1]] if task == "binary" else list(class_names)


def decisions(probs, task, threshold):
    """Predicted class name(s) per row, given a threshold dict (or None: 0.5 / argmax)."""
    probs = np.asarray(probs)
    if task == "multiclass":
        return probs.argmax(axis=1), "argmax"
    values = (threshold or {}).get("values") or [0.5]
    rule = f"{(threshold or {}).get('rule', 'fixed')} on {(threshold or {}).get('chosen_on', 'fixed')}"
    values = np.asarray(values if len(values) == probs.shape[1] else values[:1] * probs.shape[1])
    return probs >= values[np.newaxis, :], rule


def predictions_csv(ids, probs, task, class_names, threshold=None, labels=None,
                    id_column="input"):
    """The CSV text with one row per input: id, [true label], probability per class, decision.

    Args:
        ids: input identifiers (paths or record ids).
        probs: model outputs [N, 1] or [N, K].
        task: the task.
        class_names: class names (None: generic names).
        threshold: threshold dict (from `kmedimg evaluate`) for the decision column.
            Defaults to `None` (0.5 for sigmoid outputs, argmax for softmax).
        labels: pipeline labels [N, 1] / [N, K] to add a `true` column. Defaults to `None`.
        id_column: name of the first column. Defaults to `"input"`.
    """
    probs = np.asarray(probs, dtype=np.float64).reshape(len(ids), -1)
    columns = class_columns(task, class_names, probs.shape[1])
    names = class_names or (["negative", "positive"] if task == "binary" else columns)
    decided, rule = decisions(probs, task, threshold)
    header = [id_column] + (["true"] if labels is not None else []) + [
        f"p_{name}" for name in columns] + ["predicted", "decision_rule"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in range(len(ids)):
        cells = [ids[row]]
        if labels is not None:
            cells.append(_label_text(labels[row], task, names))
        cells.extend(f"{value:.9g}" for value in probs[row])
        if task == "multiclass":
            cells.append(names[int(decided[row])])
        elif task == "binary":
            cells.append(names[1] if decided[row, 0] else names[0])
        else:
            cells.append("|".join(n for n, on in zip(names, decided[row]) if on))
        cells.append(rule)
        writer.writerow(cells)
    return buffer.getvalue()


def write_predictions_csv(path, ids, probs, task, class_names, threshold=None, labels=None,
                          id_column="input"):
    """Writes `predictions_csv(...)` to `path` (local, gs:// or ram://) and returns the path."""
    write_text(path, predictions_csv(ids, probs, task, class_names, threshold, labels, id_column))
    return path


def _label_text(label_row, task, names):
    label_row = np.asarray(label_row).ravel()
    if task == "binary":
        return names[int(label_row[0] > 0.5)]
    if task == "multiclass":
        return names[int(np.argmax(label_row))]
    return "|".join(name for name, on in zip(names, label_row) if on > 0.5)
