"""Where a feature map's cells sit on the input image (receptive-field arithmetic).

Grad-CAM upsamples a coarse feature map to the input; with 'valid' convolutions the
usual "the map spans the image evenly" assumption misplaces it by up to half a
receptive field. For plain chains of conv/pool/padding layers (LeNet, AlexNet, VGG)
the exact centre of each cell is computed here.
"""

import numpy as np


def _axis_geometry(layer, axis, start, jump):
    """Updates (start, jump) of one spatial axis through a conv/pool/padding layer."""
    size = layer.input.shape[1 + axis]
    if hasattr(layer, "padding") and isinstance(layer.padding, (tuple, list)) and not hasattr(
            layer, "kernel_size") and not hasattr(layer, "pool_size"):  # ZeroPadding2D
        before = layer.padding[axis]
        before = before[0] if isinstance(before, (tuple, list)) else before
        return start - jump * before, jump
    kernel = getattr(layer, "kernel_size", None) or getattr(layer, "pool_size", None)
    strides = getattr(layer, "strides", None) or kernel
    dilation = getattr(layer, "dilation_rate", (1, 1)) or (1, 1)
    effective = (kernel[axis] - 1) * dilation[axis] + 1
    stride = strides[axis]
    if layer.padding == "same" and size is not None:
        out = -(-size // stride)
        pad_before = max((out - 1) * stride + effective - size, 0) // 2
    else:
        pad_before = 0
    return start + jump * ((effective - 1) / 2 - pad_before), jump * stride


def feature_geometry(backbone, layer):
    """Where the target layer's feature-map cells sit on the input image.

    Args:
        backbone: the model holding `layer` (an `ImageClassifier`'s `backbone`; its
            input has the classifier's height and width).
        layer: a layer of `backbone`.

    Returns `((start_y, jump_y), (start_x, jump_x))` — cell `i` is centred on input pixel
    `start + i * jump` — computed by receptive-field arithmetic when the path from the
    backbone input to `layer` is a plain chain (LeNet, AlexNet, VGG), else None (the
    usual Grad-CAM assumption that the map spans the image evenly is then used). With
    'valid' convolutions the evenly-spread assumption misplaces the map by up to half a
    receptive field.
    """
    if not any(inner is layer for inner in backbone.layers):
        return None
    geometry = [(0.0, 1.0), (0.0, 1.0)]
    previous = None
    for inner in backbone.layers:
        if type(inner).__name__ == "InputLayer":
            previous = inner
            continue
        if isinstance(inner.input, (list, tuple)) or hasattr(inner, "layers"):
            return None  # a merge or a nested model: not a chain
        if previous is not None and inner.input is not previous.output:
            return None
        spatial = hasattr(inner, "kernel_size") or hasattr(inner, "pool_size") or (
            type(inner).__name__ == "ZeroPadding2D")
        if spatial and "Global" not in type(inner).__name__:
            geometry = [_axis_geometry(inner, axis, *geometry[axis]) for axis in (0, 1)]
        elif tuple(inner.input.shape[1:3]) != tuple(inner.output.shape[1:3]):
            return None  # resizing, cropping, reshaping: unknown geometry
        previous = inner
        if inner is layer:
            return tuple(geometry)
    return None


def interpolation_matrix(output_size, feature_size, start=None, jump=None):
    """[output_size, feature_size] bilinear weights from image pixels to feature cells."""
    if start is None:
        jump = output_size / feature_size
        start = jump / 2 - 0.5
    position = (np.arange(output_size) - start) / jump
    position = np.clip(position, 0, feature_size - 1)
    lower = np.floor(position).astype(int)
    upper = np.minimum(lower + 1, feature_size - 1)
    fraction = position - lower
    matrix = np.zeros((output_size, feature_size), np.float32)
    matrix[np.arange(output_size), lower] += 1 - fraction
    matrix[np.arange(output_size), upper] += fraction
    return matrix
