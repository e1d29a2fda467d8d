"""`Trainer`: a recipe's stages under a strategy into a run directory, resumably."""

import dataclasses
import datetime
import logging
import os
import time

import keras
import tensorflow as tf

from kmedimg import distribute
from kmedimg import recipes as recipes_lib
from kmedimg.config import RecipeConfig
from kmedimg.core.run_directory import RunDirectory
from kmedimg.training.build import build_model, get_strategy, platform_settings
from kmedimg.training.callbacks import (
    BestCheckpoint, HistoryWriter, ResumableBackup, ResumableEarlyStopping,
    ResumableReduceLROnPlateau,
)
from kmedimg.training.datasets import (
    input_shape, num_outputs, read_training_manifest, split_dataset, steps_per_epoch,
    train_dataset,
)
from kmedimg.training.feature_cache import compute_features, feature_cache_plan, feature_dataset
from kmedimg.training.lr_finder import resolve_learning_rates
from kmedimg.training.model_state import backup_epoch, load_model_state, save_model_state
from kmedimg.training.resume_state import ResumeState, best_epoch
from kmedimg.training.run_result import RunResult
from kmedimg.training.stage_loop import prepare_stage
from kmedimg.training.stages import class_weights

logger = logging.getLogger("kmedimg.training")

# Configuration keys that may differ when a run directory is resumed.
_RESUMABLE_DIFFERENCES = {("training", "verbose")}


class Trainer:
    """Runs a recipe's stages under a distribution strategy into a run directory.

    `fit` reads the dataset's manifest, builds the model inside the strategy's scope
    (`kmedimg.distribute`), runs the recipe's stages (each stage sets which blocks
    train, recompiles and fits) and writes the run directory (`RunDirectory`):
    `config.yaml` (with `data.path` absolute), `history.csv`, TensorBoard logs, the best
    checkpoint, `model.keras` and `metrics.json` with the training summary.

    A run is resumable: `state.json` (`ResumeState`) records the completed stages,
    Keras `BackupAndRestore` the running stage's last epoch, and the callbacks of
    `kmedimg.training.callbacks` the rest (random states, history, counters, best value).
    Fitting again with the same `training.run_dir` skips completed stages, restarts the
    current one after its last finished epoch and ends with the same weights as an
    uninterrupted run.

    Args:
        config: a `kmedimg.config.RecipeConfig`. `training.run_dir` `None` makes
            `runs/<recipe>-<UTC time>`.
        progress: print stage headers and Keras progress bars. Defaults to `True`.

    Example:

    ```python
    trainer = Trainer(load_config("recipes/quickstart.yaml", ["data.path=/tmp/phantoms"]))
    result = trainer.fit()
    result.metrics["best"]["value"], trainer.model
    ```
    """

    def __init__(self, config, progress=True):
        if not isinstance(config, RecipeConfig):
            raise ValueError(
                "`config` must be a kmedimg.config.RecipeConfig (use load_config(path)). "
                f"Received: config={type(config).__name__}"
            )
        config = _with_run_dir(config)
        self.directory = RunDirectory(config.training.run_dir)
        self.config = _with_absolute_data_path(config, self.directory)
        self.progress = progress
        self.say = print if progress else logger.info
        self.config, self.lr_notes = resolve_learning_rates(self.config, self._stored_recipe())
        for note in self.lr_notes:
            self.say(f"[kmedimg] {note}")
        self.recipe = recipes_lib.get_recipe(self.config.recipe.name, **self.config.recipe.options)
        self.manifest = read_training_manifest(self.config)
        self.mode = _monitor_mode(self.config.training)
        self.strategy = self.settings = self.model = self.state = None
        self.notes = []

    def fit(self):
        """Trains every stage not completed yet and writes the run directory.

        Returns:
            A `RunResult` whose `metrics` is the training summary written to
            `metrics.json`.
        """
        started = time.time()
        self._open_run_directory()
        determinism_note = self._seed()
        self._build(determinism_note)
        self.val_dataset = split_dataset(self.config, self.manifest, self.config.data.val_split)
        if self.state.last_completed is not None:
            # Resuming: continue from where the last completed stage ended.
            load_model_state(self.model, self._stage_end_path(self.state.last_completed))
        for index, stage in enumerate(self.recipe.stages):
            if not self.state.is_completed(stage.name):
                self._train_stage(index, stage)
        return self._finish(started)

    # -- set-up ----------------------------------------------------------------------

    def _stored_recipe(self):
        """The `recipe` section of this run directory's earlier run (a found lr stays)."""
        if not self.directory.exists(RunDirectory.CONFIG):
            return None
        return self.directory.read_config().get("recipe") or None

    def _open_run_directory(self):
        """Strategy and platform checks, then the run directory and its resume state."""
        self.strategy = get_strategy(self.config)
        distribute.check_paths_for_tpu(
            self.strategy, data=self.config.data.path, run_dir=self.directory.path)
        self.settings = platform_settings(self.config, self.strategy)
        self.directory.makedirs(RunDirectory.CHECKPOINTS)
        self._check_resumable()
        self.directory.write_text(RunDirectory.CONFIG, self.config.to_yaml())
        self.state = ResumeState.load(self.directory)
        self.state.save(self.directory)

    def _check_resumable(self):
        """Refuses to resume a run directory written by a different configuration."""
        if not (self.directory.exists(RunDirectory.CONFIG)
                and self.directory.exists(RunDirectory.STATE)):
            return
        stored = self.directory.read_config()
        for section, values in self.config.to_dict().items():
            if not isinstance(values, dict):
                continue
            for key, value in values.items():
                old = (stored.get(section) or {}).get(key)
                if (section, key) == ("data", "path") and old is not None:
                    old = self.directory.data_reference(self.directory.resolve_data_path(old))
                if (section, key) not in _RESUMABLE_DIFFERENCES and old != value:
                    raise ValueError(
                        f"{self.directory.path} holds a run with {section}.{key}={old!r}; "
                        f"resuming it with {section}.{key}={value!r} would mix two runs. Use "
                        f"another `training.run_dir` (--out) or delete {self.directory.path}. "
                        f"Received: {section}.{key}={value!r}"
                    )

    def _seed(self):
        """Seeds Keras and (when possible) enables op determinism; returns a note or None."""
        training = self.config.training
        keras.utils.set_random_seed(training.seed)
        if training.deterministic and self.settings.jit_compile:
            # Keras silently compiles without XLA once op determinism is on.
            return (
                "op determinism not enabled: the step compiles with XLA (jit_compile), which "
                "Keras turns off under op determinism; seeds still fix data order and init"
            )
        if training.deterministic:
            tf.config.experimental.enable_op_determinism()
        return None

    def _build(self, determinism_note):
        """Builds the model in the strategy's scope and prints the run's notes."""
        config, manifest = self.config, self.manifest
        self.steps_per_epoch = steps_per_epoch(config, manifest)
        self.class_weights, weight_note = class_weights(
            manifest, config.data.train_split, config.training)
        shape = input_shape(config, manifest)
        with self.strategy.scope():
            self.model = build_model(config, num_outputs(manifest), shape, manifest.task,
                                     recipe=self.recipe,
                                     dtype_policy=self.settings.precision_policy)
        if self.settings.jit_compile or self.settings.platform == "tpu":
            # Before any training: name the layers XLA cannot compile.
            distribute.check_layers_for_xla(self.model)
        self.notes = [weight_note, *self.lr_notes, *self.settings.notes,
                      *self.model.kmedimg_init_notes]
        if determinism_note:
            self.notes.append(determinism_note)
        for note in self.notes:
            self.say(f"[kmedimg] {note}")

    # -- one stage -------------------------------------------------------------------

    def _backup_dir(self, stage_name):
        return self.directory.file(f"{RunDirectory.BACKUP}/{stage_name}")

    def _stage_end_path(self, stage_name):
        return self.directory.file(f"{RunDirectory.BACKUP}/{stage_name}.end.weights.h5")

    def _train_stage(self, index, stage):
        """Compiles, fits (from its backup when there is one) and completes one stage."""
        with self.strategy.scope():
            plan, plan_reason = feature_cache_plan(self.model, stage)
            train_model = plan[1] if plan else self.model
            layout = prepare_stage(self.model, stage, self.config,
                                   steps_per_epoch=self.steps_per_epoch,
                                   task=self.manifest.task, compile_model=train_model)
        backup_dir = self._backup_dir(stage.name)
        resume_epoch = backup_epoch(backup_dir) if self.config.training.backup else 0
        self.state.start_stage(stage.name, resume_epoch)
        self.state.save(self.directory)
        report = _stage_report(stage, layout, plan, plan_reason, resume_epoch)
        self._announce(index, stage, layout, resume_epoch, plan, plan_reason)
        callbacks = self._callbacks(stage, resume_epoch, self.directory.read_history())
        train_input, validation = self._stage_inputs(index, plan, resume_epoch)
        train_model.fit(
            train_input,
            epochs=stage.epochs,
            steps_per_epoch=self.steps_per_epoch,
            validation_data=validation,
            validation_steps=self.config.training.validation_steps,
            callbacks=callbacks,
            shuffle=distribute.FIT_SHUFFLE,
            verbose=self.config.training.verbose if self.progress else 0,
        )
        self._complete_stage(stage, report)

    def _announce(self, index, stage, layout, resume_epoch, plan, plan_reason):
        self.say(
            f"[kmedimg] stage {index + 1}/{len(self.recipe.stages)} {stage.name!r}: "
            f"{layout['frozen_blocks']}/{layout['num_blocks']} backbone blocks frozen, "
            f"{layout['trainable_params']:,} trainable parameters, lr {stage.learning_rate:g} "
            f"({stage.schedule}), {stage.epochs} epochs"
            + (f"; resuming after epoch {resume_epoch}" if resume_epoch else "")
        )
        if stage.cache_features:
            self.say(f"[kmedimg]   feature cache {'on' if plan else 'off'}: {plan_reason}")

    def _callbacks(self, stage, resume_epoch, rows):
        """The stage's callbacks, with the counters and best value of its earlier epochs."""
        training, monitor, mode = self.config.training, self.config.training.monitor, self.mode
        earlier_rows = [row for row in rows
                        if row["stage"] == stage.name and row["epoch"] < resume_epoch]
        kept_rows = [row for row in rows
                     if row["stage"] != stage.name or row["epoch"] < resume_epoch]
        best_so_far = best_epoch(kept_rows, monitor, mode)
        callbacks = []
        if training.backup:
            callbacks.append(ResumableBackup(self._backup_dir(stage.name)))
        callbacks.append(HistoryWriter(self.directory.history_path, stage.name,
                                       self.state.epochs_completed, resume_epoch, rows))
        callbacks.append(BestCheckpoint(self.model, self.directory.best_weights_path, monitor,
                                        mode, best_so_far and best_so_far["value"]))
        if training.early_stopping_patience is not None:
            callbacks.append(ResumableEarlyStopping(
                earlier_rows, monitor=monitor, mode=mode,
                patience=training.early_stopping_patience,
            ))
        if stage.schedule == "plateau":
            callbacks.append(ResumableReduceLROnPlateau(
                earlier_rows, monitor=monitor, mode=mode, factor=0.1, patience=2,
                min_lr=stage.learning_rate * 1e-3,
            ))
        if training.tensorboard:
            callbacks.append(keras.callbacks.TensorBoard(
                self.directory.logs_dir(stage.name), write_graph=False))
        return callbacks

    def _stage_inputs(self, index, plan, resume_epoch):
        """`(training input, validation data)`: records, or cached backbone features."""
        config, manifest = self.config, self.manifest
        skip = resume_epoch * self.steps_per_epoch
        seed = config.training.seed + 1000 * index
        if not plan:
            train_input = train_dataset(config, manifest, self.strategy, seed, skip,
                                        self.class_weights)
            return train_input, self.val_dataset
        feature_model, _ = plan
        self.say("[kmedimg]   computing the backbone features once ...")
        train_x, train_y = compute_features(
            feature_model, split_dataset(config, manifest, config.data.train_split))
        val_x, val_y = compute_features(feature_model, self.val_dataset)
        train_input = feature_dataset(train_x, train_y, config.data.batch_size, seed,
                                      self.class_weights, manifest.task, skip)
        validation = tf.data.Dataset.from_tensor_slices((val_x, val_y)).batch(
            config.data.batch_size)
        return train_input, validation

    def _complete_stage(self, stage, report):
        """Saves the stage's end weights, marks it completed and drops its backup."""
        rows = self.directory.read_history()
        report["epochs_run"] = sum(1 for row in rows if row["stage"] == stage.name)
        save_model_state(self.model, self._stage_end_path(stage.name))
        best = best_epoch(rows, self.config.training.monitor, self.mode)
        self.state.complete_stage(stage.name, report["epochs_run"], report, best=best)
        self.state.save(self.directory)
        self.directory.remove(f"{RunDirectory.BACKUP}/{stage.name}")

    # -- the end ---------------------------------------------------------------------

    def _finish(self, started):
        """Restores the best weights, saves `model.keras` and the training summary."""
        training = self.config.training
        rows = self.directory.read_history()
        best = best_epoch(rows, training.monitor, self.mode)
        if training.restore_best and self.directory.exists(RunDirectory.BEST_WEIGHTS):
            load_model_state(self.model, self.directory.best_weights_path)
        self.model.save(self.directory.model_path)
        metrics = self.summary(best)
        metrics["wall_time_seconds"] = round(time.time() - started, 2)
        self.directory.write_json(RunDirectory.METRICS, metrics)
        return RunResult(run_dir=self.directory.path, history=rows, metrics=metrics,
                         model_path=self.directory.model_path)

    def summary(self, best):
        """The training part of `metrics.json` (no validation/test evaluation)."""
        training = self.config.training
        reports = self.state.stage_reports
        return {
            "recipe": self.recipe.name,
            "backbone": self.config.model.backbone,
            "task": self.manifest.task,
            "class_names": list(self.manifest.class_names),
            "best": best,
            "evaluated_weights": "best" if training.restore_best and best else "last",
            "stages": reports,
            "trainable_params": max((s["trainable_params"] for s in reports), default=0),
            "total_params": int(self.model.count_params()),
            "steps_per_epoch": self.steps_per_epoch,
            "batch_size": self.config.data.batch_size,
            "seed": training.seed,
            "platform": self.settings.platform,
            "notes": self.notes,
        }


def _stage_report(stage, layout, plan, plan_reason, resume_epoch):
    """The stage's entry of `metrics.json["stages"]` (`epochs_run` is added at its end)."""
    return {
        "name": stage.name,
        "epochs": stage.epochs,
        "learning_rate": stage.learning_rate,
        "schedule": stage.schedule,
        "freeze_depth": stage.freeze_depth,
        "frozen_blocks": layout["frozen_blocks"],
        "num_blocks": layout["num_blocks"],
        "trainable_blocks": layout["trainable_blocks"],
        "trainable_params": layout["trainable_params"],
        "train_batchnorm": stage.train_batchnorm,
        "block_lr_decay": stage.block_lr_decay,
        "cached_features": bool(plan),
        "cache_note": plan_reason if stage.cache_features else None,
        "resumed_after_epoch": resume_epoch,
    }


def _monitor_mode(training):
    if training.monitor_mode != "auto":
        return training.monitor_mode
    return "min" if "loss" in training.monitor else "max"


def _with_run_dir(config):
    if config.training.run_dir:
        return config
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_dir = os.path.join("runs", f"{config.recipe.name}-{stamp}")
    return dataclasses.replace(
        config, training=dataclasses.replace(config.training, run_dir=run_dir))


def _with_absolute_data_path(config, directory):
    """`config` with `data.path` stored absolute, so the run is usable from anywhere."""
    path = directory.data_reference(config.data.path)
    if path == config.data.path:
        return config
    return dataclasses.replace(config, data=dataclasses.replace(config.data, path=path))


def run(config, progress=True):
    """Trains `config`'s recipe into its run directory: `Trainer(config, progress).fit()`.

    Writes `metrics.json` with the training summary only; `kmedimg.runs.train` also
    evaluates the validation and test splits with bootstrap intervals.

    Args:
        config: a `kmedimg.config.RecipeConfig`.
        progress: print stage headers and Keras progress bars. Defaults to `True`.

    Returns:
        A `RunResult`.
    """
    return Trainer(config, progress=progress).fit()
