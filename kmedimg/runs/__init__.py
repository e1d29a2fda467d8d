"""kmedimg.runs: the applications on top of the library.

Each is one function that the `kmedimg` command of the same name calls:

- `train_and_evaluate(config)`: train a recipe into a run directory, then evaluate its
  splits with bootstrap intervals (`metrics.json`); `kmedimg train`.
- `evaluate_run`, `predict_run`, `explain_run`, `export_run`: work on a finished run
  (local, gs:// or any tf.io.gfile file system); `kmedimg evaluate|predict|explain|export`.
- `load_model_for_inference`: a run's model and what is known about it.
- `lr_find_run`: the learning-rate finder on a recipe; `kmedimg lr-find`.
- `run_demo`: the offline end-to-end demo; `kmedimg demo`.
"""

from kmedimg.runs.demo import run_demo
from kmedimg.runs.evaluate import evaluate_run
from kmedimg.runs.explain import explain_run
from kmedimg.runs.export import export_run
from kmedimg.runs.inference import describe_dataset, load_model_for_inference
from kmedimg.runs.lr_find import lr_find_run
from kmedimg.runs.predict import predict_run
from kmedimg.runs.tables import format_table, metric_with_interval, summary_rows
from kmedimg.runs.train import evaluate_splits, train_and_evaluate

__all__ = [
    "describe_dataset",
    "evaluate_run",
    "evaluate_splits",
    "explain_run",
    "export_run",
    "format_table",
    "load_model_for_inference",
    "lr_find_run",
    "metric_with_interval",
    "predict_run",
    "run_demo",
    "summary_rows",
    "train_and_evaluate",
]
