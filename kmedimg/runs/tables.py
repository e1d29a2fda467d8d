"""Plain-text summary tables of runs (`kmedimg train`, `kmedimg demo`, benchmarks)."""

import math

SUMMARY_METRICS = ("roc_auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity",
                   "f1")
"""The metrics `summary_rows` lists, in order."""


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


def summary_rows(result_metrics):
    """One row per metric of a run's `metrics.json`: `{"metric", "val", "test"}`."""
    rows = []
    for name in SUMMARY_METRICS:
        row = {"metric": name, "val": metric_with_interval(result_metrics.get("val"), name),
               "test": metric_with_interval(result_metrics.get("test"), name)}
        if row["val"] or row["test"]:
            rows.append(row)
    return rows
