"""`run_search`: a recipe file's search from data to the best recipe, for the CLI and scripts."""

import dataclasses
import os
import sys

import yaml

from kmedimg.config import TuneSettings
from kmedimg.recipes import get_recipe
from kmedimg.tuning import distributed
from kmedimg.tuning import results as results_module
from kmedimg.tuning.hypermodel import ClassifierHyperModel
from kmedimg.tuning.table import TrialTable
from kmedimg.tuning.tuners import make_tuner

BEST_RECIPE = "best_recipe.yaml"


@dataclasses.dataclass
class SearchResult:
    """What `run_search` did.

    Attributes:
        project_dir: the tuning project directory.
        role: `"chief"`, `"worker"` or `None` (single process).
        trials_run_here: ids of the trials this process trained.
        best_values: the best trial's searched values (`None` on a worker).
        best_score: its objective value.
        best_trial_id: its id.
        trials_csv: path of the CSV of all trials.
        plot: path of the objective-vs-hyper-parameter plot.
        best_recipe: path of the recipe file with the best values filled in.
    """

    project_dir: str
    role: str = None
    trials_run_here: list = dataclasses.field(default_factory=list)
    best_values: dict = None
    best_score: float = None
    best_trial_id: str = None
    trials_csv: str = None
    plot: str = None
    best_recipe: str = None


def settings_for(config, tuner=None, max_trials=None, max_epochs=None, project_name=None,
                 directory=None):
    """The recipe file's `tune:` section with command-line values put over it."""
    settings = TuneSettings.from_dict(config.tune)
    changes = {
        "tuner": tuner, "max_trials": max_trials, "max_epochs": max_epochs,
        "project_name": project_name, "directory": directory,
    }
    changes = {key: value for key, value in changes.items() if value is not None}
    return dataclasses.replace(settings, **changes) if changes else settings


def run_search(
    config,
    *,
    settings=None,
    recipe_path=None,
    overwrite=False,
    role=None,
    oracle_address="127.0.0.1:8000",
    tuner_id=None,
    stream=None,
):
    """Runs (or resumes, or joins) the hyper-parameter search of a recipe file.

    Args:
        config: The `kmedimg.config.RecipeConfig`.
        settings: `TuneSettings`; `None` takes `config.tune`. Defaults to `None`.
        recipe_path: The recipe file, naming the project when the settings do not.
            Defaults to `None`.
        overwrite: Start the project afresh. Defaults to `False`.
        role: `"chief"`, `"worker"` or `None` for a single process. Defaults to `None`.
        oracle_address: `HOST:PORT` of the chief. Defaults to `"127.0.0.1:8000"`.
        tuner_id: A worker's stable id. Defaults to `None`.
        stream: Where the live table goes. Defaults to `sys.stdout`.

    Returns:
        A `SearchResult`.
    """
    stream = stream or sys.stdout
    settings = settings or TuneSettings.from_dict(config.tune)
    if settings.project_name is None:
        stem = os.path.splitext(os.path.basename(recipe_path))[0] if recipe_path else "tune"
        settings = dataclasses.replace(settings, project_name=stem)
    worker_label = distributed.configure_role(role, oracle_address, tuner_id)

    hypermodel = ClassifierHyperModel(
        config, search_space=settings.search_space, total_epochs=settings.max_epochs,
        objective=settings.objective, isolate_trials=settings.isolate_trials,
    )
    table = TrialTable(settings.objective, settings.direction, stream=stream, worker=worker_label)
    tuner = make_tuner(
        hypermodel, settings, overwrite=overwrite and role != "worker", table=table,
    )
    project_dir = os.path.join(settings.directory, settings.project_name)
    if role == "chief":
        print(f"chief: serving {settings.tuner} search of {project_dir} on {oracle_address}",
              file=stream, flush=True)
    tuner.search()
    result = SearchResult(project_dir=project_dir, role=role,
                          trials_run_here=list(tuner.finished_here))
    if role == "worker":
        print(f"{worker_label}: ran trials {', '.join(result.trials_run_here) or 'none'}",
              file=stream, flush=True)
        return result
    return _finish(tuner, hypermodel, config, settings, result, stream)


def _finish(tuner, hypermodel, config, settings, result, stream):
    oracle = tuner.oracle
    result.trials_csv, result.plot = results_module.export_results(
        oracle, result.project_dir, objective=settings.objective
    )
    best_trials = oracle.get_best_trials(1)
    if not best_trials:
        print("No trial finished with a score.", file=stream)
        return result
    best = best_trials[0]
    result.best_trial_id, result.best_score = best.trial_id, best.score
    result.best_values = hypermodel.values(best.hyperparameters)
    results_module.write_best(
        result.best_values, result.best_score, result.best_trial_id,
        os.path.join(result.project_dir, results_module.BEST_JSON),
    )
    # Trials may run shortened (--max-epochs, Hyperband rungs); the recipe to train is
    # the winner's values at the recipe file's own full length.
    full_epochs = get_recipe(config.recipe.name, **config.recipe.options).total_epochs
    best_config = hypermodel.trial_config(result.best_values, epochs=full_epochs)
    result.best_recipe = os.path.join(result.project_dir, BEST_RECIPE)
    header = (
        f"# Best of the {settings.tuner} search in {result.project_dir}: trial "
        f"{best.trial_id}, {settings.objective} = {best.score:.4f}\n"
        f"# Epochs: the recipe file's full length ({full_epochs} in all)"
        + ("" if hypermodel.total_epochs == full_epochs else
           f"; the search trained each trial for at most {hypermodel.total_epochs}, so "
           "expect a different score")
        + ".\n"
        f"# Train it: kmedimg train {result.best_recipe}\n"
    )
    with open(result.best_recipe, "w") as handle:
        handle.write(header + yaml.safe_dump(best_config.to_dict(), sort_keys=False))
    print(f"\nBest trial {best.trial_id}: {settings.objective} = {best.score:.4f}", file=stream)
    for name, value in result.best_values.items():
        print(f"  {name:>24} = {value}", file=stream)
    plot = result.plot or "(needs matplotlib, a core dependency of kmedimg: reinstall it)"
    print(f"Trials:      {result.trials_csv}\nPlot:        {plot}\n"
          f"Best recipe: {result.best_recipe}", file=stream, flush=True)
    return result
