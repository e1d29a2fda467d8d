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
from kmedimg.training.build import (
    build_model, check_initial_weights, get_strategy, platform_settings,
)
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
from kmedimg.training.model_state import (
    backup_epoch, load_model_state, save_model_file, save_model_state,
)
from kmedimg.training.resume_state import ResumeState, best_epoch, describe_epoch
from kmedimg.training.run_integrity import (
    BEST_RECORD, check_resumable, check_same_dataset, damaged_stage_end, manifest_fingerprint,
    read_best_checkpoint, reconcile_backup, remove_stale_temporaries,
)
from kmedimg.training.run_result import RunResult
from kmedimg.training.stage_loop import prepare_stage, stage_report
from kmedimg.training.stages import class_weights

logger = logging.getLogger("kmedimg.training")


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
    uninterrupted run. A resumed run trusts nothing it cannot check: a damaged backup
    or stage end restarts that stage from the last good state, a lost best checkpoint
    is named and `metrics.json` says which epoch `model.keras` holds
    (`evaluated_weights`, `weights_epoch`), temporary files of an interrupted write are
    removed, and a dataset whose `dataset.json` changed is refused (these warnings are
    printed and kept in `metrics.json["notes"]`). A full device stops the run with one
    `StorageFullError` message; the run directory may be moved before resuming.

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
        # `learning_rate: find` runs the finder here; its notes are printed with the others.
        self.config, self.lr_notes = resolve_learning_rates(self.config, self._stored_recipe())
        self.recipe = recipes_lib.get_recipe(self.config.recipe.name, **self.config.recipe.options)
        self.manifest = read_training_manifest(self.config)
        check_initial_weights(self.config, self.recipe, input_shape(self.config, self.manifest))
        self.mode = _monitor_mode(self.config.training)
        self.strategy = self.settings = self.model = self.state = None
        self.notes = []
        self._reported_lost_best = False

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
        self._drop_damaged_stage_ends()
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
        removed = remove_stale_temporaries(self.directory)
        if removed:
            self._warn(f"removed {len(removed)} temporary file(s) an interrupted write left "
                       f"in {self.directory.path}: {', '.join(removed)}")
        self.directory.makedirs(RunDirectory.CHECKPOINTS)
        check_resumable(self.directory, self.config)
        self.directory.write_text(RunDirectory.CONFIG, _relocatable(self.config).to_yaml())
        resuming = self.directory.exists(RunDirectory.STATE)
        self.state = ResumeState.load(self.directory)
        fingerprint = manifest_fingerprint(self.config.data.path)
        if resuming:
            check_same_dataset(self.directory, self.state.manifest_fingerprint, fingerprint,
                               self.config.data.path)
        self.state.manifest_fingerprint = fingerprint
        self.state.save(self.directory)

    def _warn(self, message):
        """A note the user must see: printed (or logged) and kept in `metrics.json`."""
        self.notes.append(message)
        if self.progress:
            print(f"[kmedimg] warning: {message}")
        logger.warning(message)

    def _drop_damaged_stage_ends(self):
        """Trains a completed stage again when its end weights are damaged."""
        while self.state.last_completed is not None:
            name = self.state.last_completed
            path = self._stage_end_path(name)
            problem = damaged_stage_end(path)
            if not problem:
                return
            names = [stage.name for stage in self.recipe.stages]
            self._warn(f"{path} is {problem}; stage {name!r} is trained again from its "
                       "start (the last good state)")
            self.state.drop_from(name)
            self.state.save(self.directory)
            for later in names[names.index(name):]:
                self.directory.remove(f"{RunDirectory.BACKUP}/{later}")
            self.directory.write_history([row for row in self.directory.read_history()
                                          if row["stage"] in self.state.completed])

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
        notes = [weight_note, *self.lr_notes, *self.settings.notes,
                 *self.model.kmedimg_init_notes]
        if determinism_note:
            notes.append(determinism_note)
        for note in notes:
            self.say(f"[kmedimg] {note}")
        self.notes[:0] = notes

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
        problem = reconcile_backup(backup_dir) if self.config.training.backup else None
        if problem:
            self._warn(f"{problem}; restarting stage {stage.name!r} from its start (the last "
                       "good state) instead of resuming it")
            self.directory.remove(f"{RunDirectory.BACKUP}/{stage.name}")
        resume_epoch = backup_epoch(backup_dir) if self.config.training.backup else 0
        self.state.start_stage(stage.name, resume_epoch)
        self.state.save(self.directory)
        report = stage_report(stage, layout, plan, plan_reason, resume_epoch)
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
        callbacks = [HistoryWriter(self.directory.history_path, stage.name,
                                   self.state.epochs_completed, resume_epoch, rows)]
        callbacks.append(BestCheckpoint(
            self.model, self.directory.best_weights_path, monitor, mode,
            self._best_checkpoint_value(kept_rows), record_path=self.directory.file(BEST_RECORD),
            stage_name=stage.name, epoch_offset=self.state.epochs_completed))
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
        if training.backup:
            # Last: an epoch counts as done once everything above has recorded it (and
            # a plateau step has lowered the rate the backup saves).
            callbacks.append(ResumableBackup(self._backup_dir(stage.name)))
        return callbacks

    def _best_checkpoint_value(self, kept_rows):
        """The value of the best checkpoint on disk; `None` (with a warning) if it is lost."""
        history_best = best_epoch(kept_rows, self.config.training.monitor, self.mode)
        record, problem = read_best_checkpoint(self.directory)
        if record:
            return record["value"]
        if history_best and not self._reported_lost_best:
            self._reported_lost_best = True
            self._warn(
                f"{self.directory.best_weights_path}: {problem}; the best epoch so far "
                f"({describe_epoch(history_best)}) cannot be restored. The best checkpoint "
                "starts again from the epochs still to run")
        return None

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
        rows = self.directory.read_history()
        best = best_epoch(rows, self.config.training.monitor, self.mode)
        weights = self._restore_best_weights(best)
        save_model_file(self.model, self.directory.model_path)
        metrics = self.summary(best)
        metrics.update(weights)
        metrics["wall_time_seconds"] = round(time.time() - started, 2)
        self.directory.write_json(RunDirectory.METRICS, metrics)
        return RunResult(run_dir=self.directory.path, history=rows, metrics=metrics,
                         model_path=self.directory.model_path)

    def _restore_best_weights(self, best):
        """Loads the best checkpoint (if kept) and says which epoch `model.keras` holds.

        Returns:
            `{"evaluated_weights": "best" | "best_saved" | "last", "weights_epoch":
            dict or None}` for `metrics.json`.
        """
        if not self.config.training.restore_best or not best:
            return {"evaluated_weights": "last", "weights_epoch": None}
        record, problem = read_best_checkpoint(self.directory)
        if record:
            load_model_state(self.model, self.directory.best_weights_path)
            record = {key: value for key, value in record.items() if key != "sha256"}
        if record and (record["stage"], record["epoch"]) == (best["stage"], best["epoch"]):
            return {"evaluated_weights": "best", "weights_epoch": record}
        holds = f"the best saved epoch ({describe_epoch(record)})" if record else "the last epoch"
        cause = f" ({self.directory.best_weights_path}: {problem})" if problem else ""
        self._warn(
            f"model.keras holds {holds}, not the best epoch by {best['monitor']} "
            f"({describe_epoch(best)}): that epoch's checkpoint was lost before the run "
            f"resumed{cause}")
        return {"evaluated_weights": "best_saved" if record else "last",
                "weights_epoch": record}

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
            "manifest_fingerprint": self.state.manifest_fingerprint,
            "stages": reports,
            "trainable_params": max((s["trainable_params"] for s in reports), default=0),
            "total_params": int(self.model.count_params()),
            "steps_per_epoch": self.steps_per_epoch,
            "batch_size": self.config.data.batch_size,
            "seed": training.seed,
            "platform": self.settings.platform,
            "notes": self.notes,
        }


def _relocatable(config):
    """`config` as stored in its own run directory: `training.run_dir` is "."."""
    return dataclasses.replace(
        config, training=dataclasses.replace(config.training, run_dir="."))


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
