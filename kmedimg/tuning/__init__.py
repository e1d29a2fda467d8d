"""Hyper-parameter search with Keras Tuner: learning rate, dropout, freeze depth and more.

Entry points: `ClassifierHyperModel` (a recipe file as a `keras_tuner.HyperModel`),
`make_tuner` (Hyperband, BayesianOptimization, RandomSearch or GridSearch; resumable,
chief/worker capable), `run_search` (what `kmedimg tune` runs). The `tune:` section
itself (`TuneSettings`, `SearchSpace`) is configuration: `kmedimg.config.tune`.
"""

from kmedimg.tuning.distributed import configure_role, serve_oracle
from kmedimg.tuning.hypermodel import ClassifierHyperModel
from kmedimg.tuning.results import export_results
from kmedimg.tuning.search import SearchResult, run_search, settings_for
from kmedimg.tuning.table import TrialTable
from kmedimg.tuning.trial_values import augmentation_for_strength, scale_epochs
from kmedimg.tuning.trials import history_from_rows, train_trial
from kmedimg.tuning.tuners import get_tuner_class, list_tuners, make_tuner, register_tuner

__all__ = [
    "ClassifierHyperModel",
    "SearchResult",
    "TrialTable",
    "augmentation_for_strength",
    "configure_role",
    "export_results",
    "get_tuner_class",
    "history_from_rows",
    "list_tuners",
    "make_tuner",
    "register_tuner",
    "run_search",
    "scale_epochs",
    "serve_oracle",
    "settings_for",
    "train_trial",
]
