"""A model's state beyond Keras `.weights.h5`: what a killed run needs to resume exactly.

Random-generator states of dropout and augmentation layers are not part of
`.weights.h5`; they are saved next to the weights as JSON, per epoch, so a resumed
run draws the same random numbers as an uninterrupted one.
"""

import keras
import numpy as np
import tensorflow as tf

from kmedimg.core.run_directory import join, read_json, write_json

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


def save_weights_only(model, path):
    """Model weights without optimizer slots (they differ between stages), atomically."""
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
