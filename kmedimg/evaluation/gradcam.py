"""`GradCam`: where does the model look? Grad-CAM and Grad-CAM++ heatmaps.

Grad-CAM (Selvaraju et al., 2017) weights the feature maps of the last convolutional
layer by the spatial mean of the class score's gradient; Grad-CAM++ (Chattopadhay et
al., 2018) uses higher-order weights that localise several instances better. The
layer comes from the backbone registry record (`last_conv_layer`), never from
guessing names. Occlusion sensitivity needs no gradients: it slides a patch over the
image and records how much the class score drops (`kmedimg.evaluation.occlusion`).

The class score explained is the output layer's pre-activation score (the logit of
the class), as in the Grad-CAM paper: a confident model's probability is saturated
and has no gradient. (Models whose output layer is not a sigmoid/softmax Dense are
explained through the log-odds of their probabilities.)

Example:

```python
from kmedimg.evaluation import GradCam, save_overlay

explainer = GradCam(model)                 # finds the backbone's last conv layer
heatmaps = explainer(images)               # [B, H, W] in [0, 1]
save_overlay("case.png", images[0], heatmaps[0], title="Grad-CAM")
```
"""

import numpy as np
import tensorflow as tf

from kmedimg.evaluation.geometry import feature_geometry, interpolation_matrix
from kmedimg.evaluation.introspection import (
    Capture,
    Logits,
    backbone_names,
    infer_task,
    output_activation_layer,
    registered_backbone,
)
from kmedimg.evaluation.scores import EPSILON, class_score, default_class, logit_score
from kmedimg.models.backbones import list_backbones

METHODS = ("gradcam", "gradcam++")


def find_layer(model, name):
    """The layer called `name` in `model` or any model nested in it (depth first).

    Raises:
        ValueError: listing the nested models searched.
    """
    searched = []

    def search(container):
        searched.append(container.name)
        for layer in container.layers:
            if layer.name == name:
                return layer
        for layer in container.layers:
            if hasattr(layer, "layers"):
                found = search(layer)
                if found is not None:
                    return found
        return None

    found = search(model)
    if found is None:
        raise ValueError(
            f"No layer named {name!r} in model {model.name!r} or its nested models "
            f"{searched[1:]}. Received: layer={name!r}"
        )
    return found


def target_layer(model, layer=None):
    """The layer Grad-CAM differentiates: given, or the backbone's `last_conv_layer`.

    Args:
        model: a model built by `kmedimg.models.build_classifier` (the backbone is a
            nested model whose name is its registry name), or any Keras model when
            `layer` is given.
        layer: a layer name or Layer to use instead. Defaults to `None`.

    Raises:
        ValueError: when no registered backbone is found and no layer is given.
    """
    if layer is not None:
        return layer if not isinstance(layer, str) else find_layer(model, layer)
    found = registered_backbone(model)
    if found is not None:
        nested, record = found
        return find_layer(nested, record.last_conv_layer)
    raise ValueError(
        f"Model {model.name!r} contains no registered backbone (nested models: "
        f"{backbone_names(model)}; registered: {sorted(list_backbones())}). "
        "Pass the layer to explain, e.g. layer='conv5_block3_out'. Received: layer=None"
    )


class GradCam:
    """Grad-CAM / Grad-CAM++ heatmaps for a Keras classifier.

    Args:
        model: a model from `build_classifier` (or any Keras model, with `layer`).
        layer: layer name or Layer whose activations are explained; the backbone's
            registered `last_conv_layer` when None. Defaults to `None`.
        method: "gradcam" or "gradcam++". Defaults to `"gradcam"`.
        task: "binary", "multiclass" or "multilabel"; inferred from the output layer
            when None. Defaults to `None`.

    Example:

    ```python
    heatmaps = GradCam(model, method="gradcam++")(images, class_index=1)
    ```
    """

    def __init__(self, model, layer=None, method="gradcam", task=None):
        if method not in METHODS:
            raise ValueError(f"`method` must be one of {METHODS}. Received: method={method!r}")
        self.model = model
        self.layer = target_layer(model, layer)
        self.method = method
        self.task = task or infer_task(model)
        self.input_spec = tuple(int(v) for v in model.inputs[0].shape[1:])
        self._output_layer = output_activation_layer(model)
        self._output_activation = getattr(self._output_layer, "activation", None)
        self.geometry = feature_geometry(model, self.layer)
        feature_shape = tuple(self.layer.output.shape[1:3])
        if len(feature_shape) != 2 or None in feature_shape:
            raise ValueError(
                f"Layer {self.layer.name!r} must output a fixed-size feature map [B, h, w, C]. "
                f"Received: output shape={tuple(self.layer.output.shape)}"
            )
        rows, cols = ((None, None), (None, None)) if self.geometry is None else self.geometry
        self._resize_rows = tf.constant(interpolation_matrix(self.input_spec[0], feature_shape[0], *rows))
        self._resize_cols = tf.constant(interpolation_matrix(self.input_spec[1], feature_shape[1], *cols))
        self._compute = tf.function(self._heatmaps, reduce_retracing=True)

    def _heatmaps(self, images, class_index):
        with tf.GradientTape() as tape:
            with Capture(self.layer, tape) as capture, Logits(self._output_layer):
                outputs = self.model(images, training=False)
            if self._output_layer is not None:
                probs = tf.cast(self._output_activation(outputs), tf.float32)
            else:
                probs = tf.cast(outputs, tf.float32)
            class_index = tf.where(class_index < 0, default_class(probs, self.task), class_index)
            if self._output_layer is not None:
                score = logit_score(outputs, self.task, class_index)
            else:
                score = class_score(probs, self.task, class_index)
        activations = capture.output
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
