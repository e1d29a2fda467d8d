"""Checks of a run directory before a resumed run trusts it.

A run can be interrupted anywhere: killed, out of disk, or its files damaged or edited
afterwards. These checks find what is not what the run's own records say, so the
`Trainer` can restart from the last good state and say so instead of continuing on a
wrong state silently: the best checkpoint and its record, damaged backups and stage
ends, temporary files of an interrupted write, and a dataset converted again since.
"""

import tensorflow as tf

from kmedimg.core.run_directory import (
    RunDirectory, join, read_json, sha256_of_file, write_json,
)
from kmedimg.data import schema
from kmedimg.data.manifest_files import manifest_fingerprint as data_manifest_fingerprint
from kmedimg.training.model_state import weights_file_problem

# Configuration keys that may differ when a run directory is resumed (run_dir: a run
# directory may be moved; it is stored as "." in its own config.yaml).
_RESUMABLE_DIFFERENCES = {("training", "verbose"), ("training", "run_dir")}

BEST_RECORD = RunDirectory.BEST_RECORD

# Names of `write_atomically`'s temporary files (`<name>.tmp`, `<name>.tmp.weights.h5`).
_TEMPORARY_ENDINGS = (".tmp", ".tmp.weights.h5", ".tmp.keras")


def check_resumable(directory, config):
    """Refuses to resume a run directory written by a different configuration.

    Args:
        directory: the `RunDirectory`.
        config: the `RecipeConfig` about to run (with `data.path` absolute).
    """
    if not (directory.exists(RunDirectory.CONFIG) and directory.exists(RunDirectory.STATE)):
        return
    stored = directory.read_config()
    for section, values in config.to_dict().items():
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            old = (stored.get(section) or {}).get(key)
            if (section, key) == ("data", "path") and old is not None:
                old = directory.data_reference(directory.resolve_data_path(old))
            if (section, key) not in _RESUMABLE_DIFFERENCES and old != value:
                raise ValueError(
                    f"{directory.path} holds a run with {section}.{key}={old!r}; "
                    f"resuming it with {section}.{key}={value!r} would mix two runs. Use "
                    f"another `training.run_dir` (--out) or delete {directory.path}. "
                    f"Received: {section}.{key}={value!r}"
                )


def read_best_checkpoint(directory):
    """The record of the run's best checkpoint if the checkpoint is intact.

    Args:
        directory: the `RunDirectory`.

    Returns:
        `(record, problem)`: the record (`monitor`, `value`, `stage`, `epoch`,
        `global_epoch`, `sha256`) and `None`, or `None` and why the checkpoint
        cannot be used ("missing", "unreadable (...)", "does not match its record").
    """
    path = directory.best_weights_path
    problem = weights_file_problem(path)
    if problem:
        return None, problem
    try:
        record = directory.read_json(BEST_RECORD)
    except ValueError as error:
        return None, f"its record {BEST_RECORD} is damaged ({error})"
    if not record or "sha256" not in record:
        return None, f"it has no record {BEST_RECORD} of the epoch it holds"
    if sha256_of_file(path) != record["sha256"]:
        return None, f"it does not match its record {BEST_RECORD} (written by another epoch)"
    return record, None


def remove_stale_temporaries(directory):
    """Removes `*.tmp*` files an interrupted write left; returns their relative names."""
    removed = []
    if not directory.exists():
        return removed
    root = directory.path.rstrip("/")
    for folder, _, files in tf.io.gfile.walk(root):
        for name in files:
            if name.endswith(_TEMPORARY_ENDINGS) and ".tmp" in name:
                path = join(folder, name)
                tf.io.gfile.remove(path)
                removed.append(path[len(root):].lstrip("/\\"))
    return sorted(removed)


def manifest_fingerprint(data_path):
    """The dataset's manifest fingerprint (`kmedimg.data.manifest_fingerprint`).

    Args:
        data_path: the dataset directory.

    Returns:
        The hex digest, or `None` when there is no `dataset.json` (e.g. a TFDS name).
    """
    path = join(data_path, schema.MANIFEST_NAME)
    if not tf.io.gfile.exists(path):
        return None
    return data_manifest_fingerprint(path)


def check_same_dataset(directory, stored, current, data_path):
    """Refuses to resume a run on a dataset that changed since the run started.

    Args:
        directory: the `RunDirectory`.
        stored: the fingerprint in the run's `state.json` (`None`: an older run).
        current: the dataset's fingerprint now.
        data_path: the dataset directory, for the message.
    """
    if stored is None or current is None or stored == current:
        return
    raise ValueError(
        f"{directory.path} was trained on {join(data_path, schema.MANIFEST_NAME)} with "
        f"fingerprint {stored[:16]}..., but that file now has fingerprint {current[:16]}... "
        "(the dataset was converted again or edited); resuming would mix two datasets in "
        "one run. Restore the original dataset, or start a new run (another --out). "
        f"Received: manifest fingerprint {current}"
    )


def damaged_stage_end(path):
    """Why a completed stage's end weights cannot be loaded, or `None`."""
    return weights_file_problem(path)


def reconcile_backup(backup_dir):
    """Checks a stage's backup and names what is wrong with it, or returns `None`.

    `ResumableBackup` writes the epoch file (with the sha256 of the new weights and of
    the previous ones) before it renames the new weights into place. After a kill
    between the two, the weights on disk are the previous epoch's: the epoch file is
    set back to that epoch here, so the stage resumes from what the weights hold.

    Args:
        backup_dir: the stage's backup directory.

    Returns:
        A message naming the damaged file, or `None` when the backup is usable (or
        there is none).
    """
    metadata_path = join(backup_dir, "training_metadata.json")
    weights = join(backup_dir, "latest.weights.h5")
    if not tf.io.gfile.exists(metadata_path) and not tf.io.gfile.exists(weights):
        return None
    try:
        metadata = read_json(metadata_path)
        read_json(join(backup_dir, "random_states.json"))
    except ValueError as error:
        return f"{error}".rstrip(".") + " (damaged)"
    if metadata is None:
        return f"{metadata_path} is missing"
    problem = weights_file_problem(weights)
    if problem:
        return f"{weights} is {problem}"
    if "sha256" not in metadata:
        return None  # written before the hashes were recorded
    actual = sha256_of_file(weights)
    previous = metadata.get("previous") or {}
    if actual == metadata["sha256"]:
        return None
    if actual == previous.get("sha256"):
        write_json(metadata_path, previous)
        return None
    return f"{weights} does not match its record {metadata_path}"
