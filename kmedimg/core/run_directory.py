"""`RunDirectory`: the one owner of a run's files, on local disk or gs:// alike.

A run directory is what `kmedimg train` writes and what `evaluate`, `predict`,
`explain`, `export`, `tune` and `study` read:

```
run_dir/
  config.yaml                 the resolved configuration (data.path stored absolute,
                              training.run_dir "."; no path of the run's own files:
                              a run directory can be moved and resumed)
  history.csv                 one row per epoch over all stages
  state.json                  completed stages, best value so far, the dataset
                              manifest's fingerprint (resume state)
  backup/                     Keras BackupAndRestore + random states (while a stage runs)
  checkpoints/best.weights.h5 best epoch by `training.monitor`
  checkpoints/best.json       which epoch best.weights.h5 holds, with its sha256
  logs/<stage>/               TensorBoard logs
  model.keras                 the model with the best weights (takes raw pixels)
  metrics.json                validation and test metrics with bootstrap intervals
  evaluation/                 `kmedimg evaluate`: threshold.json, metrics_<split>.json,
                              predictions_<split>.csv
  report.html                 `kmedimg evaluate`: the self-contained report
  export/<format>/            `kmedimg export` (default output folder)
```

Every read and write goes through `tf.io.gfile`, so a run that training wrote to
`gs://` on a TPU VM is evaluated from anywhere, and tests use TensorFlow's `ram://`
file system. Files are written to a temporary name and renamed, so a killed process
never leaves half a file behind; a full device raises `StorageFullError` (one message
naming the file) and removes the temporary file.

Example:

```python
run = RunDirectory("runs/quickstart")
run.read_history()[-1]["val_auc"]
run.read_json(RunDirectory.METRICS)["test"]
```
"""

import csv
import errno
import hashlib
import io
import json
import os
import posixpath
import shutil

import numpy as np
import tensorflow as tf
import yaml


def _is_url(path):
    return "://" in str(path)


def join(directory, *names):
    """Joins names to a local directory or a URL-style one (`gs://`, `ram://`)."""
    directory = os.fspath(directory)
    if _is_url(directory):
        return posixpath.join(directory.rstrip("/"), *names)
    return os.path.join(directory, *names)


def _json_default(value):
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


class StorageFullError(OSError, ValueError):
    """No space left to write a run's file; one clear message instead of a crash.

    A `ValueError` too, so the command line prints it as one line.

    Args:
        path: the file that could not be written.
        needed: bytes it needs (estimated), or `None`.
        free: bytes free on its device, or `None`.
    """

    def __init__(self, path, needed=None, free=None):
        super().__init__(errno.ENOSPC, "No space left on device", os.fspath(path))
        self.path, self.needed, self.free = os.fspath(path), needed, free

    def __str__(self):
        sizes = ""
        if self.needed is not None and self.free is not None:
            sizes = f" (needs about {_megabytes(self.needed)}, {_megabytes(self.free)} free)"
        return (
            f"{self.path}: no space left on the device{sizes}; nothing half-written was "
            "kept. Free some space (or move the run directory elsewhere) and run the same "
            "command again: it resumes after the last completed epoch. "
            f"Received: a full device at {os.path.dirname(self.path) or '.'}"
        )


def _megabytes(count):
    return f"{count / 2**20:.1f} MB"


def _is_disk_full(error):
    return (isinstance(error, tf.errors.ResourceExhaustedError)
            or getattr(error, "errno", None) == errno.ENOSPC
            or "No space left on device" in str(error))


def free_bytes(path):
    """Bytes free on the local device holding `path` (`None` for URLs)."""
    if _is_url(path):
        return None
    directory = os.path.abspath(os.fspath(path))
    while not os.path.isdir(directory):
        parent = os.path.dirname(directory)
        if parent == directory:
            return None
        directory = parent
    return shutil.disk_usage(directory).free


def check_free_space(path, needed):
    """Raises `StorageFullError` unless `needed` bytes fit on the device of `path`.

    Writers that cannot fail cleanly on a full device (HDF5 crashes the process) call
    this first. URLs are not checked.
    """
    free = free_bytes(path)
    if free is not None and free < needed:
        raise StorageFullError(path, needed, free)


def remove_quietly(path):
    """Removes the file `path` if it exists (a temporary file after a failed write)."""
    try:
        if tf.io.gfile.exists(path):
            tf.io.gfile.remove(path)
    except (OSError, tf.errors.OpError):
        pass


def write_atomically(path, write, suffix=""):
    """Calls `write(temporary)`, then renames it to `path`; a full disk leaves nothing.

    Args:
        path: the file to write.
        write: writes the complete file to the path it is given.
        suffix: ending of the temporary name (Keras wants `.weights.h5`, `.keras`).
            Defaults to `""`.

    Raises:
        StorageFullError: the device is full (the temporary file is removed).
    """
    temporary = f"{path}.tmp{suffix}"
    try:
        write(temporary)
        tf.io.gfile.rename(temporary, path, overwrite=True)
    except (OSError, tf.errors.OpError) as error:
        remove_quietly(temporary)
        if _is_disk_full(error) and not isinstance(error, StorageFullError):
            raise StorageFullError(path, free=free_bytes(path)) from None
        raise


def write_text(path, text):
    """Writes `text` to `path` atomically (temporary file, then rename)."""

    def write(temporary):
        with tf.io.gfile.GFile(temporary, "w") as handle:
            handle.write(text)

    write_atomically(path, write)


def sha256_of_file(path):
    """Hex sha256 of a file's bytes (any `tf.io.gfile` path)."""
    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_text(path, default=None):
    """The text of `path`, or `default` when it does not exist."""
    if not tf.io.gfile.exists(path):
        return default
    with tf.io.gfile.GFile(path, "r") as handle:
        return handle.read()


def write_json(path, data):
    """Writes `data` as indented JSON (numpy scalars and arrays allowed), atomically."""
    write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def read_json(path, default=None):
    """Parsed JSON of `path`, or `default` when it does not exist."""
    text = read_text(path)
    if text is None:
        return default
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error}).") from None


_HISTORY_TEXT_COLUMNS = ("stage",)
_HISTORY_INT_COLUMNS = ("epoch", "global_epoch")
_HISTORY_FIRST_COLUMNS = ["stage", "epoch", "global_epoch", "learning_rate"]


def read_history(path):
    """Rows of a `history.csv` as dicts with numbers parsed ([] when absent)."""
    text = read_text(path)
    if text is None:
        return []
    parsed = []
    for row in csv.DictReader(io.StringIO(text)):
        item = {}
        for key, value in row.items():
            if key in _HISTORY_TEXT_COLUMNS:
                item[key] = value
            elif value in ("", None):
                item[key] = None
            elif key in _HISTORY_INT_COLUMNS:
                item[key] = int(value)
            else:
                item[key] = float(value)
        parsed.append(item)
    return parsed


def write_history(path, rows):
    """Writes history rows as CSV: stage/epoch/lr first, then every metric seen."""
    keys = list(_HISTORY_FIRST_COLUMNS)
    for row in rows:
        keys += [key for key in row if key not in keys]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: row.get(key, "") for key in keys})
    write_text(path, buffer.getvalue())


class RunDirectory:
    """The files of one training run, through `tf.io.gfile`.

    Args:
        path: the run directory: a local path, `gs://...` or `ram://...`.

    Example:

    >>> run = RunDirectory("runs/quickstart")
    >>> run.model_path
    'runs/quickstart/model.keras'
    """

    CONFIG = "config.yaml"
    HISTORY = "history.csv"
    STATE = "state.json"
    METRICS = "metrics.json"
    MODEL = "model.keras"
    CHECKPOINTS = "checkpoints"
    BEST_WEIGHTS = "checkpoints/best.weights.h5"
    BEST_RECORD = "checkpoints/best.json"
    BACKUP = "backup"
    LOGS = "logs"
    EVALUATION = "evaluation"
    THRESHOLD = "evaluation/threshold.json"
    EVALUATION_METRICS = "evaluation/metrics_{split}.json"
    PREDICTIONS = "evaluation/predictions_{split}.csv"
    REPORT = "report.html"
    EXPORT = "export"

    def __init__(self, path):
        if path is None or not str(os.fspath(path)).strip():
            raise ValueError(f"A run directory needs a path. Received: path={path!r}")
        self.path = os.fspath(path)

    def __repr__(self):
        return f"RunDirectory({self.path!r})"

    def __fspath__(self):
        return self.path

    def file(self, name):
        """Path of `name` (which may contain `/`) inside the run directory."""
        return join(self.path, *str(name).split("/"))

    @property
    def config_path(self):
        return self.file(self.CONFIG)

    @property
    def history_path(self):
        return self.file(self.HISTORY)

    @property
    def state_path(self):
        return self.file(self.STATE)

    @property
    def metrics_path(self):
        return self.file(self.METRICS)

    @property
    def model_path(self):
        return self.file(self.MODEL)

    @property
    def best_weights_path(self):
        return self.file(self.BEST_WEIGHTS)

    @property
    def backup_dir(self):
        return self.file(self.BACKUP)

    @property
    def evaluation_dir(self):
        return self.file(self.EVALUATION)

    @property
    def threshold_path(self):
        return self.file(self.THRESHOLD)

    def logs_dir(self, stage):
        """TensorBoard directory of one stage."""
        return self.file(f"{self.LOGS}/{stage}")

    def exists(self, name=None):
        """Whether the directory (or the file `name` in it) exists."""
        return tf.io.gfile.exists(self.file(name) if name else self.path)

    def has_model(self):
        return self.exists(self.MODEL)

    def makedirs(self, name=None):
        """Creates the directory (or the sub-directory `name`) and returns its path."""
        path = self.file(name) if name else self.path
        tf.io.gfile.makedirs(path)
        return path

    def remove(self, name):
        """Removes a file or sub-directory of the run if it exists."""
        path = self.file(name)
        if tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
        elif tf.io.gfile.exists(path):
            tf.io.gfile.remove(path)

    def read_json(self, name, default=None):
        return read_json(self.file(name), default)

    def write_json(self, name, data):
        write_json(self.file(name), data)

    def read_text(self, name, default=None):
        return read_text(self.file(name), default)

    def write_text(self, name, text):
        write_text(self.file(name), text)

    def read_history(self):
        return read_history(self.history_path)

    def write_history(self, rows):
        write_history(self.history_path, rows)

    def read_config(self):
        """The run's `config.yaml` as a plain dict ({} when absent)."""
        text = self.read_text(self.CONFIG)
        if text is None:
            return {}
        config = yaml.safe_load(text) or {}
        if not isinstance(config, dict):
            raise ValueError(
                f"{self.config_path}: expected a mapping of sections. "
                f"Received: {type(config).__name__}"
            )
        return config

    def data_reference(self, data_path):
        """How to store a dataset path in this run's config: absolute, or a URL as is."""
        if data_path is None:
            return None
        data_path = os.fspath(data_path)
        return data_path if _is_url(data_path) else os.path.abspath(data_path)

    def resolve_data_path(self, stored):
        """The dataset directory a stored `data.path` names, from any working directory.

        Absolute paths and URLs are returned as they are; a relative path is taken
        relative to the run directory and, for runs written before paths were stored
        absolute, relative to the current directory when only that one exists.
        """
        if stored is None:
            return None
        stored = os.fspath(stored)
        if _is_url(stored) or os.path.isabs(stored):
            return stored
        beside_run = join(self.path, stored)
        if tf.io.gfile.exists(beside_run) or not os.path.exists(stored):
            return beside_run
        return stored
