"""The strategy, the platform settings and the classifier a recipe trains."""

import logging

import tensorflow as tf

from kmedimg import distribute, models
from kmedimg import recipes as recipes_lib
from kmedimg.training.stages import RANDOM_INIT_BATCHNORM_MOMENTUM, set_batchnorm_momentum

logger = logging.getLogger("kmedimg.training")


def get_strategy(config):
    """The `tf.distribute.Strategy` of `config.distribute` (see `kmedimg.distribute`)."""
    return distribute.get_strategy(config.distribute.kind, config.distribute.tpu_address)


def platform_settings(config, strategy=None):
    """`kmedimg.distribute.platform_defaults` with the recipe's overrides applied."""
    strategy = strategy or tf.distribute.get_strategy()
    jit = config.training.jit_compile
    return distribute.platform_defaults(
        strategy,
        precision_policy=config.distribute.precision,
        steps_per_execution=config.training.steps_per_execution,
        jit_compile=None if jit == "auto" else jit,
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


def check_initial_weights(config, recipe, input_shape):
    """Refuses, before any training or run directory, ImageNet weights this machine cannot get.

    Also resolves a `bank:NAME` to its entry (an unknown name is refused here).

    Raises:
        ValueError: one line naming the file, its URL and `kmedimg weights import FILE`.
    """
    weights, _ = initial_weights(config, recipe)
    if weights == "imagenet":
        record = models.get_backbone(config.model.backbone)
        models.check_imagenet_available(record, (input_shape[0], input_shape[1], 3))
    elif isinstance(weights, str) and weights.startswith(models.bank.PREFIX):
        models.bank.entry_path(weights)


def build_model(config, num_classes, input_shape, task="binary", recipe=None, dtype_policy=None):
    """Builds the classifier of `config` with the recipe's initial weights.

    Call inside the strategy's scope. The notes (initial weights, BatchNormalization
    momentum) are logged and kept as `model.kmedimg_init_notes`.

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
    model = models.build_classifier(
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
