"""Build a registered backbone with its weights: ImageNet, a file or a run directory.

Grey input with three-channel weights "folds" the first convolution: with the
family preprocessing written per channel as `z_c = A_c * g + B_c` (measured, so
it covers preprocessing inside the model too) and the grey path as
`y = alpha * g + beta`, the one-channel kernel is `sum_c (A_c / alpha) * W_c` and
the constant `sum W_c * (B_c - A_c * beta / alpha)` moves into the convolution's
bias or the following BatchNormalization's moving mean. Away from the zero-padded
border the folded network computes exactly what the RGB network computes on the
replicated grey image. (It also needs a third of the first layer's
multiply-adds, but end to end on CPU the difference is within noise:
`benchmarks/grey_fold.py`.)
"""

import os

import keras
import numpy as np

from kmedimg.layers.backbone_preprocessing import BackbonePreprocessing
from kmedimg.models import bank
from kmedimg.models.backbones import BACKBONES, get_backbone
from kmedimg.models.image_classifier import ImageClassifier
from kmedimg.models.imagenet_files import check_imagenet_available

GREY_WEIGHTS = ("fold", "replicate")
_CONV_TYPES = (keras.layers.Conv2D,)


def check_input_shape(record, input_shape, weights=None):
    """Validates `(height, width, channels)` against a backbone record.

    Raises:
        ValueError: naming the backbone, the allowed sizes and the received shape.
    """
    if len(input_shape) != 3 or input_shape[-1] not in (1, 3):
        raise ValueError(
            "Argument `input_shape` must be (height, width, channels) with 1 or 3 "
            f"channels. Received: input_shape={tuple(input_shape)}"
        )
    height, width = input_shape[0], input_shape[1]
    if min(height, width) < record.min_size:
        raise ValueError(
            f"Backbone {record.name!r} needs inputs of at least {record.min_size}x"
            f"{record.min_size}. Received: input_shape={tuple(input_shape)}"
        )
    if weights == "imagenet":
        if not record.has_imagenet:
            raise ValueError(
                f"Backbone {record.name!r} has no ImageNet weights; use weights=None "
                "or a weights file / run directory. Received: weights='imagenet'"
            )
        if record.imagenet_sizes and (height != width or height not in record.imagenet_sizes):
            raise ValueError(
                f"ImageNet weights for {record.name!r} exist for square inputs of sizes "
                f"{list(record.imagenet_sizes)}; resize the images (pipeline image_size) to "
                f"one of them. Received: input_shape={tuple(input_shape)}"
            )


def get_backbone_model(model):
    """The backbone of a classifier, or `model` itself if it is a registered backbone.

    Args:
        model: an `ImageClassifier` (its `backbone`), a classifier saved by
            kmedimg 0.1.0 (its one nested model named after a registered
            backbone) or a bare registered backbone model.

    Raises:
        ValueError: if the model holds no single registered backbone.
    """
    if isinstance(model, ImageClassifier):
        return model.backbone
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    registered = [layer for layer in nested if layer.name in BACKBONES]
    if len(registered) == 1:
        return registered[0]
    if not nested and model.name in BACKBONES:
        return model
    raise ValueError(
        "Expected a kmedimg classifier with exactly one nested backbone model "
        f"(named after a registered backbone). Received: model={model.name!r} with "
        f"nested models {[layer.name for layer in nested]}"
    )


def _leaves(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaves(layer)
        elif layer.weights:
            yield layer


def _top_level_before_first_conv(model):
    """Top-level layers before the one holding the first convolution, and that conv."""
    before = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        inner = list(_leaves(layer)) if isinstance(layer, keras.Model) else [layer]
        convs = [leaf for leaf in inner if isinstance(leaf, keras.layers.Conv2D)]
        if convs:
            return before, convs[0]
        before.append(layer)
    raise ValueError(f"No Conv2D layer found in backbone {model.name!r}; cannot fold grey input.")


def _affine(preprocessing_mode, model, channels, height, width):
    """Per-channel `(scale, offset)` of [0, 1] grey -> input of the first conv."""
    layers_before, _ = _top_level_before_first_conv(model)
    preprocessing = BackbonePreprocessing(preprocessing_mode)
    values = []
    for grey in (0.0, 1.0):
        x = np.full((1, height, width, channels), grey, dtype="float32")
        x = preprocessing(x)
        for layer in layers_before:
            x = layer(x)
        x = keras.ops.convert_to_numpy(x)
        values.append(x[0, x.shape[1] // 2, x.shape[2] // 2, :].astype("float64"))
    return values[1] - values[0], values[0]


def _fold_first_conv(source, target, record, height, width):
    scale3, offset3 = _affine(record.preprocessing, source, 3, height, width)
    scale1, offset1 = _affine(record.preprocessing, target, 1, height, width)
    alpha, beta = float(scale1[0]), float(offset1[0])
    _, conv3 = _top_level_before_first_conv(source)
    _, conv1 = _top_level_before_first_conv(target)
    kernel = keras.ops.convert_to_numpy(conv3.kernel).astype("float64")
    folded = np.einsum("hwco,c->hwo", kernel, scale3 / alpha)[:, :, None, :]
    delta = np.einsum("hwco,c->o", kernel, offset3 - scale3 * beta / alpha)
    conv1.kernel.assign(folded.astype(conv1.kernel.dtype))
    if conv3.use_bias:
        conv1.bias.assign((keras.ops.convert_to_numpy(conv3.bias) + delta).astype("float32"))
        return conv1, None
    return conv1, delta


def copy_weights(source, target, record, fold=False):
    """Copies a backbone's weights into another of the same architecture.

    Layers are matched by position (the two models come from the same
    constructor, but auto-generated layer names can differ). With `fold=True`
    the source has 3 input channels and the target 1 (see the module docstring).

    Raises:
        ValueError: if the architectures do not match.
    """
    source_leaves, target_leaves = list(_leaves(source)), list(_leaves(target))
    if len(source_leaves) != len(target_leaves):
        raise ValueError(
            f"Cannot copy weights: the source backbone {source.name!r} has "
            f"{len(source_leaves)} weighted layers, the target {target.name!r} has "
            f"{len(target_leaves)}. Received: source={source.name!r}"
        )
    delta = None
    conv_target = None
    if fold:
        height, width = target.input.shape[1], target.input.shape[2]
        conv_target, delta = _fold_first_conv(source, target, record, height, width)
    before_conv = True
    for source_layer, target_layer in zip(source_leaves, target_leaves):
        if fold and before_conv:
            if target_layer is conv_target:
                before_conv = False
            # Folded: the pre-conv preprocessing stays per-grey, the conv is set.
            continue
        source_values = source_layer.get_weights()
        if delta is not None:
            if not isinstance(target_layer, keras.layers.BatchNormalization):
                raise ValueError(
                    f"Cannot fold grey input into {record.name!r}: its first convolution has "
                    "no bias and no BatchNormalization after it. Use grey_weights='replicate'."
                )
            names = [variable.path.split("/")[-1] for variable in source_layer.weights]
            source_values[names.index("moving_mean")] = source_values[names.index("moving_mean")] - delta
            delta = None
        target_shapes = [tuple(variable.shape) for variable in target_layer.weights]
        if [tuple(value.shape) for value in source_values] != target_shapes:
            raise ValueError(
                f"Cannot copy weights of layer {source_layer.name!r} into {target_layer.name!r}: "
                f"shapes {[v.shape for v in source_values]} vs {target_shapes}. "
                f"Received: source={source.name!r}"
            )
        target_layer.set_weights(source_values)


def _saved_model_file(path):
    if os.path.isdir(path):
        candidate = os.path.join(path, "model.keras")
        if not os.path.exists(candidate):
            raise ValueError(
                f"Argument `weights` is a directory without a model.keras (a kmedimg run "
                f"directory has one). Received: weights={path!r}"
            )
        return candidate
    return path


def _load_saved_backbone(path, record):
    # The kmedimg layers and ImageClassifier are registered by the imports above.
    model = keras.saving.load_model(_saved_model_file(path), compile=False, safe_mode=True)
    backbone = get_backbone_model(model)
    if backbone.name != record.name:
        raise ValueError(
            f"The saved model {path!r} holds a {backbone.name!r} backbone, not "
            f"{record.name!r}. Received: weights={path!r}"
        )
    return backbone


def build_backbone(backbone, input_shape, weights=None, grey_weights="fold"):
    """Builds a registered backbone and loads its weights.

    Args:
        backbone: registry name or `Backbone` record.
        input_shape: `(height, width, channels)`, channels 1 or 3.
        weights: `None` (random), `"imagenet"` (standard Keras download and cache),
            `"bank:NAME"` (an entry of the local weights bank, `kmedimg.models.bank`),
            a weights file (`.h5` / `.weights.h5` of this backbone), a saved
            `.keras` model or a kmedimg run directory (its `model.keras`) whose
            backbone to reuse. Defaults to `None`.
        grey_weights: how three-channel weights meet one-channel input: `"fold"`
            the first convolution (see the module docstring) or `"replicate"`
            (returns a 3-channel backbone; put `GreyToRGB` in front).
            Defaults to `"fold"`.

    Returns:
        A `keras.Model` named after the registry key.
    """
    record = get_backbone(backbone)
    if grey_weights not in GREY_WEIGHTS:
        raise ValueError(
            f"Argument `grey_weights` must be one of {list(GREY_WEIGHTS)}. "
            f"Received: grey_weights={grey_weights!r}"
        )
    input_shape = tuple(int(v) for v in input_shape)
    check_input_shape(record, input_shape, weights)
    height, width, channels = input_shape
    if weights is None:
        return record.build(input_shape)
    if channels == 1 and grey_weights == "replicate":
        input_shape, channels = (height, width, 3), 3
    if isinstance(weights, str) and weights.startswith(bank.PREFIX):
        weights = bank.entry_path(weights)
    if weights == "imagenet":
        check_imagenet_available(record, (height, width, 3))
        source = record.build((height, width, 3), weights="imagenet")
    elif isinstance(weights, (str, os.PathLike)):
        path = os.fspath(weights)
        if not os.path.exists(path):
            raise ValueError(
                "Argument `weights` must be None, 'imagenet', or an existing weights file, "
                f".keras model or run directory. Received: weights={path!r}"
            )
        if os.path.isdir(path) or path.endswith(".keras"):
            source = _load_saved_backbone(path, record)
        else:
            target = record.build(input_shape)
            try:
                target.load_weights(path)
                return target
            except ValueError:
                if channels != 1:
                    raise
            source = record.build((height, width, 3))
            source.load_weights(path)
    else:
        raise ValueError(
            "Argument `weights` must be None, 'imagenet' or a path. "
            f"Received: weights={weights!r}"
        )
    source_channels = source.input.shape[-1]
    fresh = weights == "imagenet" or not (os.path.isdir(path) or path.endswith(".keras"))
    if fresh and source_channels == channels and tuple(source.input.shape[1:]) == input_shape:
        return source
    if source_channels == 1 and channels == 3:
        raise ValueError(
            f"The weights in {weights!r} are for one-channel input; build the classifier "
            f"with one channel. Received: input_shape={input_shape}"
        )
    target = record.build(input_shape)
    copy_weights(source, target, record, fold=(source_channels == 3 and channels == 1))
    return target
