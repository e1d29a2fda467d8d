"""A two-output view of a classifier for Grad-CAM: (feature map, predictions)."""

from kmedimg.models.legacy import as_image_classifier


def feature_model(model, layer_name=None):
    """Returns a `keras.Model` from raw pixels to `[feature_map, predictions]`.

    The same as `ImageClassifier.gradcam_model(layer_name, output="probabilities")`;
    a classifier saved by kmedimg 0.1.0 is converted first (`as_image_classifier`).

    Args:
        model: an `ImageClassifier` (`build_classifier`), or an old saved one.
        layer_name: backbone layer whose output to return. Defaults to the
            registry's `last_conv_layer`.

    Returns:
        A `keras.Model` with outputs `[feature_map, predictions]`.

    Example:

    >>> features, predictions = feature_model(build_classifier("resnet50", 1, (32, 32, 3)))(images)
    """
    return as_image_classifier(model).gradcam_model(layer_name, output="probabilities")
