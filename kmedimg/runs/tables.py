"""Plain-text summary tables of runs (`kmedimg train`, `kmedimg demo`, benchmarks)."""

import math

SUMMARY_METRICS = ("roc_auc", "macro_roc_auc", "pr_auc", "macro_pr_auc", "accuracy",
                   "balanced_accuracy", "sensitivity", "specificity", "f1", "macro_f1")
"""The metrics `summary_rows` lists, in order (each only when the run has it)."""

THRESHOLD_FREE = ("roc_auc", "macro_roc_auc", "pr_auc", "macro_pr_auc")
"""Metrics that do not depend on the operating point."""


def format_table(rows, columns):
    """A plain-text table of dict rows.

    Args:
        rows: dicts; a missing or `None` cell prints as `-`, floats with 3 decimals.
        columns: the keys to print, in order (also the header).

    Returns:
        The table as one string (header, rule, one line per row).
    """
    cells = [[str(column) for column in columns]]
    for row in rows:
        cells.append([_cell(row.get(column)) for column in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["  ".join(text.ljust(width) for text, width in zip(line, widths)) for line in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _cell(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if math.isfinite(value) else str(value)
    return str(value)


def metric_with_interval(result, name):
    """`"0.912 [0.871, 0.944]"` for metric `name` of an `evaluate` result (or `None`)."""
    if not result:
        return None
    entry = result["metrics"].get(name)
    if entry is None:
        return None
    if entry.get("ci_low") is None:
        return f"{entry['value']:.3f}"
    return f"{entry['value']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"


def _chosen_on_val(result_metrics):
    point = result_metrics.get("operating_point") or {}
    return point.get("chosen_on") not in (None, "fixed")


def summary_rows(result_metrics):
    """One row per metric of a run's `metrics.json`: `{"metric", "val", "test"}`.

    When the operating point was chosen on val, val's threshold-dependent cells are
    `None` (printed `-`): a threshold is never scored on the data that chose it, and
    val scored at some other threshold would not be the operating point test uses.
    """
    rows = []
    hide_val = _chosen_on_val(result_metrics)
    for name in SUMMARY_METRICS:
        val = metric_with_interval(result_metrics.get("val"), name)
        if hide_val and name not in THRESHOLD_FREE:
            val = None
        row = {"metric": name, "val": val,
               "test": metric_with_interval(result_metrics.get("test"), name)}
        if row["val"] or row["test"]:
            rows.append(row)
    return rows


def operating_point_line(result_metrics):
    """One sentence saying where the table's decisions come from, or `None`."""
    point = result_metrics.get("operating_point")
    if not point:
        return None
    if point["rule"] == "argmax":
        return "decisions: the most probable class (argmax)"
    values = ", ".join(f"{value:.3f}" for value in point["values"])
    if point["rule"] == "fixed":
        return f"operating point: fixed threshold {values} (evaluation.threshold_rule: fixed)"
    target = "" if point.get("target") is None else f" {point['target']}"
    where = "applied to test" if result_metrics.get("test") else "no test split to apply it to"
    return (f"operating point: threshold {values} ({point['rule']}{target}, chosen on "
            f"{point['chosen_on']}, {point['num_samples']} cases); {where}. val shows only "
            "threshold-free metrics: a threshold is not scored on the data that chose it.")
