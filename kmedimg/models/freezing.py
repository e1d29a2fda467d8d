"""Blocks of a classifier's backbone, and freezing by block."""

import math
import numbers

import keras

from kmedimg.models.backbones import get_backbone
from kmedimg.models.pretrained import get_backbone_model


def backbone_blocks(model):
    """The backbone's layers grouped into its ordered blocks.

    Args:
        model: an `ImageClassifier` (or an old saved classifier, or a bare
            registered backbone model), also after a `.keras` save/load.

    Returns:
        List of `(block_name, [keras layers])`; the stem is block 0; the head is
        not included. Every weighted backbone layer is in exactly one block.

    Example:

    >>> model = build_classifier("mobilenetv2", 1, (96, 96, 1))
    >>> [name for name, _ in backbone_blocks(model)][:3]
    ['stem', 'block_0', 'block_1']
    """
    backbone = get_backbone_model(model)
    return get_backbone(backbone.name).assign_blocks(backbone)


def check_freeze_depth(freeze_depth, where=None):
    """Validates a freeze depth: an int >= 0, a fraction in (0, 1], or `"all"`.

    The rule every layer of kmedimg shares (recipe stages, the tuner, `freeze_backbone`);
    how many blocks an int may name depends on the backbone (`resolve_freeze_depth`).

    Args:
        freeze_depth: the value to check.
        where: what is being checked, prefixed to the error (`"Stage 'finetune'"`).
            Defaults to `None`.

    Raises:
        ValueError: listing the allowed forms.
    """
    valid = (
        freeze_depth == "all"
        or (isinstance(freeze_depth, numbers.Integral) and not isinstance(freeze_depth, bool)
            and freeze_depth >= 0)
        or (isinstance(freeze_depth, numbers.Real) and not isinstance(freeze_depth, bool)
            and not isinstance(freeze_depth, numbers.Integral) and 0.0 < freeze_depth <= 1.0)
    )
    if not valid:
        subject = f"{where}: `freeze_depth`" if where else "Argument `freeze_depth`"
        raise ValueError(
            f"{subject} must be an int >= 0 (blocks from the stem), a fraction in (0, 1] of "
            f"the blocks, or 'all'. Received: freeze_depth={freeze_depth!r}"
        )


def resolve_freeze_depth(freeze_depth, num_blocks):
    """Turns an int, a fraction in (0, 1] or `"all"` into a number of frozen blocks.

    Fractions round half up and a positive fraction freezes at least the stem; an int
    larger than `num_blocks` is an error (the recipe was written for a deeper backbone).

    Raises:
        ValueError: listing the allowed values.
    """
    check_freeze_depth(freeze_depth)
    if freeze_depth == "all":
        return num_blocks
    if isinstance(freeze_depth, numbers.Integral):
        if freeze_depth > num_blocks:
            raise ValueError(
                f"Argument `freeze_depth` is larger than the backbone's {num_blocks} blocks. "
                f"Use an int in [0, {num_blocks}], a fraction in (0, 1] or 'all'. "
                f"Received: freeze_depth={freeze_depth}"
            )
        return int(freeze_depth)
    # Round half up, but a positive fraction always freezes at least the stem.
    return max(1, min(num_blocks, math.floor(freeze_depth * num_blocks + 0.5)))


def freeze_backbone(model, freeze_depth):
    """Freezes the first `freeze_depth` backbone blocks and unfreezes the rest.

    The stem is block 0, so `freeze_depth=1` freezes only the stem and
    `freeze_depth=0` trains the whole backbone. The head always stays trainable.
    Frozen BatchNormalization layers run in inference mode (Keras 3 runs a
    non-trainable BatchNormalization with its moving statistics, whatever the
    `training` flag). The state is stored in each layer's `trainable` flag, so it
    survives `.keras` save/load. Compile the model after changing it.

    Args:
        model: an `ImageClassifier` (or an old saved classifier).
        freeze_depth: number of blocks (int), a fraction of the blocks in
            (0, 1] (rounded, at least one block), or `"all"`.

    Returns:
        The number of frozen blocks.

    Example:

    >>> model = build_classifier("resnet50", 1, (64, 64, 3))
    >>> freeze_backbone(model, 0.5)
    3
    """
    blocks = backbone_blocks(model)
    depth = resolve_freeze_depth(freeze_depth, len(blocks))
    backbone = get_backbone_model(model)
    # Keras' `Model.trainable = True` does not reach the layers of a functional
    # model, so every layer is set explicitly (and nested models recursively).
    _set_trainable(backbone, True)
    for _, layers in blocks[:depth]:
        for layer in layers:
            _set_trainable(layer, False)
    return depth


def _set_trainable(layer, value):
    layer.trainable = value
    if isinstance(layer, keras.Model):
        for sublayer in layer.layers:
            _set_trainable(sublayer, value)
