"""Saved classifiers of the previous format, as `ImageClassifier`s.

kmedimg 0.1.0's `build_classifier` returned an anonymous functional model:
`pixels -> intensity_scaling (or window) -> [augmentation] -> [grey_to_rgb] ->
backbone_preprocessing -> <backbone> -> pool -> [head_hidden] -> [head_dropout] ->
predictions` (a Dense with the sigmoid/softmax). Run directories written then hold
such a `model.keras`; `as_image_classifier` turns one into an `ImageClassifier`
with the same layers' weights and the same outputs.
"""

import keras

from kmedimg.layers import GeMPooling2D, IntensityScaling, Window
from kmedimg.models.backbones import BACKBONES
from kmedimg.models.image_classifier import ImageClassifier

LEGACY_VERSION = "0.1.0"
"""The kmedimg version whose `build_classifier` wrote plain functional classifiers."""

_POOLING = {
    keras.layers.GlobalAveragePooling2D: "avg",
    keras.layers.GlobalMaxPooling2D: "max",
    GeMPooling2D: "gem",
}
_EXPECTED = (
    "an ImageClassifier, or a functional classifier written by kmedimg "
    f"{LEGACY_VERSION}'s build_classifier (input 'pixels', layers 'intensity_scaling' or "
    "'window', 'backbone_preprocessing', one nested backbone named after a registered "
    "key, 'pool' and a 'predictions' Dense with a sigmoid or softmax activation)"
)


def as_image_classifier(model, task=None, input_dtype=None):
    """Returns `model` as an `ImageClassifier`.

    An `ImageClassifier` is returned unchanged. A classifier saved by kmedimg
    0.1.0 (a plain functional model) is rebuilt as an `ImageClassifier` around the
    same backbone and augmentation layers, with the head's weights copied, so it
    computes the same outputs.

    Args:
        model: a `keras.Model`, e.g. from `keras.saving.load_model(".../model.keras")`.
        task: the task of an old model, `"binary"`, `"multiclass"` or
            `"multilabel"`. Defaults to `None`: read from the output layer (one
            unit is binary, softmax is multiclass, several sigmoids multilabel); a
            one-label multilabel model needs `task="multilabel"`.
        input_dtype: the stored pixel type of an old model. Defaults to `None`:
            read from its `intensity_scaling` layer. An old model with a `window`
            layer does not record it and needs it here.

    Returns:
        An `ImageClassifier`.

    Raises:
        ValueError: when `model` is neither, naming the layers expected and the
            kmedimg version that wrote such files.

    Example:

    >>> model = as_image_classifier(keras.saving.load_model("runs/old/model.keras"))
    >>> model.task, model.backbone_name
    ('binary', 'mobilenetv2')
    """
    if isinstance(model, ImageClassifier):
        return model
    layers = {layer.name: layer for layer in getattr(model, "layers", [])}
    backbones = [layer for layer in layers.values() if isinstance(layer, keras.Model) and layer.name in BACKBONES]
    scaling = layers.get("intensity_scaling", layers.get("window"))
    output = layers.get("predictions")
    activation = getattr(getattr(output, "activation", None), "__name__", None)
    pool = layers.get("pool")
    if (
        not isinstance(model, keras.Model)
        or len(backbones) != 1
        or not isinstance(scaling, (IntensityScaling, Window))
        or "backbone_preprocessing" not in layers
        or type(pool) not in _POOLING
        or not isinstance(output, keras.layers.Dense)
        or activation not in ("sigmoid", "softmax")
        or getattr(model, "input", None) is None
        or model.inputs[0].name != "pixels"
    ):
        names = list(layers) if layers else None
        raise ValueError(
            f"Expected {_EXPECTED}. Received: model={getattr(model, 'name', model)!r} with layers {names}"
        )
    backbone = backbones[0]
    units = int(output.units)
    if task is None:
        task = "binary" if units == 1 else ("multiclass" if activation == "softmax" else "multilabel")
    window = None
    if isinstance(scaling, Window):
        window = (scaling.center, scaling.width)
        if input_dtype is None:
            raise ValueError(
                f"A kmedimg {LEGACY_VERSION} model with a CT window does not record its stored pixel "
                "type; pass input_dtype (the run config's model.input_dtype). Received: input_dtype=None"
            )
    else:
        input_dtype = input_dtype or scaling.pixel_dtype
    hidden = layers.get("head_hidden")
    dropout = layers.get("head_dropout")
    # The augmentation was any Keras layer, under its own name; it is the one layer
    # the builder did not name.
    known = {"pixels", "intensity_scaling", "window", "grey_to_rgb", "backbone_preprocessing", backbone.name,
             "pool", "head_hidden", "head_dropout", "predictions"}
    unknown = [layer for name, layer in layers.items() if name not in known]
    if len(unknown) > 1:
        raise ValueError(
            f"Expected {_EXPECTED}, with at most one augmentation layer. Received: model={model.name!r} "
            f"with the unexpected layers {[layer.name for layer in unknown]}"
        )
    classifier = ImageClassifier(
        backbone,
        units,
        task=task,
        input_shape=tuple(model.inputs[0].shape[1:]),
        input_dtype=input_dtype,
        window=window,
        augmentation=unknown[0] if unknown else None,
        head=_POOLING[type(pool)],
        hidden_units=0 if hidden is None else int(hidden.units),
        dropout=0.0 if dropout is None else float(dropout.rate),
        backbone_training="inference" if _called_in_inference_mode(model, backbone) else "follow",
        head_dtype=pool.dtype_policy,
        name=model.name,
    )
    pairs = [(pool, classifier.pooler), (hidden, classifier.hidden_dense), (output, classifier.output_dense)]
    for old_layer, new_layer in pairs:
        if old_layer is not None:
            new_layer.set_weights(old_layer.get_weights())
            new_layer.trainable = old_layer.trainable
    return classifier


def _called_in_inference_mode(model, backbone):
    """Whether the functional graph calls the backbone with `training=False`."""
    for layer_config in model.get_config()["layers"]:
        if layer_config.get("name") == backbone.name:
            for node in layer_config.get("inbound_nodes", []):
                if isinstance(node, dict) and node.get("kwargs", {}).get("training") is False:
                    return True
    return False
