"""Training one trial: a `kmedimg.training.run` in this process or in a child process."""

import os
import subprocess
import sys

import keras

from kmedimg import training
from kmedimg.config import save_config
from kmedimg.core.run_directory import RunDirectory
TRIAL_CONFIG = "trial_config.yaml"
TRIAL_LOG = "trial.log"
# The child's parent pid, so it can tell it has been orphaned while still importing.
PARENT_ENV = "KMEDIMG_TRIAL_PARENT"


def train_trial(config, isolate=True):
    """Trains a trial's recipe file into `config.training.run_dir`.

    Args:
        config: the trial's `RecipeConfig` (with `training.run_dir` set).
        isolate: train in a child process (see `kmedimg.tuning.trial_process`).
            Defaults to `True`.

    Returns:
        A `keras.callbacks.History` with one entry per epoch over all stages.
    """
    if not isolate:
        return history_from_rows(training.run(config, progress=False).history)
    return history_from_rows(run_in_child(config))


def run_in_child(config):
    """`training.run(config)` in a child process; returns the run's history rows."""
    run_dir = config.training.run_dir
    os.makedirs(run_dir, exist_ok=True)
    config_path = os.path.join(run_dir, TRIAL_CONFIG)
    save_config(config, config_path)
    log_path = os.path.join(run_dir, TRIAL_LOG)
    # The child imports the same kmedimg as this process, installed or not.
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, **{PARENT_ENV: str(os.getpid())})
    env["PYTHONPATH"] = os.pathsep.join(
        [package_parent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    with open(log_path, "a") as log:
        child = subprocess.run(
            [sys.executable, "-m", "kmedimg.tuning.trial_process", config_path],
            stdout=log, stderr=subprocess.STDOUT, check=False, env=env,
        )
    if child.returncode != 0:
        with open(log_path) as log:
            tail = "".join(log.readlines()[-15:])
        raise RuntimeError(
            f"The trial in {run_dir} failed (exit code {child.returncode}); its log "
            f"{log_path} ends:\n{tail}"
        )
    return RunDirectory(run_dir).read_history()


def history_from_rows(rows):
    """A `keras.callbacks.History` from `history.csv` rows (numeric columns only)."""
    history = keras.callbacks.History()
    history.history = {}
    history.epoch = list(range(len(rows)))
    skip = {"stage", "epoch", "global_epoch"}
    for row in rows:
        for name, value in row.items():
            if name in skip or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            history.history.setdefault(name, []).append(float(value))
    return history
