"""A two-output view of a classifier for Grad-CAM: (feature map, predictions)."""

import keras

from kmedimg.models.backbones import get_backbone
from kmedimg.models.pretrained import get_backbone_model


def feature_model(model, layer_name=None):
    """Returns `keras.Model(model.input, [feature_map, predictions])`.

    The classifier's backbone is a nested model, so its inner layers are not
    reachable from the outer graph; this rebuilds the (linear) classifier chain
    around a two-output copy of the backbone graph sharing the same layers and
    weights. Use it for Grad-CAM: the gradient of a prediction with respect to
    the feature map.

    Args:
        model: a classifier from `build_classifier`.
        layer_name: backbone layer whose output to return. Defaults to the
            registry's `last_conv_layer`.

    Returns:
        A `keras.Model` with outputs `[feature_map, predictions]`.
    """
    backbone = get_backbone_model(model)
    if layer_name is None:
        layer_name = get_backbone(backbone.name).last_conv_layer
    try:
        layer = backbone.get_layer(layer_name)
    except ValueError as error:
        raise ValueError(
            f"Backbone {backbone.name!r} has no layer {layer_name!r}. Received: layer_name={layer_name!r}"
        ) from error
    inner = keras.Model(backbone.input, [layer.output, backbone.output], name=f"{backbone.name}_features")
    x = model.input
    features = None
    for outer_layer in model.layers[1:]:
        if outer_layer is backbone:
            features, x = inner(x, training=False)
        else:
            x = outer_layer(x, training=False) if _takes_training(outer_layer) else outer_layer(x)
    return keras.Model(model.input, [features, x], name=f"{model.name}_features")


def _takes_training(layer):
    return "training" in getattr(layer, "_call_signature_parameters", [])
