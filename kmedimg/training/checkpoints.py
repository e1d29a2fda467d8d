"""Run-directory files and what makes a killed run resume exactly.

Keras `BackupAndRestore` keeps weights, optimizer state and the epoch; the rest of a
run's state lives here: random-generator states of dropout/augmentation layers (not
part of `.weights.h5`), `history.csv`, early-stopping and plateau counters (replayed
from the history), and the best value so far.
"""

import csv
import json
import os

import keras
import numpy as np
import tensorflow as tf

STATE_NAME = "state.json"
HISTORY_NAME = "history.csv"
METRICS_NAME = "metrics.json"
MODEL_NAME = "model.keras"
BEST_NAME = os.path.join("checkpoints", "best.weights.h5")

def join_path(*parts):
    return os.path.join(*[str(part) for part in parts])


def write_json(path, data):
    temporary = f"{path}.tmp"
    with tf.io.gfile.GFile(temporary, "w") as handle:
        handle.write(json.dumps(data, indent=2, default=_json_default) + "\n")
    tf.io.gfile.rename(temporary, path, overwrite=True)


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def read_json(path, default=None):
    if not tf.io.gfile.exists(path):
        return default
    with tf.io.gfile.GFile(path, "r") as handle:
        return json.loads(handle.read())


def read_history(path):
    """Rows of a `history.csv` as dicts with numbers parsed."""
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path, "r") as handle:
        rows = list(csv.DictReader(handle))
    parsed = []
    for row in rows:
        item = {}
        for key, value in row.items():
            if key == "stage":
                item[key] = value
            elif value in ("", None):
                item[key] = None
            elif key in ("epoch", "global_epoch"):
                item[key] = int(value)
            else:
                item[key] = float(value)
        parsed.append(item)
    return parsed


def _write_history(path, rows):
    keys = ["stage", "epoch", "global_epoch", "learning_rate"]
    for row in rows:
        keys += [key for key in row if key not in keys]
    temporary = f"{path}.tmp"
    with tf.io.gfile.GFile(temporary, "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: row.get(key, "") for key in keys})
    tf.io.gfile.rename(temporary, path, overwrite=True)


def _random_state_variables(model):
    """Seed-generator states of dropout/augmentation layers (not in `.weights.h5`)."""
    return [v for v in model.variables if "seed_generator_state" in v.path]


def _save_random_states(model, path, epoch):
    data = read_json(path, {"by_epoch": {}})
    states = [keras.ops.convert_to_numpy(v).tolist() for v in _random_state_variables(model)]
    by_epoch = {str(epoch): states}
    # Keep the previous epoch's entry: a kill between this write and the weights
    # write leaves the backup at that epoch.
    previous = data["by_epoch"].get(str(epoch - 1))
    if previous is not None:
        by_epoch[str(epoch - 1)] = previous
    write_json(path, {"by_epoch": by_epoch})


def _restore_random_states(model, path, epoch):
    data = read_json(path)
    if not data or str(epoch) not in data["by_epoch"]:
        return False
    variables = _random_state_variables(model)
    states = data["by_epoch"][str(epoch)]
    if len(states) != len(variables):
        raise ValueError(
            f"{path}: holds {len(states)} random-generator states, the model has "
            f"{len(variables)}; the run directory belongs to another model."
        )
    for variable, state in zip(variables, states):
        variable.assign(np.asarray(state, dtype=variable.dtype))
    return True


class ResumableBackup(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` that also saves and restores random-generator states."""

    def __init__(self, backup_dir):
        super().__init__(backup_dir, save_freq="epoch", delete_checkpoint=False)
        self.random_states_path = join_path(backup_dir, "random_states.json")

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        epoch = backup_epoch(self.backup_dir)
        if epoch:
            _restore_random_states(self.model, self.random_states_path, epoch)

    def on_epoch_end(self, epoch, logs=None):
        tf.io.gfile.makedirs(self.backup_dir)
        _save_random_states(self.model, self.random_states_path, epoch + 1)
        super().on_epoch_end(epoch, logs)


def backup_epoch(backup_dir):
    """Epochs completed according to a `BackupAndRestore` directory (0 when none)."""
    metadata = read_json(join_path(backup_dir, "training_metadata.json"))
    return int(metadata["epoch"]) if metadata else 0


class HistoryWriter(keras.callbacks.Callback):
    """Appends one row per epoch to `history.csv` (rows of earlier stages are kept)."""

    def __init__(self, path, stage_name, epoch_offset, resume_epoch, rows):
        super().__init__()
        self.path = path
        self.stage_name = stage_name
        self.epoch_offset = epoch_offset
        # Rows after the restored epoch were written by the killed process after its
        # last backup; they are replayed, so drop them.
        self.rows = [
            row for row in rows
            if row["stage"] != stage_name or row["epoch"] < resume_epoch
        ]

    def on_epoch_begin(self, epoch, logs=None):
        self.learning_rate = _current_learning_rate(self.model.optimizer)

    def on_epoch_end(self, epoch, logs=None):
        row = {
            "stage": self.stage_name,
            "epoch": epoch,
            "global_epoch": self.epoch_offset + epoch,
            # The rate at the start of the epoch (the schedule moves every step).
            "learning_rate": self.learning_rate,
        }
        row.update({key: float(value) for key, value in (logs or {}).items()
                    if key != "learning_rate"})
        self.rows.append(row)
        _write_history(self.path, self.rows)


def _current_learning_rate(optimizer):
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def _replay(callback, model, rows, monitor):
    """Feeds earlier epochs' logs to a stateful callback so it resumes its counters.

    The learning rate restored by the backup is kept (a replayed plateau step must not
    lower it twice) and a replayed early stop does not stop the resumed run.
    """
    callback.set_model(model)
    variable_rate = isinstance(model.optimizer._learning_rate, keras.Variable)
    learning_rate = _current_learning_rate(model.optimizer)
    for row in rows:
        logs = {key: value for key, value in row.items() if value is not None}
        if monitor in logs:
            callback.on_epoch_end(row["epoch"], logs)
    if variable_rate:
        model.optimizer.learning_rate = learning_rate
    model.stop_training = False


class _ReplaysCounters:
    """Mixin: after the callback's own reset, replays the history rows of a resumed run."""

    def __init__(self, previous_rows, **kwargs):
        super().__init__(**kwargs)
        self.previous_rows = previous_rows

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        _replay_counters(self, self.previous_rows)


class ResumableEarlyStopping(_ReplaysCounters, keras.callbacks.EarlyStopping):
    pass


class ResumableReduceLROnPlateau(_ReplaysCounters, keras.callbacks.ReduceLROnPlateau):
    pass


def _replay_counters(callback, rows):
    if rows:
        _replay(callback, callback.model, rows, callback.monitor)


class BestCheckpoint(keras.callbacks.Callback):
    """Saves the *full* model's weights when `monitor` improves (also when only the
    head is being fitted on cached features)."""

    def __init__(self, full_model, path, monitor, mode, best=None):
        super().__init__()
        self.full_model = full_model
        self.path = path
        self.monitor = monitor
        self.mode = mode
        self.best = best

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise ValueError(
                f"`training.monitor` {self.monitor!r} is not in the epoch logs; available: "
                f"{sorted(logs or {})}. Received: training.monitor={self.monitor!r}"
            )
        value = float(value)
        better = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        if better:
            self.best = value
            _save_weights_only(self.full_model, self.path)


def _save_weights_only(model, path):
    """Model weights without optimizer slots (they differ between stages)."""
    temporary = f"{path}.tmp.weights.h5"
    optimizer = getattr(model, "optimizer", None)
    try:
        if optimizer is not None:
            model.optimizer = None
        model.save_weights(temporary)
    finally:
        if optimizer is not None:
            model.optimizer = optimizer
    tf.io.gfile.rename(temporary, path, overwrite=True)


def save_model_state(model, path):
    _save_weights_only(model, path)
    _save_random_states(model, f"{path}.random.json", 0)


def load_model_state(model, path):
    optimizer = getattr(model, "optimizer", None)
    try:
        if optimizer is not None:
            model.optimizer = None
        model.load_weights(path)
    finally:
        if optimizer is not None:
            model.optimizer = optimizer
    _restore_random_states(model, f"{path}.random.json", 0)
