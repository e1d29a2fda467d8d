"""`build_classifier`: raw pixels in, class probabilities out."""

import contextlib

import keras

from kmedimg.layers import (
    BackbonePreprocessing,
    GeMPooling2D,
    GreyToRGB,
    IntensityScaling,
    MedicalAugmentation,
    Window,
)
from kmedimg.models.backbones import get_backbone
from kmedimg.models.pretrained import build_backbone
from kmedimg.layers.intensity_scaling import INPUT_RANGES

TASKS = ("binary", "multiclass", "multilabel")
HEADS = ("avg", "gem", "max")
BACKBONE_TRAINING = ("auto", "inference", "follow")


@contextlib.contextmanager
def _dtype_policy(policy):
    if policy is None:
        yield
        return
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _augmentation_layer(augmentation):
    if augmentation is None or augmentation is False:
        return None
    if augmentation is True or augmentation == "default":
        return MedicalAugmentation(name="augmentation")
    if isinstance(augmentation, dict):
        return MedicalAugmentation(name="augmentation", **augmentation)
    if isinstance(augmentation, keras.layers.Layer):
        return augmentation
    raise ValueError(
        "Argument `augmentation` must be None, True/'default', a dict of "
        "MedicalAugmentation arguments or a keras Layer. "
        f"Received: augmentation={augmentation!r}"
    )


def build_classifier(
    backbone,
    num_classes,
    input_shape,
    weights=None,
    head="avg",
    dropout=0.2,
    hidden_units=0,
    task="binary",
    augmentation=None,
    dtype_policy=None,
    input_dtype="uint8",
    grey_weights="fold",
    window=None,
    backbone_training="auto",
    name=None,
):
    """Builds a transfer-learning classifier that takes raw pixels.

    The model is `pixels -> IntensityScaling (or Window) -> [augmentation, only
    when training] -> [GreyToRGB] -> BackbonePreprocessing -> backbone -> pooling
    -> [hidden Dense] -> Dropout -> Dense`. The backbone is one nested
    `keras.Model` named after its registry key; `backbone_blocks(model)` lists its
    blocks and `freeze_backbone(model, k)` freezes the first `k`. A pretrained
    backbone is called with `training=False` (`backbone_training="auto"`), so its
    BatchNormalization always uses the ImageNet statistics, the usual practice for
    fine-tuning on small data; a backbone trained from scratch (`weights=None`)
    updates them. The output layer computes in float32 under mixed precision.

    Args:
        backbone: registry name (`kmedimg.models.list_backbones()`).
        num_classes: number of classes; 1 (or 2) for `task="binary"`.
        input_shape: `(height, width, channels)` of the pipeline's images,
            channels 1 or 3.
        weights: `None`, `"imagenet"`, a weights file or a kmedimg run directory /
            `.keras` model whose backbone to reuse. Defaults to `None`.
        head: global pooling, `"avg"`, `"gem"` (`GeMPooling2D`) or `"max"`.
            Defaults to `"avg"`.
        dropout: dropout rate before the output layer. Defaults to `0.2`.
        hidden_units: width of an optional ReLU Dense layer before the output,
            0 for none. Defaults to `0`.
        task: `"binary"` (1 sigmoid unit), `"multiclass"` (softmax) or
            `"multilabel"` (sigmoid per class). Defaults to `"binary"`.
        augmentation: `None`, `True` (default `MedicalAugmentation`), a dict of
            `MedicalAugmentation` arguments, or any Keras layer. Defaults to `None`.
        dtype_policy: e.g. `"mixed_bfloat16"` for the backbone and head; `None`
            keeps the global policy. Defaults to `None`.
        input_dtype: stored pixel type, `"uint8"`, `"uint16"` or `"float"`
            (already [0, 1]). Defaults to `"uint8"`.
        grey_weights: one-channel input with pretrained weights: `"fold"` the first
            convolution or `"replicate"` the channel. Defaults to `"fold"`.
        window: `(center, width)` to apply a CT `Window` instead of
            `IntensityScaling`, in stored units. Defaults to `None`.
        backbone_training: `"auto"` (inference mode when pretrained), `"inference"`
            (always) or `"follow"` (the model's training flag). Defaults to `"auto"`.
        name: model name. Defaults to `"<backbone>_classifier"`.

    Returns:
        An uncompiled `keras.Model`.

    Example:

    >>> model = build_classifier("mobilenetv2", 1, (96, 96, 1), weights="imagenet")
    >>> freeze_backbone(model, "all")
    >>> model.compile("adam", "binary_crossentropy")
    """
    record = get_backbone(backbone)
    if task not in TASKS:
        raise ValueError(f"Argument `task` must be one of {list(TASKS)}. Received: task={task!r}")
    if head not in HEADS:
        raise ValueError(f"Argument `head` must be one of {list(HEADS)}. Received: head={head!r}")
    if backbone_training not in BACKBONE_TRAINING:
        raise ValueError(
            f"Argument `backbone_training` must be one of {list(BACKBONE_TRAINING)}. "
            f"Received: backbone_training={backbone_training!r}"
        )
    if input_dtype not in INPUT_RANGES:
        raise ValueError(
            f"Argument `input_dtype` must be one of {sorted(INPUT_RANGES)}. "
            f"Received: input_dtype={input_dtype!r}"
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"Argument `dropout` must be in [0, 1). Received: dropout={dropout}")
    if task == "binary":
        if num_classes not in (1, 2):
            raise ValueError(
                "A binary task has one sigmoid output; pass num_classes=1 (or 2). "
                f"Received: num_classes={num_classes}"
            )
        units, activation = 1, "sigmoid"
    elif task == "multiclass":
        if num_classes < 2:
            raise ValueError(f"A multiclass task needs num_classes >= 2. Received: num_classes={num_classes}")
        units, activation = int(num_classes), "softmax"
    else:
        if num_classes < 1:
            raise ValueError(f"A multilabel task needs num_classes >= 1. Received: num_classes={num_classes}")
        units, activation = int(num_classes), "sigmoid"
    input_shape = tuple(int(v) for v in input_shape)
    channels = input_shape[-1]

    with _dtype_policy(dtype_policy):
        backbone_model = build_backbone(record, input_shape, weights=weights, grey_weights=grey_weights)
        inputs = keras.Input(shape=input_shape, name="pixels")
        if window is not None:
            center, width = window
            x = Window(center, width, name="window")(inputs)
        else:
            x = IntensityScaling(pixel_dtype=input_dtype, name="intensity_scaling")(inputs)
        augment = _augmentation_layer(augmentation)
        if augment is not None:
            x = augment(x)
        if channels == 1 and backbone_model.input.shape[-1] == 3:
            x = GreyToRGB(name="grey_to_rgb")(x)
        x = BackbonePreprocessing(record.preprocessing, name="backbone_preprocessing")(x)
        inference = backbone_training == "inference" or (
            backbone_training == "auto" and weights is not None
        )
        x = backbone_model(x, training=False) if inference else backbone_model(x)
        if head == "avg":
            x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
        elif head == "max":
            x = keras.layers.GlobalMaxPooling2D(name="pool")(x)
        else:
            x = GeMPooling2D(name="pool")(x)
        if hidden_units:
            x = keras.layers.Dense(int(hidden_units), activation="relu", name="head_hidden")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name="head_dropout")(x)
        outputs = keras.layers.Dense(units, activation=activation, dtype="float32", name="predictions")(x)
    return keras.Model(inputs, outputs, name=name or f"{record.name}_classifier")
