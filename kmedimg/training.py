"""Run a recipe end to end into a run directory.

`run(config)` reads the dataset's manifest, builds the model inside the strategy's
scope (`kmedimg.distribute`), runs the recipe's stages (each stage sets which blocks
train, recompiles and fits), and writes:

```
run_dir/
  config.yaml                 the resolved configuration
  history.csv                 one row per epoch over all stages (stage, epoch, lr, metrics)
  logs/<stage>/               TensorBoard logs
  checkpoints/best.weights.h5 best epoch by `training.monitor` (default val AUC)
  model.keras                 the model with the best weights (takes raw pixels)
  metrics.json                validation and test metrics with bootstrap intervals
  state.json, backup/         resume state (removed parts once a stage completes)
```

Runs are reproducible with a seed: `keras.utils.set_random_seed`, TensorFlow op
determinism and a seeded, ordered input pipeline. They are preemption-safe: Keras
`BackupAndRestore` saves weights and optimizer state after every epoch, kmedimg adds
what it does not keep (random-generator states of dropout/augmentation layers, the
data position, early-stopping and plateau state, the best value so far), so a run that
is killed and started again with the same `run_dir` ends with the same weights as an
uninterrupted one.

Example:

```python
from kmedimg.config import load_config
from kmedimg.training import run

result = run(load_config("recipes/quickstart.yaml", ["data.path=/tmp/phantoms"]))
result.metrics["test"]["metrics"]["roc_auc"]
```
"""

import csv
import dataclasses
import datetime
import json
import logging
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf

from kmedimg import recipes as recipes_lib
from kmedimg.config import RecipeConfig, save_config
from kmedimg.optimizers import make_optimizer

logger = logging.getLogger(__name__)

STATE_NAME = "state.json"
HISTORY_NAME = "history.csv"
METRICS_NAME = "metrics.json"
MODEL_NAME = "model.keras"
BEST_NAME = os.path.join("checkpoints", "best.weights.h5")

# Layers whose output changes between two calls on the same image in training mode;
# a backbone containing one cannot have its features cached.
_RANDOM_LAYER_HINTS = ("Dropout", "Noise", "Random", "Augmentation")

# BatchNormalization momentum for training from random weights (see
# `TrainingConfig.batchnorm_momentum`).
RANDOM_INIT_BATCHNORM_MOMENTUM = 0.9


@dataclasses.dataclass
class RunResult:
    """What `run` produced.

    Attributes:
        run_dir: the run directory.
        history: one dict per epoch (the rows of `history.csv`).
        metrics: the content of `metrics.json`.
        model_path: path of `model.keras`.
    """

    run_dir: str
    history: list
    metrics: dict
    model_path: str


# ----------------------------------------------------------------------------- files


def _join(*parts):
    return os.path.join(*[str(part) for part in parts])


def _write_json(path, data):
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


def _read_json(path, default=None):
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


# ------------------------------------------------------------------------ the stages


def _models():
    from kmedimg import models

    return models


def stage_layout(model, stage):
    """Which backbone blocks are frozen and which train in `stage`.

    Returns:
        dict with `num_blocks`, `frozen_blocks` (count from the stem),
        `block_names`, and `trainable_blocks` (names).
    """
    blocks = _models().backbone_blocks(model)
    frozen = recipes_lib.resolve_freeze_depth(stage.freeze_depth, len(blocks))
    names = [name for name, _ in blocks]
    return {
        "num_blocks": len(blocks),
        "frozen_blocks": frozen,
        "block_names": names,
        "trainable_blocks": names[frozen:],
    }


def apply_stage(model, stage):
    """Sets which layers of `model` train in `stage` (call before `compile`).

    Everything is made trainable, then the first `stage.freeze_depth` backbone
    blocks are frozen with `kmedimg.models.freeze_backbone` (frozen
    BatchNormalization runs in inference mode); with `stage.train_batchnorm=False`
    the BatchNormalization layers of the training blocks are frozen too. The head
    always trains.

    Returns:
        The `stage_layout` dict plus `trainable_params`.
    """
    layout = stage_layout(model, stage)
    # `Model.trainable = True` does not reach the layers of a functional model that
    # were frozen one by one, so unfreeze every layer explicitly.
    _set_all_trainable(model)
    if layout["frozen_blocks"]:
        _models().freeze_backbone(model, layout["frozen_blocks"])
    if not stage.train_batchnorm:
        blocks = _models().backbone_blocks(model)
        for _, layers in blocks[layout["frozen_blocks"]:]:
            for layer in layers:
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.trainable = False
    layout["trainable_params"] = int(
        sum(np.prod(variable.shape) for variable in model.trainable_weights)
    )
    return layout


def _set_all_trainable(model):
    model.trainable = True
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            _set_all_trainable(layer)
        else:
            layer.trainable = True


def block_lr_multipliers(model, stage):
    """Discriminative learning rates of `stage`: {variable path: multiplier}.

    The top training block gets 1, each block below `stage.block_lr_decay` times the
    block above; the head gets 1. Empty when `block_lr_decay` is None.
    """
    if stage.block_lr_decay is None:
        return {}
    blocks = _models().backbone_blocks(model)
    frozen = recipes_lib.resolve_freeze_depth(stage.freeze_depth, len(blocks))
    multipliers = {}
    training = blocks[frozen:]
    for depth, (_, layers) in enumerate(reversed(training)):
        factor = float(stage.block_lr_decay) ** depth
        for layer in layers:
            for variable in layer.trainable_weights:
                multipliers[variable.path] = factor
    return multipliers


def make_schedule(stage, steps_per_epoch):
    """The learning rate (float or schedule) of `stage` with `steps_per_epoch` steps."""
    if stage.schedule != "cosine":
        return float(stage.learning_rate)
    warmup = stage.warmup_epochs * steps_per_epoch
    decay = max(1, (stage.epochs - stage.warmup_epochs) * steps_per_epoch)
    if warmup:
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0,
            decay_steps=decay,
            warmup_target=float(stage.learning_rate),
            warmup_steps=warmup,
        )
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=float(stage.learning_rate), decay_steps=decay
    )


def make_loss(task, training):
    """The loss for `task` from the `training` config (cross-entropy or focal)."""
    focal = training.loss == "focal"
    smoothing = float(training.label_smoothing)
    if task == "multiclass":
        if focal:
            return keras.losses.CategoricalFocalCrossentropy(
                gamma=training.focal_gamma, label_smoothing=smoothing
            )
        return keras.losses.CategoricalCrossentropy(label_smoothing=smoothing)
    if focal:
        return keras.losses.BinaryFocalCrossentropy(
            gamma=training.focal_gamma, label_smoothing=smoothing
        )
    return keras.losses.BinaryCrossentropy(label_smoothing=smoothing)


def make_metrics(task, num_classes):
    """Keras metrics named `auc` and `accuracy` (so logs have `val_auc`, `val_accuracy`)."""
    if task == "multiclass":
        return [keras.metrics.AUC(name="auc"), keras.metrics.CategoricalAccuracy(name="accuracy")]
    if task == "multilabel":
        return [
            keras.metrics.AUC(name="auc", multi_label=True, num_labels=num_classes),
            keras.metrics.BinaryAccuracy(name="accuracy"),
        ]
    return [keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy")]


def class_weights(manifest, split, training, task=None):
    """Per-class loss weights from the manifest's counts of `split`.

    Args:
        manifest: the dataset `Manifest`.
        split: the training split name.
        training: the `TrainingConfig` (`class_weight`, `imbalance_ratio`, `loss`).
        task: defaults to the manifest's task.

    Returns:
        `(weights or None, note)`: a list with one weight per class (balanced:
        `N / (K * n_k)`), and a sentence for the run log saying what was decided.
    """
    task = task or manifest.task
    setting = training.class_weight
    names = list(manifest.class_names)
    counts = [int(manifest.splits[split].class_counts.get(name, 0)) for name in names]
    if isinstance(setting, list):
        if len(setting) != len(names) or not all(
            isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in setting
        ):
            raise ValueError(
                f"`training.class_weight` must list {len(names)} weights >= 0, one per class "
                f"{names}. Received: training.class_weight={setting!r}"
            )
        if task == "multilabel":
            raise ValueError(
                "`training.class_weight` needs one class per image (binary or multiclass); "
                "for multilabel data use `training.loss: focal`. "
                f"Received: training.class_weight={setting!r}"
            )
        return [float(w) for w in setting], f"class weights {setting} (from the recipe)"
    if setting == "none":
        return None, "no class weights (training.class_weight: none)"
    if task == "multilabel":
        if setting == "balanced":
            raise ValueError(
                "`training.class_weight: balanced` needs one class per image; for "
                "multilabel data use `training.loss: focal`. "
                "Received: training.class_weight='balanced'"
            )
        return None, "no class weights: multilabel data (use training.loss: focal for imbalance)"
    total = sum(counts)
    present = [count for count in counts if count]
    ratio = max(present) / min(present) if present else 1.0
    if setting == "auto":
        if training.loss == "focal":
            return None, "no class weights: the focal loss handles imbalance"
        if ratio < training.imbalance_ratio:
            return None, (
                f"no class weights: class counts {dict(zip(names, counts))} are balanced "
                f"(ratio {ratio:.2f} < imbalance_ratio {training.imbalance_ratio})"
            )
    missing = [name for name, count in zip(names, counts) if not count]
    if missing:
        raise ValueError(
            f"Cannot weight classes {missing}: they have no images in split {split!r}. Set "
            f"`training.class_weight: none` or a list. Received: class_counts="
            f"{dict(zip(names, counts))}"
        )
    weights = [total / (len(names) * count) for count in counts]
    return weights, (
        f"balanced class weights {dict(zip(names, [round(w, 3) for w in weights]))} from the "
        f"manifest's {split!r} counts {dict(zip(names, counts))} (ratio {ratio:.2f})"
    )


def _weight_fn(weights, task):
    weights = tf.constant(weights, tf.float32)

    def add_weights(images, labels):
        if task == "binary":
            positive = labels[:, 0]
            sample = positive * weights[1] + (1.0 - positive) * weights[0]
        else:
            sample = tf.reduce_sum(labels * weights, axis=-1)
        return images, labels, sample

    return add_weights


# -------------------------------------------------------------- resumable callbacks


def _random_state_variables(model):
    """Seed-generator states of dropout/augmentation layers (not in `.weights.h5`)."""
    return [v for v in model.variables if "seed_generator_state" in v.path]


def _save_random_states(model, path, epoch):
    data = _read_json(path, {"by_epoch": {}})
    states = [keras.ops.convert_to_numpy(v).tolist() for v in _random_state_variables(model)]
    by_epoch = {str(epoch): states}
    # Keep the previous epoch's entry: a kill between this write and the weights
    # write leaves the backup at that epoch.
    previous = data["by_epoch"].get(str(epoch - 1))
    if previous is not None:
        by_epoch[str(epoch - 1)] = previous
    _write_json(path, {"by_epoch": by_epoch})


def _restore_random_states(model, path, epoch):
    data = _read_json(path)
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


class _ResumableBackup(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` that also saves and restores random-generator states."""

    def __init__(self, backup_dir):
        super().__init__(backup_dir, save_freq="epoch", delete_checkpoint=False)
        self.random_states_path = _join(backup_dir, "random_states.json")

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
    metadata = _read_json(_join(backup_dir, "training_metadata.json"))
    return int(metadata["epoch"]) if metadata else 0


class _HistoryWriter(keras.callbacks.Callback):
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


class _ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    def __init__(self, previous_rows, **kwargs):
        super().__init__(**kwargs)
        self.previous_rows = previous_rows

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        _replay_counters(self, self.previous_rows)


class _ResumableReduceLROnPlateau(keras.callbacks.ReduceLROnPlateau):
    def __init__(self, previous_rows, **kwargs):
        super().__init__(**kwargs)
        self.previous_rows = previous_rows

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        _replay_counters(self, self.previous_rows)


def _replay_counters(callback, rows):
    if rows:
        _replay(callback, callback.model, rows, callback.monitor)


class _BestCheckpoint(keras.callbacks.Callback):
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


def _save_model_state(model, path):
    _save_weights_only(model, path)
    _save_random_states(model, f"{path}.random.json", 0)


def _load_model_state(model, path):
    optimizer = getattr(model, "optimizer", None)
    try:
        if optimizer is not None:
            model.optimizer = None
        model.load_weights(path)
    finally:
        if optimizer is not None:
            model.optimizer = optimizer
    _restore_random_states(model, f"{path}.random.json", 0)


# ------------------------------------------------------------------- feature cache


def _random_layers(layers):
    found = []
    for layer in layers:
        if any(hint in type(layer).__name__ for hint in _RANDOM_LAYER_HINTS):
            found.append(layer)
        if isinstance(layer, keras.Model):
            found += _random_layers(layer.layers)
    return found


def split_at_head(model):
    """Splits a classifier into `(feature_model, head_model)` sharing its layers.

    The feature model maps the raw input to the output of the last backbone block;
    the head model maps those features to the prediction. Training the head model
    trains the classifier's head.
    """
    backbone = _models().get_backbone_model(model)
    if backbone is model or backbone not in model.layers:
        raise ValueError(
            f"Cannot find the head of model {model.name!r}: expected a classifier from "
            "kmedimg.models.build_classifier with a nested backbone."
        )
    # The classifier is a chain; replaying it up to the backbone gives the features
    # in the outer graph (a nested model's own `.output` is not connected to it).
    position = model.layers.index(backbone)
    tensor = model.inputs[0]
    for layer in model.layers[1:position + 1]:
        tensor = layer(tensor)
    feature_model = keras.Model(model.inputs, tensor, name=f"{model.name}_features")
    head_input = keras.Input(tuple(tensor.shape[1:]), dtype=tensor.dtype)
    tensor = head_input
    for layer in model.layers[position + 1:]:
        tensor = layer(tensor)
    head_model = keras.Model(head_input, tensor, name=f"{model.name}_head")
    return feature_model, head_model


def feature_cache_plan(model, stage):
    """Whether `stage` can train on cached backbone features, and why (not).

    It applies when the whole backbone is frozen (its BatchNormalization in inference
    mode) and nothing before the head is random in training (no augmentation,
    dropout or noise layers): then every epoch would compute the same features, so
    computing them once and fitting only the head gives the same result, faster.

    Returns:
        `((feature_model, head_model), reason)` or `(None, reason)`.
    """
    if not stage.cache_features:
        return None, "cache_features is off"
    if not stage.backbone_frozen:
        return None, "the backbone trains in this stage (cache_features needs freeze_depth='all')"
    try:
        feature_model, head_model = split_at_head(model)
    except ValueError as error:
        return None, str(error)
    random_layers = _random_layers(feature_model.layers)
    if random_layers:
        names = sorted({layer.name for layer in random_layers})
        return None, (
            f"layers before the head are random in training ({', '.join(names)}: "
            "augmentation, dropout or noise), so the features differ between epochs"
        )
    return (feature_model, head_model), (
        "the whole backbone is frozen (BatchNormalization in inference mode) and nothing "
        "before the head is random"
    )


def _compute_features(feature_model, dataset):
    features, labels = [], []
    for images, batch_labels in dataset:
        features.append(np.asarray(feature_model(images, training=False)))
        labels.append(batch_labels.numpy())
    return np.concatenate(features), np.concatenate(labels)


def _feature_dataset(features, labels, batch_size, seed, weights, task, skip_batches):
    dataset = tf.data.Dataset.from_tensor_slices((features, labels))
    dataset = dataset.shuffle(len(features), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.repeat().batch(batch_size, drop_remainder=True)
    if skip_batches:
        dataset = dataset.skip(skip_batches)
    if weights is not None:
        dataset = dataset.map(_weight_fn(weights, task))
    return dataset.prefetch(tf.data.AUTOTUNE)


# ------------------------------------------------------------- building blocks


def get_strategy(config):
    """The `tf.distribute.Strategy` of `config.distribute` (see `kmedimg.distribute`)."""
    from kmedimg import distribute

    return distribute.get_strategy(config.distribute.kind, config.distribute.tpu_address)


def platform_settings(config, strategy=None):
    """`kmedimg.distribute.platform_defaults` with the recipe's overrides applied."""
    from kmedimg import distribute

    strategy = strategy or tf.distribute.get_strategy()
    jit = config.training.jit_compile
    return distribute.platform_defaults(
        strategy,
        precision_policy=config.distribute.precision,
        steps_per_execution=config.training.steps_per_execution,
        jit_compile=None if jit == "auto" else jit,
    )


def _manifest(config):
    from kmedimg.data import pipeline

    if not config.data.path:
        raise ValueError(
            "No dataset: set `data.path` in the recipe or pass --data DIR. "
            "Received: data.path=None"
        )
    manifest = pipeline.read_manifest(config.data.path)
    for key in ("train_split", "val_split"):
        split = getattr(config.data, key)
        if split not in manifest.splits or not manifest.splits[split].count:
            raise ValueError(
                f"{config.data.path}: no (or an empty) split {split!r}; available: "
                f"{sorted(manifest.splits)}. Write the dataset with a validation fraction or "
                f"set data.{key}. Received: data.{key}={split!r}"
            )
    return manifest


def num_outputs(manifest):
    """Model outputs for a dataset: 1 for binary, the class count otherwise."""
    return 1 if manifest.task == "binary" else manifest.num_classes


@dataclasses.dataclass
class PreparedData:
    """The datasets of a recipe, ready for `fit` (see `prepare_data`).

    Attributes:
        manifest: the dataset's `Manifest`.
        task: `"binary"`, `"multiclass"` or `"multilabel"`.
        num_classes: model outputs (1 for binary, else the class count).
        input_shape: `(height, width, channels)` of the model input.
        train: the training dataset (repeating, shuffled, with sample weights when
            classes are weighted), distributed over the strategy's replicas.
        val: the validation dataset (one pass).
        steps_per_epoch: training steps per epoch.
        validation_steps: `None` (the whole split) or the configured value.
        class_weights: per-class weights or `None`.
        notes: sentences for the run log.
    """

    manifest: object
    task: str
    num_classes: int
    input_shape: tuple
    train: object
    val: object
    steps_per_epoch: int
    validation_steps: object
    class_weights: object
    notes: list


def _steps_per_epoch(config, manifest):
    if config.training.steps_per_epoch:
        return config.training.steps_per_epoch
    count = manifest.splits[config.data.train_split].count
    if count < config.data.batch_size:
        raise ValueError(
            f"{config.data.path}: split {config.data.train_split!r} has {count} images, fewer "
            f"than one batch; lower data.batch_size. Received: data.batch_size="
            f"{config.data.batch_size}"
        )
    return count // config.data.batch_size


def _train_dataset_fn(config, manifest, seed, skip_batches, weights):
    from kmedimg.data import pipeline

    image_size = _image_size(config, manifest)
    channels = config.data.channels or manifest.channels

    def dataset_fn(input_context=None):
        dataset = pipeline.load(
            manifest, config.data.train_split, image_size=image_size,
            batch_size=config.data.batch_size, training=True, channels=channels,
            deterministic=True, seed=seed, input_context=input_context,
            **config.data.load_options,
        )
        if skip_batches:
            dataset = dataset.skip(skip_batches)
        if weights is not None:
            dataset = dataset.map(_weight_fn(weights, manifest.task))
        return dataset

    return dataset_fn


def _eval_dataset(config, manifest, split):
    from kmedimg.data import pipeline

    dataset = pipeline.load(
        manifest, split, image_size=_image_size(config, manifest),
        batch_size=config.data.batch_size, training=False,
        channels=config.data.channels or manifest.channels, deterministic=True,
        **config.data.load_options,
    )
    # A known length lets Keras end validation without an "input ran out of data"
    # warning (the interleaved record files have unknown cardinality).
    batches = math.ceil(manifest.splits[split].count / config.data.batch_size)
    return dataset.apply(tf.data.experimental.assert_cardinality(batches))


def _distribute(strategy, dataset_fn):
    from kmedimg import distribute

    return distribute.distribute_dataset(strategy, dataset_fn)


def prepare_data(config, strategy=None, seed_offset=0, skip_batches=0):
    """Reads the manifest and builds the training and validation datasets.

    The training order is a deterministic function of `training.seed + seed_offset`;
    `skip_batches` continues that order after a resumed epoch.

    Returns:
        A `PreparedData`.
    """
    strategy = strategy or tf.distribute.get_strategy()
    manifest = _manifest(config)
    weights, note = class_weights(manifest, config.data.train_split, config.training)
    height, width = _image_size(config, manifest)
    channels = config.data.channels or manifest.channels
    train = _distribute(strategy, _train_dataset_fn(
        config, manifest, config.training.seed + seed_offset, skip_batches, weights))
    return PreparedData(
        manifest=manifest,
        task=manifest.task,
        num_classes=num_outputs(manifest),
        input_shape=(height, width, channels),
        train=train,
        val=_eval_dataset(config, manifest, config.data.val_split),
        steps_per_epoch=_steps_per_epoch(config, manifest),
        validation_steps=config.training.validation_steps,
        class_weights=weights,
        notes=[note],
    )


def initial_weights(config, recipe):
    """`(weights for build_classifier, notes)`: what the recipe starts from."""
    weights = config.model.weights
    if recipe.init == "random":
        notes = []
        if weights:
            notes.append(
                f"recipe {recipe.name} starts from random weights; model.weights={weights!r} "
                "is not used"
            )
        return None, notes
    if weights is None:
        return None, [
            f"WARNING: recipe {recipe.name} expects pretrained weights but model.weights is "
            "null: the backbone starts from random weights"
        ]
    if weights == "imagenet":
        return weights, ["backbone initialised from ImageNet weights"]
    return weights, [f"backbone initialised from {weights}"]


def build_model(config, num_classes, input_shape, task="binary", recipe=None, dtype_policy=None):
    """Builds the classifier of `config` with the recipe's initial weights.

    Call inside the strategy's scope.

    Args:
        config: a `RecipeConfig`.
        num_classes: model outputs (1 for binary).
        input_shape: `(height, width, channels)`.
        task: the dataset's task. Defaults to `"binary"`.
        recipe: the `Recipe` (decides random vs pretrained init); `None` builds the one
            named in `config`. Defaults to `None`.
        dtype_policy: policy when `model.dtype_policy` is not set (the platform's).
            Defaults to `None`.

    Returns:
        A `keras.Model` taking raw pixels.
    """
    recipe = recipe or recipes_lib.get_recipe(config.recipe.name, **config.recipe.options)
    weights, notes = initial_weights(config, recipe)
    model = _models().build_classifier(
        config.model.backbone,
        num_classes,
        tuple(input_shape),
        weights=weights,
        head=config.model.head,
        dropout=config.model.dropout,
        hidden_units=config.model.hidden_units,
        task=task,
        augmentation=config.model.augmentation,
        dtype_policy=config.model.dtype_policy or dtype_policy,
        input_dtype=config.model.input_dtype,
        grey_weights=config.model.grey_weights,
        # BatchNormalization follows the training flag; each stage decides per layer
        # (frozen blocks and `train_batchnorm=False` set BN non-trainable, which
        # Keras 3 runs in inference mode).
        backbone_training="follow",
    )
    momentum = config.training.batchnorm_momentum
    if momentum is None and recipe.init == "random":
        momentum = RANDOM_INIT_BATCHNORM_MOMENTUM
    if momentum is not None:
        count = set_batchnorm_momentum(model, momentum)
        if count:
            notes.append(f"BatchNormalization momentum {momentum} ({count} layers)")
    for note in notes:
        logger.warning(note) if note.startswith("WARNING") else logger.info(note)
    model.kmedimg_init_notes = notes
    return model


def set_batchnorm_momentum(model, momentum):
    """Sets the moving-statistics momentum of every BatchNormalization in `model`.

    Returns:
        The number of layers changed.
    """
    count = 0
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = float(momentum)
            count += 1
    return count


def _all_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
        else:
            yield layer


def prepare_stage(model, stage, config, steps_per_epoch=None, task=None, compile_model=None):
    """Sets what trains in `stage` and compiles for it (a new optimizer every stage).

    Args:
        model: the classifier.
        stage: a `recipes.Stage`.
        config: the `RecipeConfig` (optimizer, loss and regularisation settings).
        steps_per_epoch: for the cosine schedule; `None` derives it from the config
            and manifest. Defaults to `None`.
        task: the dataset's task; `None` reads it from the manifest. Defaults to `None`.
        compile_model: the model to compile (the head model when features are
            cached); `None` compiles `model`. Defaults to `None`.

    Returns:
        The `apply_stage` layout dict.
    """
    training = config.training
    manifest = None
    if steps_per_epoch is None or task is None:
        manifest = _manifest(config)
        steps_per_epoch = steps_per_epoch or _steps_per_epoch(config, manifest)
        task = task or manifest.task
    layout = apply_stage(model, stage)
    settings = platform_settings(config)
    optimizer = make_optimizer(
        stage.optimizer or training.optimizer,
        make_schedule(stage, steps_per_epoch),
        weight_decay=training.weight_decay,
        lr_multipliers=block_lr_multipliers(model, stage),
    )
    outputs = int(model.outputs[0].shape[-1])
    (compile_model or model).compile(
        optimizer=optimizer,
        loss=make_loss(task, training),
        metrics=make_metrics(task, outputs),
        steps_per_execution=settings.steps_per_execution,
        jit_compile=settings.jit_compile,
    )
    return layout


def run_stages(model, recipe, config, x, validation_data=None, steps_per_epoch=None,
               validation_steps=None, callbacks=None, verbose=0, **fit_kwargs):
    """Runs every stage of `recipe` on `model` with the given data (no run directory).

    Each stage applies its trainable blocks, recompiles and fits; the `callbacks` are
    passed to every stage's `fit`. This is the plain loop `run` and the tuner share;
    `run` adds checkpoints, resumption, feature caching and evaluation.

    Returns:
        A list of `keras.callbacks.History`, one per stage.
    """
    histories = []
    for stage in recipe.stages:
        prepare_stage(model, stage, config, steps_per_epoch=steps_per_epoch)
        histories.append(model.fit(
            x, validation_data=validation_data, epochs=stage.epochs,
            steps_per_epoch=steps_per_epoch, validation_steps=validation_steps,
            callbacks=list(callbacks or []), shuffle=False, verbose=verbose, **fit_kwargs,
        ))
    return histories


# ---------------------------------------------------------------------------- run


def _default_run_dir(config):
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return _join("runs", f"{config.recipe.name}-{stamp}")


def _monitor_mode(training):
    if training.monitor_mode != "auto":
        return training.monitor_mode
    return "min" if "loss" in training.monitor else "max"


def _image_size(config, manifest):
    size = config.data.image_size
    if size is None:
        if not (manifest.height and manifest.width):
            raise ValueError(
                f"{manifest.directory}: the records have different sizes; set "
                "`data.image_size`. Received: data.image_size=None"
            )
        return (int(manifest.height), int(manifest.width))
    if isinstance(size, int):
        return (size, size)
    return (int(size[0]), int(size[-1]))


def _check_resumable(run_dir, config):
    """Refuses to resume a run directory written by a different configuration."""
    stored_path = _join(run_dir, "config.yaml")
    if not (tf.io.gfile.exists(stored_path) and tf.io.gfile.exists(_join(run_dir, STATE_NAME))):
        return
    from kmedimg.config import read_yaml

    stored = read_yaml(stored_path) or {}
    ignore = {("training", "verbose")}
    for section, values in config.to_dict().items():
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            old = (stored.get(section) or {}).get(key)
            if (section, key) not in ignore and old != value:
                raise ValueError(
                    f"{run_dir} holds a run with {section}.{key}={old!r}; resuming it with "
                    f"{section}.{key}={value!r} would mix two runs. Use another "
                    f"`training.run_dir` (--out) or delete {run_dir}. "
                    f"Received: {section}.{key}={value!r}"
                )


def _predict(model, dataset):
    labels, probs = [], []
    for images, batch_labels in dataset:
        probs.append(np.asarray(model(images, training=False), dtype=np.float64))
        labels.append(batch_labels.numpy())
    return np.concatenate(labels), np.concatenate(probs)


def evaluate_splits(model, config, manifest):
    """Validation and test metrics with bootstrap intervals.

    The binary/multilabel operating point is chosen on the validation split
    (`evaluation.threshold_rule`) and applied to the test split; validation itself is
    reported at a fixed 0.5 (a threshold is never scored on the data that chose it).
    """
    from kmedimg.evaluation import metrics as metrics_lib

    evaluation = config.evaluation
    task = manifest.task
    common = dict(
        task=task, class_names=list(manifest.class_names), n_bootstrap=evaluation.bootstrap,
        confidence=evaluation.confidence, seed=config.training.seed,
    )
    val_split = config.data.val_split
    val_labels, val_probs = _predict(model, _eval_dataset(config, manifest, val_split))
    outputs = val_probs.shape[-1]
    if task == "multiclass":
        threshold = val_threshold = metrics_lib.Threshold.argmax()
    elif evaluation.threshold_rule == "fixed":
        value = 0.5 if evaluation.threshold_target is None else evaluation.threshold_target
        threshold = val_threshold = metrics_lib.Threshold.fixed(value, outputs)
    else:
        threshold = metrics_lib.choose_threshold(
            val_labels, val_probs, evaluation.threshold_rule, task=task,
            target=evaluation.threshold_target, split=val_split,
        )
        val_threshold = metrics_lib.Threshold.fixed(0.5, outputs)
    results = {"val": metrics_lib.evaluate(
        val_labels, val_probs, threshold=val_threshold, split=val_split, **common)}
    test_split = config.data.test_split
    if test_split in manifest.splits and manifest.splits[test_split].count:
        test_labels, test_probs = _predict(model, _eval_dataset(config, manifest, test_split))
        results["test"] = metrics_lib.evaluate(
            test_labels, test_probs, threshold=threshold, split=test_split, **common)
    else:
        results["test"] = None
        results["test_note"] = f"no {test_split!r} split in the dataset; only validation reported"
    return results


def _with_run_dir(config):
    return dataclasses.replace(
        config,
        training=dataclasses.replace(
            config.training, run_dir=config.training.run_dir or _default_run_dir(config)
        ),
    )


def run(config, progress=True):
    """Runs `config`'s recipe and writes the run directory (see the module docstring).

    Running again with the same `training.run_dir` resumes where a killed run stopped
    (completed stages are skipped, the current stage restarts after its last finished
    epoch) and ends with the same weights as an uninterrupted run.

    Args:
        config: a `kmedimg.config.RecipeConfig`.
        progress: print stage headers and Keras progress bars. Defaults to `True`.

    Returns:
        A `RunResult`.
    """
    if not isinstance(config, RecipeConfig):
        raise ValueError(
            "`config` must be a kmedimg.config.RecipeConfig (use load_config(path)). "
            f"Received: config={type(config).__name__}"
        )
    started = time.time()
    config = _with_run_dir(config)
    training = config.training
    run_dir = training.run_dir
    say = print if progress else logger.info
    recipe = recipes_lib.get_recipe(config.recipe.name, **config.recipe.options)
    manifest = _manifest(config)

    strategy = get_strategy(config)
    from kmedimg import distribute

    distribute.check_paths_for_tpu(strategy, data=config.data.path, run_dir=run_dir)
    settings = platform_settings(config, strategy)

    tf.io.gfile.makedirs(_join(run_dir, "checkpoints"))
    _check_resumable(run_dir, config)
    save_config(config, _join(run_dir, "config.yaml"))
    state_path = _join(run_dir, STATE_NAME)
    state = _read_json(state_path) or {"completed": {}}
    _write_json(state_path, state)
    history_path = _join(run_dir, HISTORY_NAME)

    keras.utils.set_random_seed(training.seed)
    if training.deterministic:
        tf.config.experimental.enable_op_determinism()

    steps_per_epoch = _steps_per_epoch(config, manifest)
    weights, weight_note = class_weights(manifest, config.data.train_split, training)
    height, width = _image_size(config, manifest)
    input_shape = (height, width, config.data.channels or manifest.channels)
    with strategy.scope():
        model = build_model(config, num_outputs(manifest), input_shape, manifest.task,
                            recipe=recipe, dtype_policy=settings.precision_policy)
    notes = [weight_note, *settings.notes, *model.kmedimg_init_notes]
    for note in notes:
        say(f"[kmedimg] {note}")

    monitor = training.monitor
    mode = _monitor_mode(training)
    best_path = _join(run_dir, BEST_NAME)
    history_rows = read_history(history_path)
    val_dataset = _eval_dataset(config, manifest, config.data.val_split)
    stage_reports = []
    epoch_offset = 0
    last_completed = None
    trained_here = False

    for index, stage in enumerate(recipe.stages):
        stage_backup = _join(run_dir, "backup", stage.name)
        stage_end = _join(run_dir, "backup", f"{stage.name}.end.weights.h5")
        done = state["completed"].get(stage.name)
        if done:
            epoch_offset += done["epochs_run"]
            stage_reports.append(done["report"])
            last_completed = stage.name
            continue
        if last_completed is not None and not trained_here:
            # Resuming: continue from where the previous, completed stage ended.
            _load_model_state(
                model, _join(run_dir, "backup", f"{last_completed}.end.weights.h5"))

        with strategy.scope():
            plan, plan_reason = feature_cache_plan(model, stage)
            train_model = plan[1] if plan else model
            layout = prepare_stage(model, stage, config, steps_per_epoch=steps_per_epoch,
                                   task=manifest.task, compile_model=train_model)
        resume_epoch = backup_epoch(stage_backup) if training.backup else 0
        report = {
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
        say(
            f"[kmedimg] stage {index + 1}/{len(recipe.stages)} {stage.name!r}: "
            f"{layout['frozen_blocks']}/{layout['num_blocks']} backbone blocks frozen, "
            f"{layout['trainable_params']:,} trainable parameters, lr {stage.learning_rate:g} "
            f"({stage.schedule}), {stage.epochs} epochs"
            + (f"; resuming after epoch {resume_epoch}" if resume_epoch else "")
        )
        if stage.cache_features:
            say(f"[kmedimg]   feature cache {'on' if plan else 'off'}: {plan_reason}")

        earlier_rows = [row for row in history_rows
                        if row["stage"] == stage.name and row["epoch"] < resume_epoch]
        scores = [row[monitor] for row in history_rows
                  if row.get(monitor) is not None
                  and (row["stage"] != stage.name or row["epoch"] < resume_epoch)]
        best_so_far = (max(scores) if mode == "max" else min(scores)) if scores else None
        callbacks = []
        if training.backup:
            callbacks.append(_ResumableBackup(stage_backup))
        callbacks.append(_HistoryWriter(history_path, stage.name, epoch_offset, resume_epoch,
                                        history_rows))
        callbacks.append(_BestCheckpoint(model, best_path, monitor, mode, best_so_far))
        if training.early_stopping_patience is not None:
            callbacks.append(_ResumableEarlyStopping(
                earlier_rows, monitor=monitor, mode=mode,
                patience=training.early_stopping_patience,
            ))
        if stage.schedule == "plateau":
            callbacks.append(_ResumableReduceLROnPlateau(
                earlier_rows, monitor=monitor, mode=mode, factor=0.1, patience=2,
                min_lr=stage.learning_rate * 1e-3,
            ))
        if training.tensorboard:
            callbacks.append(keras.callbacks.TensorBoard(
                _join(run_dir, "logs", stage.name), write_graph=False))

        skip = resume_epoch * steps_per_epoch
        seed = training.seed + 1000 * index
        if plan:
            feature_model, _ = plan
            say("[kmedimg]   computing the backbone features once ...")
            train_x, train_y = _compute_features(
                feature_model, _eval_dataset(config, manifest, config.data.train_split))
            val_x, val_y = _compute_features(feature_model, val_dataset)
            train_input = _feature_dataset(train_x, train_y, config.data.batch_size, seed,
                                           weights, manifest.task, skip)
            validation = tf.data.Dataset.from_tensor_slices((val_x, val_y)).batch(
                config.data.batch_size)
        else:
            train_input = _distribute(
                strategy, _train_dataset_fn(config, manifest, seed, skip, weights))
            validation = val_dataset

        train_model.fit(
            train_input,
            epochs=stage.epochs,
            steps_per_epoch=steps_per_epoch,
            validation_data=validation,
            validation_steps=training.validation_steps,
            callbacks=callbacks,
            shuffle=False,
            verbose=training.verbose if progress else 0,
        )
        history_rows = read_history(history_path)
        report["epochs_run"] = sum(1 for row in history_rows if row["stage"] == stage.name)
        stage_reports.append(report)
        _save_model_state(model, stage_end)
        state["completed"][stage.name] = {"epochs_run": report["epochs_run"], "report": report}
        _write_json(state_path, state)
        if tf.io.gfile.exists(stage_backup):
            tf.io.gfile.rmtree(stage_backup)
        trained_here = True
        last_completed = stage.name
        epoch_offset += report["epochs_run"]

    best = None
    scored = [row for row in history_rows if row.get(monitor) is not None]
    if scored:
        best_row = (max if mode == "max" else min)(scored, key=lambda row: row[monitor])
        best = {"monitor": monitor, "value": best_row[monitor], "stage": best_row["stage"],
                "epoch": best_row["epoch"], "global_epoch": best_row["global_epoch"]}
    if training.restore_best and tf.io.gfile.exists(best_path):
        _load_model_state(model, best_path)
    model_path = _join(run_dir, MODEL_NAME)
    model.save(model_path)

    say("[kmedimg] evaluating ...")
    metrics = {
        "recipe": recipe.name,
        "backbone": config.model.backbone,
        "task": manifest.task,
        "class_names": list(manifest.class_names),
        "best": best,
        "evaluated_weights": "best" if training.restore_best and best else "last",
        "stages": stage_reports,
        "trainable_params": max((s["trainable_params"] for s in stage_reports), default=0),
        "total_params": int(model.count_params()),
        "steps_per_epoch": steps_per_epoch,
        "batch_size": config.data.batch_size,
        "seed": training.seed,
        "platform": settings.platform,
        "notes": notes,
        **evaluate_splits(model, config, manifest),
    }
    metrics["wall_time_seconds"] = round(time.time() - started, 2)
    _write_json(_join(run_dir, METRICS_NAME), metrics)
    return RunResult(run_dir=run_dir, history=history_rows, metrics=metrics, model_path=model_path)


# --------------------------------------------------------------------------- CLI


def format_table(rows, columns):
    """A plain-text table of dict rows (used by `kmedimg train` and `kmedimg demo`)."""
    cells = [[str(column) for column in columns]]
    for row in rows:
        cells.append([_cell(row.get(column)) for column in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["  ".join(text.ljust(width) for text, width in zip(line, widths)) for line in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _cell(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if math.isfinite(value) else str(value)
    return str(value)


def metric_with_interval(result, name):
    """`"0.912 [0.871, 0.944]"` for metric `name` of an `evaluate` result."""
    if not result:
        return None
    entry = result["metrics"].get(name)
    if entry is None:
        return None
    if entry.get("ci_low") is None:
        return f"{entry['value']:.3f}"
    return f"{entry['value']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"


def summary_rows(result_metrics):
    """One summary row per metric of a run's `metrics.json`."""
    names = ["roc_auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "f1"]
    rows = []
    for name in names:
        row = {"metric": name, "val": metric_with_interval(result_metrics.get("val"), name),
               "test": metric_with_interval(result_metrics.get("test"), name)}
        if row["val"] or row["test"]:
            rows.append(row)
    return rows


def add_train_command(subparsers):
    """`kmedimg train RECIPE.yaml [--set key=value ...] [--data DIR] [--out RUN_DIR]`."""
    parser = subparsers.add_parser(
        "train", help="run a recipe file end to end into a run directory",
        description="Run a recipe (YAML) end to end: data, model, stages, checkpoints, "
        "evaluation. Running again with the same --out resumes a killed run.",
    )
    parser.add_argument("recipe", help="recipe YAML file (see recipes/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a key, e.g. training.seed=3")
    parser.add_argument("--data", help="dataset directory (sets data.path)")
    parser.add_argument("--out", help="run directory (sets training.run_dir)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")

    def handler(args):
        from kmedimg.config import load_config

        overrides = list(args.overrides)
        if args.data:
            overrides.append(f"data.path={args.data}")
        if args.out:
            overrides.append(f"training.run_dir={args.out}")
        config = load_config(args.recipe, overrides)
        result = run(config, progress=not args.quiet)
        print()
        print(format_table(summary_rows(result.metrics), ["metric", "val", "test"]))
        print(f"\nrun directory: {result.run_dir}")
        return 0

    parser.set_defaults(handler=handler)
