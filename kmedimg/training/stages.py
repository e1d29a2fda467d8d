"""What trains in a stage, and how: freezing, learning rates, losses, class weights."""

import keras
import numpy as np
import tensorflow as tf

from kmedimg import models
from kmedimg import recipes as recipes_lib

# BatchNormalization momentum for training from random weights (see
# `TrainingConfig.batchnorm_momentum`).
RANDOM_INIT_BATCHNORM_MOMENTUM = 0.9

def stage_layout(model, stage):
    """Which backbone blocks are frozen and which train in `stage`.

    Returns:
        dict with `num_blocks`, `frozen_blocks` (count from the stem),
        `block_names`, and `trainable_blocks` (names).
    """
    blocks = models.backbone_blocks(model)
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
        models.freeze_backbone(model, layout["frozen_blocks"])
    if not stage.train_batchnorm:
        blocks = models.backbone_blocks(model)
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
    blocks = models.backbone_blocks(model)
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


def sample_weight_fn(weights, task):
    weights = tf.constant(weights, tf.float32)

    def add_weights(images, labels):
        if task == "binary":
            positive = labels[:, 0]
            sample = positive * weights[1] + (1.0 - positive) * weights[0]
        else:
            sample = tf.reduce_sum(labels * weights, axis=-1)
        return images, labels, sample

    return add_weights

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
