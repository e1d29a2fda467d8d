"""The tuner registry and factory: Keras Tuner's four search strategies for kmedimg recipes.

Each registered tuner is Keras Tuner's own class plus `TrialHooks`, which runs a trial
as a `kmedimg.training.run` and adds what a long search on a small machine needs: one
table row per finished trial, models released between trials, and workers that wait
politely while a Hyperband round finishes elsewhere. The search itself (oracles,
resume, chief/worker gRPC) is Keras Tuner's.
"""

import gc
import os
import time

import keras
import keras_tuner

from kmedimg.config import TuneSettings
from kmedimg.core.registry import Registry
from kmedimg.tuning import distributed
from kmedimg.tuning import project as project_module

TUNERS = Registry("tuner")


def register_tuner(name):
    """Registers a tuner class under `name`; a duplicate name raises `ValueError`.

    The `tune.tuner` key of a recipe file accepts `kmedimg.config.TUNER_NAMES`, the
    four registered here.
    """

    def decorator(cls):
        TUNERS.register(name, cls)
        cls.registered_name = name
        return cls

    return decorator


def get_tuner_class(name):
    """Returns the tuner class registered as `name`, listing the names on a miss."""
    return TUNERS.get(name)


def list_tuners():
    """Names of the registered tuners."""
    return TUNERS.names()


class TrialHooks:
    """Mixin for a `keras_tuner.Tuner` over a `ClassifierHyperModel`.

    Each trial is a `kmedimg.training.run` in the trial's directory (`run_trial`);
    a finished trial prints a table row and its model is released; a worker waits
    a moment while a Hyperband round finishes elsewhere; a chief serves the oracle.

    Args:
        table: A `TrialTable` printing one row per finished trial, or `None` for
            silence. Defaults to `None`.
        **kwargs: Passed to the Keras Tuner class.
    """

    idle_wait_seconds = 0.5

    def __init__(self, *args, table=None, **kwargs):
        self.table = table
        super().__init__(*args, **kwargs)
        # Keras Tuner's own display clears the screen and repeats itself; ours is the table.
        if hasattr(self.oracle, "_display"):
            self.oracle._display.verbose = 0
        self.finished_here = []
        self._wrap_create_trial()

    def _wrap_create_trial(self):
        # A Hyperband oracle answers IDLE while a round finishes on other workers and
        # Keras Tuner asks again at once, in a tight loop; wait a moment instead.
        create_trial = self.oracle.create_trial
        wait = self.idle_wait_seconds

        def polite_create_trial(tuner_id):
            trial = create_trial(tuner_id)
            if trial.status == keras_tuner.engine.trial.TrialStatus.IDLE:
                time.sleep(wait)
            return trial

        self.oracle.create_trial = polite_create_trial

    def search(self, *fit_args, **fit_kwargs):
        if fit_args or fit_kwargs:
            raise ValueError(
                "A kmedimg tuner trains every trial on its recipe file's data; `search` "
                f"takes no arguments. Received: {len(fit_args)} positional and keyword "
                f"arguments {sorted(fit_kwargs)}"
            )
        if distributed.current_role() == "chief":
            # The chief only serves the oracle; Keras Tuner's own loop would notice the
            # end of the search up to 20 s late.
            self.save()
            distributed.serve_oracle(self.oracle, table=self.table)
            return
        super().search()

    def _populate_initial_space(self):
        # `ClassifierHyperModel.declare_hyperparameters` declares every conditional
        # branch in one pass; Keras Tuner's default would build (and maybe download
        # weights for) a model per branch to discover them.
        if not hasattr(self.hypermodel, "search_space_config"):
            return super()._populate_initial_space()
        hp = self.oracle.get_space()
        self.hypermodel.declare_hyperparameters(hp)
        self.oracle.update_space(hp)

    def run_trial(self, trial):
        """Trains the trial as a `kmedimg.training.run` in the trial's directory.

        Hyperband's `tuner/epochs` is the trial's budget: the recipe's stages are
        scaled to it and run from the start, because a recipe's stages and schedules
        are defined over its whole length (no warm start from a lower rung). An
        interrupted trial that runs again resumes its run directory.
        """
        epochs = trial.hyperparameters.values.get("tuner/epochs")
        histories = []
        for execution in range(self.executions_per_trial):
            run_dir = os.path.join(self.get_trial_dir(trial.trial_id), f"run{execution}")
            histories.append(self.hypermodel.fit(
                trial.hyperparameters, None, run_dir=run_dir, epochs=epochs,
                execution=execution,
            ))
        return histories

    def load_model(self, trial):
        """The trial's best model (its run directory's `model.keras`)."""
        path = os.path.join(self.get_trial_dir(trial.trial_id), "run0", "model.keras")
        return keras.saving.load_model(path)

    def on_trial_begin(self, trial):
        super().on_trial_begin(trial)
        if self.table is not None:
            self.table.begin(trial, total=self.oracle.max_trials)

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        self.finished_here.append(trial.trial_id)
        if self.table is not None:
            # On a worker the oracle is a gRPC client: ask the chief for the scored trial.
            self.table.end(self.oracle.get_trial(trial.trial_id))
        release_memory()

    def on_search_end(self):
        super().on_search_end()
        release_memory()


def release_memory():
    """Drops Keras' global graph state and collects garbage (between trials)."""
    keras.backend.clear_session()
    gc.collect()


@register_tuner("hyperband")
class HyperbandTuner(TrialHooks, keras_tuner.Hyperband):
    """Keras Tuner's Hyperband with `TrialHooks`."""


@register_tuner("bayesian")
class BayesianTuner(TrialHooks, keras_tuner.BayesianOptimization):
    """Keras Tuner's BayesianOptimization with `TrialHooks`."""


@register_tuner("random")
class RandomTuner(TrialHooks, keras_tuner.RandomSearch):
    """Keras Tuner's RandomSearch with `TrialHooks`."""


@register_tuner("grid")
class GridTuner(TrialHooks, keras_tuner.GridSearch):
    """Keras Tuner's GridSearch with `TrialHooks`."""


def make_tuner(
    hypermodel,
    settings=None,
    *,
    directory=None,
    project_name=None,
    overwrite=False,
    strategy=None,
    table=None,
):
    """Creates (or resumes) a tuner for `hypermodel` as `settings` say.

    Re-running with the same project directory continues the search: finished
    trials are kept, an interrupted one runs again. The project records its
    search (space, tuner, objective, model); a different search in the same
    directory raises `ValueError` unless `overwrite=True`.

    Args:
        hypermodel: A `ClassifierHyperModel` (anything with `declare_hyperparameters`,
            `build`, `fit`, `describe` and `total_epochs`).
        settings: A `TuneSettings`, a `tune:` dict, or `None` for the defaults.
            Defaults to `None`.
        directory: Parent directory of the project. Defaults to `settings.directory`.
        project_name: Project name. Defaults to `settings.project_name` or `"tune"`.
        overwrite: Delete an existing project first. Defaults to `False`.
        strategy: A `tf.distribute.Strategy` every trial is built in; `None` uses
            the default strategy. Defaults to `None`.
        table: A `TrialTable` for live output, or `None`. Defaults to `None`.

    Returns:
        A Keras Tuner `Tuner` (one of the registered classes).

    Example:

    >>> tuner = make_tuner(hypermodel, {"tuner": "random", "max_trials": 3},
    ...                    directory="/tmp/tune", project_name="demo")
    >>> tuner.search(train_ds, validation_data=val_ds)  # doctest: +SKIP
    """
    settings = TuneSettings.from_dict(settings)
    tuner_class = get_tuner_class(settings.tuner)
    directory = str(directory or settings.directory)
    project_name = project_name or settings.project_name or "tune"
    objective = keras_tuner.Objective(settings.objective, direction=settings.direction)
    record = project_module.search_record(hypermodel, settings)
    project_module.claim_project(directory, project_name, record, overwrite=overwrite)

    common = dict(
        hypermodel=hypermodel,
        objective=objective,
        seed=settings.seed,
        directory=directory,
        project_name=project_name,
        overwrite=False,  # claim_project already cleared the directory when asked
        distribution_strategy=strategy,
        table=table,
    )
    if settings.tuner == "hyperband":
        tuner = tuner_class(
            max_epochs=hypermodel.total_epochs,
            factor=settings.factor,
            hyperband_iterations=settings.hyperband_iterations,
            executions_per_trial=settings.executions_per_trial,
            **common,
        )
    else:
        tuner = tuner_class(
            max_trials=settings.max_trials,
            executions_per_trial=settings.executions_per_trial,
            **common,
        )
    return tuner
