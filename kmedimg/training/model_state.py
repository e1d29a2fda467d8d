"""A model's state beyond Keras `.weights.h5`: what a killed run needs to resume exactly.

Random-generator states of dropout and augmentation layers are not part of
`.weights.h5`; they are saved next to the weights as JSON, per epoch, so a resumed
run draws the same random numbers as an uninterrupted one.
"""

import h5py
import keras
import numpy as np
import tensorflow as tf

from kmedimg.core.run_directory import (
    check_free_space, join, read_json, write_atomically, write_json,
)

RANDOM_STATES_NAME = "random_states.json"
"""Random-generator states inside a `BackupAndRestore` directory, by epoch."""


def _random_state_variables(model):
    """Seed-generator states of dropout/augmentation layers (not in `.weights.h5`)."""
    return [v for v in model.variables if "seed_generator_state" in v.path]


def save_random_states(model, path, epoch):
    """Adds the model's random-generator states after `epoch` to the JSON at `path`."""
    data = read_json(path, {"by_epoch": {}})
    states = [keras.ops.convert_to_numpy(v).tolist() for v in _random_state_variables(model)]
    by_epoch = {str(epoch): states}
    # Keep the previous epoch's entry: a kill between this write and the weights
    # write leaves the backup at that epoch.
    previous = data["by_epoch"].get(str(epoch - 1))
    if previous is not None:
        by_epoch[str(epoch - 1)] = previous
    write_json(path, {"by_epoch": by_epoch})


def restore_random_states(model, path, epoch):
    """Restores the states saved after `epoch`; False when there are none."""
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


def backup_epoch(backup_dir):
    """Epochs completed according to a `BackupAndRestore` directory (0 when none)."""
    metadata = read_json(join(backup_dir, "training_metadata.json"))
    return int(metadata["epoch"]) if metadata else 0


def _saved_variables(model, with_optimizer):
    variables = list(model.weights)
    optimizer = getattr(model, "optimizer", None)
    if with_optimizer and optimizer is not None:
        variables += list(optimizer.variables)
    return variables


def weights_bytes(model, with_optimizer=False):
    """Bytes of the model's variables (and its optimizer's): a `.weights.h5` estimate."""
    return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
               for v in _saved_variables(model, with_optimizer))


def h5_bytes_needed(model, with_optimizer=False):
    """Free bytes to demand before an HDF5 write (HDF5 overhead and a margin included).

    HDF5 crashes the whole process (segmentation fault) when the device fills up during
    a write, so the space is checked before writing rather than the error caught after.
    Measured here: 4.7 kB of HDF5 overhead per variable; 8 kB are reserved.
    """
    count = len(_saved_variables(model, with_optimizer))
    return int(weights_bytes(model, with_optimizer) * 1.1) + 8192 * count + (64 << 10)


def save_weights(model, path, with_optimizer=True):
    """`model.save_weights(path)` after a free-space check, via a temporary file."""
    check_free_space(path, h5_bytes_needed(model, with_optimizer))
    write_atomically(path, lambda temporary: model.save_weights(temporary),
                     suffix=".weights.h5")


def save_weights_only(model, path):
    """Model weights without optimizer slots (they differ between stages), atomically."""
    optimizer = getattr(model, "optimizer", None)
    try:
        if optimizer is not None:
            model.optimizer = None
        save_weights(model, path, with_optimizer=False)
    finally:
        if optimizer is not None:
            model.optimizer = optimizer


def save_model_file(model, path):
    """`model.save(path)` (a `.keras` file) after a free-space check, atomically."""
    check_free_space(path, h5_bytes_needed(model, with_optimizer=True))
    write_atomically(path, lambda temporary: model.save(temporary), suffix=".keras")


def weights_file_problem(path):
    """Why the `.weights.h5` at `path` cannot be read (truncated, damaged), or `None`.

    Opens it with h5py and reads every array, so a file cut short anywhere is found.
    """
    if not tf.io.gfile.exists(path):
        return "missing"
    try:
        with tf.io.gfile.GFile(path, "rb") as handle, h5py.File(handle, "r") as h5:
            h5.visititems(lambda name, item: item[()] if isinstance(item, h5py.Dataset)
                          else None)
    except (OSError, ValueError, RuntimeError, KeyError, tf.errors.OpError) as error:
        return f"unreadable ({type(error).__name__}: {str(error).splitlines()[0][:160]})"
    return None


def save_model_state(model, path):
    """Weights (no optimizer) and random-generator states, e.g. at the end of a stage."""
    save_weights_only(model, path)
    save_random_states(model, f"{path}.random.json", 0)


def load_model_state(model, path):
    """Loads what `save_model_state` saved (the optimizer is left as it is)."""
    optimizer = getattr(model, "optimizer", None)
    try:
        if optimizer is not None:
            model.optimizer = None
        model.load_weights(path)
    finally:
        if optimizer is not None:
            model.optimizer = optimizer
    restore_random_states(model, f"{path}.random.json", 0)
