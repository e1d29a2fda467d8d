"""The applications: train then evaluate, the demo (merged by the lead with the others)."""

from kmedimg.runs.demo import run_demo
from kmedimg.runs.tables import format_table, metric_with_interval, summary_rows
from kmedimg.runs.train import evaluate_splits, train

__all__ = ["evaluate_splits", "format_table", "metric_with_interval", "run_demo",
           "summary_rows", "train"]
