"""`build_classifier`: the factory that builds a backbone and an `ImageClassifier` around it."""

import contextlib

import keras

from kmedimg.models.backbones import get_backbone
from kmedimg.models.image_classifier import ImageClassifier, check_arguments
from kmedimg.models.pretrained import build_backbone

BACKBONE_TRAINING = ("auto", "inference", "follow")
"""`"auto"` is `"inference"` for a pretrained backbone and `"follow"` for a random one."""


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

    A factory for `ImageClassifier`: it builds the registered backbone with its
    weights (`build_backbone`) and composes the classifier around it,
    `pixels -> IntensityScaling (or Window) -> [augmentation, only when training]
    -> [GreyToRGB] -> BackbonePreprocessing -> backbone -> pooling -> [hidden
    Dense] -> Dropout -> Dense (logits) -> sigmoid/softmax`. The backbone is one
    nested `keras.Model` named after its registry key; `backbone_blocks(model)`
    lists its blocks and `freeze_backbone(model, k)` freezes the first `k` (a
    frozen BatchNormalization keeps its statistics). A pretrained backbone is
    called with `training=False` in the graph (`backbone_training="auto"`), a
    backbone trained from scratch (`weights=None`) follows the training flag; see
    `ImageClassifier` for how Keras 3's `fit` treats that flag. The output layers
    compute in float32 under mixed precision.

    Args:
        backbone: registry name (`kmedimg.models.list_backbones()`).
        num_classes: number of classes; 1 (or 2, stored as 1) for `task="binary"`.
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
        An uncompiled `ImageClassifier`.

    Example:

    >>> model = build_classifier("mobilenetv2", 1, (96, 96, 1), weights="imagenet")
    >>> freeze_backbone(model, "all")
    >>> model.compile("adam", "binary_crossentropy")
    """
    record = get_backbone(backbone)
    check_arguments(task, num_classes, head, dropout, hidden_units, input_dtype)
    if backbone_training not in BACKBONE_TRAINING:
        raise ValueError(
            f"Argument `backbone_training` must be one of {list(BACKBONE_TRAINING)}. "
            f"Received: backbone_training={backbone_training!r}"
        )
    if backbone_training == "auto":
        backbone_training = "follow" if weights is None else "inference"
    input_shape = tuple(int(v) for v in input_shape)
    with _dtype_policy(dtype_policy):
        backbone_model = build_backbone(record, input_shape, weights=weights, grey_weights=grey_weights)
        return ImageClassifier(
            backbone_model,
            num_classes,
            task=task,
            input_shape=input_shape,
            input_dtype=input_dtype,
            window=window,
            augmentation=augmentation,
            head=head,
            hidden_units=int(hidden_units),
            dropout=dropout,
            backbone_training=backbone_training,
            head_dtype=keras.config.dtype_policy(),
            name=name or f"{record.name}_classifier",
        )
