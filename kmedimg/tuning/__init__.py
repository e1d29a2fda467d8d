"""Hyper-parameter search with Keras Tuner: learning rate, dropout, freeze depth and more.

Entry points: `ClassifierHyperModel` (a recipe file as a `keras_tuner.HyperModel`),
`make_tuner` (Hyperband, BayesianOptimization, RandomSearch or GridSearch; resumable,
chief/worker capable), `run_search` (what `kmedimg tune` runs).
"""

from kmedimg.tuning.distributed import configure_role, serve_oracle
from kmedimg.tuning.hypermodel import ClassifierHyperModel, history_from_rows, scale_epochs
from kmedimg.tuning.results import export_results
from kmedimg.tuning.search import SearchResult, run_search, settings_for
from kmedimg.tuning.search_space import FloatRange, IntRange, SearchSpace, TuneSettings
from kmedimg.tuning.table import TrialTable
from kmedimg.tuning.tuners import get_tuner_class, list_tuners, make_tuner, register_tuner

__all__ = [
    "ClassifierHyperModel",
    "FloatRange",
    "IntRange",
    "SearchResult",
    "SearchSpace",
    "TrialTable",
    "TuneSettings",
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
]
