"""`GradCam`: where does the model look? Grad-CAM and Grad-CAM++ heatmaps.

Grad-CAM (Selvaraju et al., 2017) weights the feature maps of a convolutional layer
by the spatial mean of the class score's gradient; Grad-CAM++ (Chattopadhay et al.,
2018) uses higher-order weights that localise several instances better. The class
score is the logit (`ImageClassifier.gradcam_model`), as in the Grad-CAM paper: a
confident model's probability is saturated and has no gradient. Occlusion
sensitivity needs no gradients (`kmedimg.evaluation.occlusion`).

The layer is the backbone registry's `last_conv_layer`, unless its map is smaller
than `MIN_FEATURE_SIZE` cells a side at the model's input size (a 1x1 map gives a
uniform heatmap): then the deepest block output whose map is large enough
(`choose_layer`). When no block output is, the explainer says so in `warning` (and
a `GradCamWarning`) and suggests occlusion.

Example:

```python
from kmedimg.evaluation import GradCam, save_overlay

explainer = GradCam(model)                 # an ImageClassifier (build_classifier)
heatmaps = explainer(images)               # [B, H, W] in [0, 1]
save_overlay("case.png", images[0], heatmaps[0], title=explainer.layer_name)
```
"""

import warnings

import keras
import numpy as np
import tensorflow as tf

from kmedimg.evaluation.geometry import feature_geometry, interpolation_matrix
from kmedimg.evaluation.model_file import as_classifier
from kmedimg.evaluation.scores import EPSILON, default_class, logit_score
from kmedimg.models import backbone_blocks

METHODS = ("gradcam", "gradcam++")
MIN_FEATURE_SIZE = 4
"""Smallest feature map side (cells) Grad-CAM explains without a warning."""


class GradCamWarning(UserWarning):
    """Grad-CAM cannot localise at this input size: the feature map is too small."""


def feature_size(layer):
    """`(height, width)` of a layer's output feature map, or None when it is not one."""
    shape = getattr(layer, "output", None)
    shape = None if shape is None or isinstance(shape, (list, tuple)) else tuple(shape.shape)
    if shape is None or len(shape) != 4 or None in shape[1:3]:
        return None
    return int(shape[1]), int(shape[2])


def _size_text(size):
    return "no 2D map" if size is None else f"{size[0]}×{size[1]}"


def choose_layer(model, min_size=MIN_FEATURE_SIZE):
    """The backbone layer Grad-CAM explains, and why.

    The registry's `last_conv_layer` when its map is at least `min_size` cells a
    side; else the deepest output of a backbone block (walking the registry's
    ordered blocks back from that layer) whose map is; else the registry layer,
    with a warning.

    Args:
        model: an `ImageClassifier`.
        min_size: smallest map side accepted. Defaults to `4`.

    Returns:
        `(layer_name, note, warning)`; `note` says why another layer than the
        registry's was chosen, `warning` why Grad-CAM cannot localise (else None).
    """
    registered = model.backbone.get_layer(model.gradcam_layer)
    size = feature_size(registered)
    if size is not None and min(size) >= min_size:
        return registered.name, None, None
    ordered = [layer for layer in model.backbone.layers if not isinstance(layer, keras.layers.InputLayer)]
    before = ordered[:ordered.index(registered)]
    block_ends = {id(layers[-1]) for _, layers in backbone_blocks(model) if layers}
    pixels = "×".join(str(v) for v in model.input_shape[1:3])
    for layer in reversed(before):
        candidate = feature_size(layer)
        if id(layer) in block_ends and candidate is not None and min(candidate) >= min_size:
            note = (f"Grad-CAM explains {layer.name!r} ({_size_text(candidate)} map), the deepest "
                    f"block output of {model.backbone_name!r} with a map of at least {min_size}×{min_size} "
                    f"at {pixels} input: the registered layer {registered.name!r} has a "
                    f"{_size_text(size)} map there.")
            return layer.name, note, None
    return registered.name, None, _too_small(model, registered.name, size, min_size, pixels)


def _too_small(model, layer_name, size, min_size, pixels, chosen=False):
    """Why Grad-CAM cannot localise on `layer_name`, and what to do instead."""
    if chosen:
        reason = (f"layer {layer_name!r} of {model.backbone_name!r} has a {_size_text(size)} feature map at "
                  f"{pixels} input (under {min_size}×{min_size})")
        fix = "Leave the layer to the default (the deepest block output of at least 4×4), use"
    else:
        reason = (f"{model.backbone_name!r} at {pixels} input has no block output with a feature map of at "
                  f"least {min_size}×{min_size} (layer {layer_name!r} is {_size_text(size)})")
        fix = "Use"
    return (f"Grad-CAM cannot localise here: {reason}, so the heatmap is nearly uniform. {fix} occlusion "
            "sensitivity instead (kmedimg explain --method occlusion), or a larger image size.")


class GradCam:
    """Grad-CAM / Grad-CAM++ heatmaps for an `ImageClassifier`.

    Args:
        model: an `ImageClassifier` (`kmedimg.models.build_classifier`); a
            classifier saved by kmedimg 0.1.0 is converted
            (`kmedimg.models.as_image_classifier`).
        layer: name of the backbone layer to explain. Defaults to `None`
            (`choose_layer`: the registry's `last_conv_layer`, or the deepest
            block output with a map of at least 4x4).
        method: "gradcam" or "gradcam++". Defaults to `"gradcam"`.
        task: the task of an old saved model, checked against the model's.
            Defaults to `None` (the model's `task`).

    Attributes:
        layer_name: the explained layer; `feature_shape` its map's (h, w).
        note: why another layer than the registry's is explained, else None.
        warning: why the heatmaps cannot localise (map smaller than 4x4), else None.

    Example:

    ```python
    heatmaps = GradCam(model, method="gradcam++")(images, class_index=1)
    ```
    """

    def __init__(self, model, layer=None, method="gradcam", task=None):
        if method not in METHODS:
            raise ValueError(f"`method` must be one of {METHODS}. Received: method={method!r}")
        self.model = as_classifier(model, task=task)
        self.method = method
        self.task = self.model.task
        self.input_spec = tuple(int(v) for v in self.model.input_shape[1:])
        if layer is None:
            self.layer_name, self.note, self.warning = choose_layer(self.model)
        else:
            self.layer_name, self.note, self.warning = getattr(layer, "name", layer), None, None
        self._features = self.model.gradcam_model(self.layer_name, output="logits")
        target = self.model.backbone.get_layer(self.layer_name)
        self.feature_shape = feature_size(target)
        if self.feature_shape is None:
            raise ValueError(
                f"Layer {self.layer_name!r} must output a fixed-size feature map [B, h, w, C]. "
                f"Received: output shape={tuple(target.output.shape)}"
            )
        if self.warning is None and min(self.feature_shape) < MIN_FEATURE_SIZE:
            pixels = "×".join(map(str, self.input_spec[:2]))
            self.warning = _too_small(self.model, self.layer_name, self.feature_shape, MIN_FEATURE_SIZE, pixels,
                                      chosen=True)
        if self.warning:
            warnings.warn(self.warning, GradCamWarning, stacklevel=2)
        self.geometry = feature_geometry(self.model.backbone, target)
        rows, cols = ((None, None), (None, None)) if self.geometry is None else self.geometry
        self._resize_rows = tf.constant(interpolation_matrix(self.input_spec[0], self.feature_shape[0], *rows))
        self._resize_cols = tf.constant(interpolation_matrix(self.input_spec[1], self.feature_shape[1], *cols))
        self._compute = tf.function(self._heatmaps, reduce_retracing=True)

    def describe(self):
        """JSON-able facts for a report: layer, feature map size, note, warning."""
        return {"method": self.method, "layer": self.layer_name, "feature_map": list(self.feature_shape),
                "note": self.note, "warning": self.warning}

    def _heatmaps(self, images, class_index):
        with tf.GradientTape() as tape:
            activations, logits = self._features(images, training=False)
            logits = tf.cast(logits, tf.float32)
            probs = tf.cast(self.model.output_activation(logits), tf.float32)
            class_index = tf.where(class_index < 0, default_class(probs, self.task), class_index)
            score = logit_score(logits, self.task, class_index)
        grads = tf.cast(tape.gradient(score, activations), tf.float32)
        activations = tf.cast(activations, tf.float32)
        if self.method == "gradcam":
            weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        else:
            # Grad-CAM++ closed form for an exponential score (Chattopadhay et al., eq. 19).
            grads_2, grads_3 = grads**2, grads**3
            spatial_sum = tf.reduce_sum(activations, axis=(1, 2), keepdims=True)
            denominator = 2.0 * grads_2 + spatial_sum * grads_3
            denominator = tf.where(tf.abs(denominator) > EPSILON, denominator, tf.ones_like(denominator))
            alphas = grads_2 / denominator
            weights = tf.reduce_sum(alphas * tf.nn.relu(grads), axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * activations, axis=-1))
        # Bilinear upsampling that puts each feature cell over its receptive field centre.
        cam = tf.einsum("yh,bhw,xw->byx", self._resize_rows, cam, self._resize_cols)
        peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
        cam = tf.where(peak > 0, cam / tf.maximum(peak, EPSILON), tf.zeros_like(cam))
        return cam, probs, class_index

    def __call__(self, images, class_index=None, return_details=False):
        """Heatmaps [B, H, W] in [0, 1] at the input resolution.

        Args:
            images: float array [B, H, W, C] in the model's raw input range.
            class_index: int or [B] ints; binary: 1 explains the positive class, 0 the
                negative; otherwise the class/label index. The predicted class (binary:
                positive) when None. Defaults to `None`.
            return_details: also return the probabilities and explained classes.
                Defaults to `False`.
        """
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 4 or tuple(images.shape[1:]) != self.input_spec:
            raise ValueError(
                f"`images` must have shape [B, {', '.join(map(str, self.input_spec))}] (the "
                f"model input). Received: images.shape={images.shape}"
            )
        if class_index is None:
            class_index = -1
        class_index = np.broadcast_to(np.asarray(class_index, dtype=np.int32), images.shape[:1])
        cam, probs, explained = self._compute(tf.constant(images), tf.constant(class_index))
        if return_details:
            return cam.numpy(), probs.numpy(), explained.numpy()
        return cam.numpy()


def grad_cam(model, images, class_index=None, layer=None, task=None):
    """Grad-CAM heatmaps [B, H, W] in [0, 1]; see `GradCam`."""
    return GradCam(model, layer=layer, method="gradcam", task=task)(images, class_index)


def grad_cam_plus_plus(model, images, class_index=None, layer=None, task=None):
    """Grad-CAM++ heatmaps [B, H, W] in [0, 1]; see `GradCam`."""
    return GradCam(model, layer=layer, method="gradcam++", task=task)(images, class_index)
