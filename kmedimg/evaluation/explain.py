"""Where does the model look? Grad-CAM, Grad-CAM++ and occlusion sensitivity.

Grad-CAM (Selvaraju et al., 2017) weights the feature maps of the last convolutional
layer by the spatial mean of the class score's gradient; Grad-CAM++ (Chattopadhay et
al., 2018) uses higher-order weights that localise several instances better. The
layer comes from the backbone registry record (`last_conv_layer`), never from
guessing names. Occlusion sensitivity needs no gradients: it slides a patch over the
image and records how much the class score drops.

The class score explained is the output layer's pre-activation score (the logit of
the class), as in the Grad-CAM paper: a confident model's probability is saturated
and has no gradient. (Models whose output layer is not a sigmoid/softmax Dense are
explained through the log-odds of their probabilities.)

Example:

```python
from kmedimg.evaluation.explain import GradCam

explainer = GradCam(model)                 # finds the backbone's last conv layer
heatmaps = explainer(images)               # [B, H, W] in [0, 1]
save_overlay("case.png", images[0], heatmaps[0], title="Grad-CAM")
```
"""

import os
import weakref

import numpy as np

METHODS = ("gradcam", "gradcam++")
_EPSILON = 1e-7


def infer_task(model):
    """"binary" (one output), "multiclass" (softmax) or "multilabel" (K sigmoids)."""
    outputs = int(model.outputs[0].shape[-1])
    if outputs == 1:
        return "binary"
    last = model.layers[-1]
    activation = getattr(last, "activation", None)
    name = getattr(activation, "__name__", "") or type(last).__name__
    return "multiclass" if "softmax" in name.lower() else "multilabel"


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
    from kmedimg.models import backbones

    registered = set(backbones.list_backbones())
    for candidate in _nested_models(model):
        name = _backbone_name(candidate)
        if name in registered:
            return find_layer(candidate, backbones.get_backbone(name).last_conv_layer)
    raise ValueError(
        f"Model {model.name!r} contains no registered backbone (nested models: "
        f"{[m.name for m in _nested_models(model)]}; registered: {sorted(registered)}). "
        "Pass the layer to explain, e.g. layer='conv5_block3_out'. Received: layer=None"
    )


def _nested_models(model):
    found = []
    for layer in model.layers:
        if hasattr(layer, "layers"):
            found.append(layer)
            found.extend(_nested_models(layer))
    return found


def _backbone_name(nested):
    # build_classifier names the nested backbone model after its registry key.
    return nested.name


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


def feature_geometry(model, layer):
    """Where the target layer's feature-map cells sit on the input image.

    Returns `((start_y, jump_y), (start_x, jump_x))` — cell `i` is centred on input pixel
    `start + i * jump` — computed by receptive-field arithmetic when the path from the
    backbone input to `layer` is a plain chain (LeNet, AlexNet, VGG), else None (the
    usual Grad-CAM assumption that the map spans the image evenly is then used). With
    'valid' convolutions the evenly-spread assumption misplaces the map by up to half a
    receptive field.
    """
    container = None
    for candidate in [model] + _nested_models(model):
        if any(inner is layer for inner in candidate.layers):
            container = candidate
            break
    if container is None:
        return None
    geometry = [(0.0, 1.0), (0.0, 1.0)]
    previous = None
    for inner in container.layers:
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


def _interpolation_matrix(output_size, feature_size, start=None, jump=None):
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


class _Capture:
    """Records a layer's output while a model runs (works through nested models).

    A Keras functional model nested in another does not expose its inner tensors to
    the outer graph, so `keras.Model(outer.inputs, inner_layer.output)` cannot be
    built. Instead the layer's `call` is wrapped for the duration of one forward
    pass and its output watched by the gradient tape.
    """

    def __init__(self, layer, tape):
        self.layer, self.tape, self.output = layer, tape, None

    def __enter__(self):
        original = self.layer.call

        def call(*args, **kwargs):
            output = original(*args, **kwargs)
            self.tape.watch(output)
            self.output = output
            return output

        object.__setattr__(self.layer, "call", call)
        return self

    def __exit__(self, *exc):
        object.__delattr__(self.layer, "call")
        return False


class _Logits:
    """Makes the output layer return its pre-activation scores during one forward pass.

    Grad-CAM differentiates the class score before the sigmoid/softmax: a confident
    model's probability is saturated (exactly 1.0 in float32) and has zero gradient.
    """

    def __init__(self, layer):
        self.layer = layer

    def __enter__(self):
        import keras

        if self.layer is not None:
            self.original = self.layer.activation
            object.__setattr__(self.layer, "activation", keras.activations.linear)
        return self

    def __exit__(self, *exc):
        if self.layer is not None:
            object.__setattr__(self.layer, "activation", self.original)
        return False


def _output_activation_layer(model):
    """The output layer when it applies sigmoid/softmax itself (a Dense), else None."""
    last = model.layers[-1]
    activation = getattr(last, "activation", None)
    name = getattr(activation, "__name__", "")
    if name in ("sigmoid", "softmax") and last.output is model.outputs[0]:
        return last
    return None


def logit_score(logits, task, class_index):
    """Pre-activation score of `class_index` [B] (binary: class 0 is the negated logit)."""
    import tensorflow as tf

    logits = tf.cast(logits, tf.float32)
    if task == "binary":
        return tf.where(tf.equal(class_index, 1), logits[:, 0], -logits[:, 0])
    return tf.gather(logits, class_index, axis=1, batch_dims=1)


def class_score(probs, task, class_index):
    """Log-odds (binary, multilabel) or log-probability (multiclass) of `class_index` [B]."""
    import tensorflow as tf

    probs = tf.cast(probs, tf.float32)
    if task == "binary":
        logit = tf.math.log(probs[:, 0] + _EPSILON) - tf.math.log(1 - probs[:, 0] + _EPSILON)
        return tf.where(tf.equal(class_index, 1), logit, -logit)
    chosen = tf.gather(probs, class_index, axis=1, batch_dims=1)
    if task == "multiclass":
        return tf.math.log(chosen + _EPSILON)
    return tf.math.log(chosen + _EPSILON) - tf.math.log(1 - chosen + _EPSILON)


def _default_class(probs, task):
    import tensorflow as tf

    if task == "binary":
        return tf.ones(tf.shape(probs)[:1], tf.int32)
    return tf.cast(tf.argmax(probs, axis=1), tf.int32)


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
        import tensorflow as tf

        if method not in METHODS:
            raise ValueError(f"`method` must be one of {METHODS}. Received: method={method!r}")
        self.model = model
        self.layer = target_layer(model, layer)
        self.method = method
        self.task = task or infer_task(model)
        self.input_spec = tuple(int(v) for v in model.inputs[0].shape[1:])
        self._output_layer = _output_activation_layer(model)
        self._output_activation = getattr(self._output_layer, "activation", None)
        self.geometry = feature_geometry(model, self.layer)
        feature_shape = tuple(self.layer.output.shape[1:3])
        if len(feature_shape) != 2 or None in feature_shape:
            raise ValueError(
                f"Layer {self.layer.name!r} must output a fixed-size feature map [B, h, w, C]. "
                f"Received: output shape={tuple(self.layer.output.shape)}"
            )
        rows, cols = ((None, None), (None, None)) if self.geometry is None else self.geometry
        self._resize_rows = tf.constant(_interpolation_matrix(self.input_spec[0], feature_shape[0], *rows))
        self._resize_cols = tf.constant(_interpolation_matrix(self.input_spec[1], feature_shape[1], *cols))
        self._compute = tf.function(self._heatmaps, reduce_retracing=True)

    def _heatmaps(self, images, class_index):
        import tensorflow as tf

        with tf.GradientTape() as tape:
            with _Capture(self.layer, tape) as capture, _Logits(self._output_layer):
                outputs = self.model(images, training=False)
            if self._output_layer is not None:
                probs = tf.cast(self._output_activation(outputs), tf.float32)
            else:
                probs = tf.cast(outputs, tf.float32)
            class_index = tf.where(class_index < 0, _default_class(probs, self.task), class_index)
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
            denominator = tf.where(tf.abs(denominator) > _EPSILON, denominator, tf.ones_like(denominator))
            alphas = grads_2 / denominator
            weights = tf.reduce_sum(alphas * tf.nn.relu(grads), axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * activations, axis=-1))
        # Bilinear upsampling that puts each feature cell over its receptive field centre.
        cam = tf.einsum("yh,bhw,xw->byx", self._resize_rows, cam, self._resize_cols)
        peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
        cam = tf.where(peak > 0, cam / tf.maximum(peak, _EPSILON), tf.zeros_like(cam))
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
        import tensorflow as tf

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


_SCORE_FNS = weakref.WeakKeyDictionary()


def _scores_fn(model, task):
    """Compiled images -> (probabilities, pre-activation scores or None), cached per model."""
    import tensorflow as tf

    if model not in _SCORE_FNS:
        output_layer = _output_activation_layer(model)

        def scores(images):
            if output_layer is None:
                return tf.cast(model(images, training=False), tf.float32), tf.zeros([0])
            with _Logits(output_layer):
                logits = tf.cast(model(images, training=False), tf.float32)
            return tf.cast(output_layer.activation(logits), tf.float32), logits

        _SCORE_FNS[model] = tf.function(scores, reduce_retracing=True)
    return _SCORE_FNS[model]


def _score(probs, logits, task, class_index):
    if logits.shape[0] == 0:
        return class_score(probs, task, class_index)
    return logit_score(logits, task, class_index)


def grad_cam(model, images, class_index=None, layer=None, task=None):
    """Grad-CAM heatmaps [B, H, W] in [0, 1]; see `GradCam`."""
    return GradCam(model, layer=layer, method="gradcam", task=task)(images, class_index)


def grad_cam_plus_plus(model, images, class_index=None, layer=None, task=None):
    """Grad-CAM++ heatmaps [B, H, W] in [0, 1]; see `GradCam`."""
    return GradCam(model, layer=layer, method="gradcam++", task=task)(images, class_index)


def occlusion_sensitivity(model, images, class_index=None, patch_size=None, stride=None,
                          task=None, batch_size=64):
    """How much the class score drops when each region is hidden, [B, H, W].

    A square patch filled with the image's mean intensity slides over the image; each
    pixel gets the mean drop of the class score (the pre-activation logit, as `GradCam`)
    over the patches covering it. Positive values mark evidence for the class. Model-agnostic:
    use it to check that Grad-CAM is not an artefact of the gradients.

    Args:
        model: any Keras classifier taking raw pixels.
        images: float array [B, H, W, C] in the model's input range.
        class_index: as `GradCam`. Defaults to `None`.
        patch_size: patch side in pixels. Defaults to `None` (H // 8, at least 4).
        stride: step in pixels. Defaults to `None` (patch_size // 2).
        task: as `GradCam`. Defaults to `None`.
        batch_size: occluded images per forward pass. Defaults to `64`.
    """
    import tensorflow as tf

    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(f"`images` must be [B, H, W, C]. Received: images.shape={images.shape}")
    task = task or infer_task(model)
    _, height, width, _ = images.shape
    patch_size = int(patch_size or max(4, height // 8))
    stride = int(stride or max(1, patch_size // 2))
    if not 0 < patch_size <= min(height, width) or stride < 1:
        raise ValueError(
            f"`patch_size` must be in [1, {min(height, width)}] and `stride` >= 1. "
            f"Received: patch_size={patch_size}, stride={stride}"
        )
    tops = list(range(0, height - patch_size + 1, stride))
    lefts = list(range(0, width - patch_size + 1, stride))
    if tops[-1] != height - patch_size:
        tops.append(height - patch_size)
    if lefts[-1] != width - patch_size:
        lefts.append(width - patch_size)
    positions = [(top, left) for top in tops for left in lefts]
    forward = _scores_fn(model, task)
    maps = np.zeros(images.shape[:3], dtype=np.float32)
    for index, image in enumerate(images):
        probs, logits = forward(image[np.newaxis])
        explained = _default_class(probs, task) if class_index is None else tf.constant(
            [int(np.broadcast_to(class_index, images.shape[:1])[index])])
        base = float(_score(probs, logits, task, explained)[0])
        fill = image.mean(axis=(0, 1))
        total = np.zeros((height, width), np.float32)
        count = np.zeros((height, width), np.float32)
        for start in range(0, len(positions), batch_size):
            chunk = positions[start:start + batch_size]
            occluded = np.repeat(image[np.newaxis], len(chunk), axis=0)
            for row, (top, left) in enumerate(chunk):
                occluded[row, top:top + patch_size, left:left + patch_size] = fill
            scores = _score(*forward(occluded), task, tf.repeat(explained, len(chunk))).numpy()
            for row, (top, left) in enumerate(chunk):
                total[top:top + patch_size, left:left + patch_size] += base - scores[row]
                count[top:top + patch_size, left:left + patch_size] += 1
        maps[index] = total / np.maximum(count, 1)
    return maps


def display_range(image):
    """(low, high) intensity shown: the 0.5th-99.5th percentile, inside the stored range."""
    values = np.asarray(image, dtype=np.float64)
    low, high = np.percentile(values, [0.5, 99.5])
    if high <= low:
        low, high = float(values.min()), float(values.max()) + 1.0
    return float(low), float(high)


def overlay_figure(image, heatmap, title=None, heatmap_label="Grad-CAM", alpha=0.6):
    """A matplotlib Figure: the input in its stored intensities, and the heatmap over it.

    Args:
        image: [H, W, C] (or [H, W]) in the stored range (e.g. 0..65535 for uint16).
        heatmap: [H, W] (normalised to its max for display).
        title: figure title. Defaults to `None`.
        heatmap_label: colourbar label of the heatmap. Defaults to `"Grad-CAM"`.
        alpha: heatmap opacity at the heatmap's peak (fades to transparent at 0).
            Defaults to `0.6`.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    heatmap = np.asarray(heatmap, dtype=np.float32)
    peak = float(np.max(np.abs(heatmap))) or 1.0
    shown = np.clip(heatmap / peak, 0, 1)
    low, high = display_range(image)
    figure = Figure(figsize=(6.4, 3.2), dpi=100, layout="constrained")
    left, right = figure.subplots(1, 2)
    if image.ndim == 2:
        grey = left.imshow(image, cmap="gray", vmin=low, vmax=high)
        right.imshow(image, cmap="gray", vmin=low, vmax=high)
        figure.colorbar(grey, ax=left, fraction=0.046, pad=0.02, label="stored intensity")
    else:
        rgb = np.clip((image - low) / (high - low), 0, 1)
        left.imshow(rgb)
        right.imshow(rgb)
    heat = right.imshow(shown, cmap="jet", alpha=alpha * shown, vmin=0, vmax=1)
    figure.colorbar(heat, ax=right, fraction=0.046, pad=0.02, label=heatmap_label)
    left.set_title(f"input [{low:.0f}, {high:.0f}]", fontsize=9)
    right.set_title(heatmap_label, fontsize=9)
    for axis in (left, right):
        axis.set_xticks([])
        axis.set_yticks([])
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def save_overlay(path, image, heatmap, title=None, heatmap_label="Grad-CAM"):
    """Writes `overlay_figure(...)` as a PNG file and returns the path."""
    figure = overlay_figure(image, heatmap, title=title, heatmap_label=heatmap_label)
    figure.savefig(path, format="png")
    return path


# ----------------------------------------------------------------------------- CLI


def add_explain_command(subparsers):
    parser = subparsers.add_parser(
        "explain", help="Grad-CAM / Grad-CAM++ / occlusion overlays as PNG files",
        description="Writes one PNG per input image: the input in its stored intensities "
                    "and the heatmap over it.")
    parser.add_argument("model", metavar="RUN_OR_MODEL",
                        help="a run directory (uses model.keras) or a .keras file")
    parser.add_argument("images", metavar="IMAGE", nargs="+",
                        help="image files (PNG/JPEG/TIFF, .npy, DICOM) or folders of them")
    parser.add_argument("--out", required=True, help="output folder for the PNG overlays")
    parser.add_argument("--method", default="gradcam", choices=METHODS + ("occlusion",),
                        help="explanation method (default: gradcam)")
    parser.add_argument("--class-index", type=int, default=None,
                        help="class to explain (binary: 1 positive, 0 negative); default: predicted")
    parser.add_argument("--layer", default=None,
                        help="layer to explain instead of the backbone's registered last conv layer")
    parser.set_defaults(handler=_run_explain)


def _run_explain(args):
    from kmedimg.evaluation import inputs
    from kmedimg.evaluation.runs import load_model_for_inference

    model, info = load_model_for_inference(args.model)
    spec = inputs.model_input_spec(model)
    files = inputs.expand_inputs(args.images)
    os.makedirs(args.out, exist_ok=True)
    class_names = info.get("class_names")
    task = info.get("task") or infer_task(model)
    explainer = None if args.method == "occlusion" else GradCam(model, args.layer, args.method, task)
    label = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "occlusion": "occlusion"}[args.method]
    for path in files:
        pixels = inputs.read_pixels(path, dtype=info.get("dtype", "auto"), dicom=info.get("dicom"))
        image = inputs.fit_to_model(pixels, spec)[np.newaxis]
        if explainer is None:
            heatmap = occlusion_sensitivity(model, image, args.class_index, task=task)[0]
            probs = model.predict_on_batch(image)
            explained = args.class_index if args.class_index is not None else (
                1 if task == "binary" else int(np.argmax(probs[0])))
        else:
            heatmaps, probs, explained = explainer(image, args.class_index, return_details=True)
            heatmap, explained = heatmaps[0], int(explained[0])
        name = _class_label(class_names, task, explained)
        score = float(probs[0][0] if task == "binary" else probs[0][explained])
        if task == "binary" and explained == 0:
            score = 1 - score
        stem = os.path.splitext(os.path.basename(path))[0]
        out = os.path.join(args.out, f"{stem}.{args.method.replace('+', 'p')}.png")
        save_overlay(out, image[0], heatmap, title=f"{os.path.basename(path)}: {name} p={score:.3f}",
                     heatmap_label=label)
        print(out)
    return 0


def _class_label(class_names, task, index):
    if class_names and 0 <= index < len(class_names):
        return class_names[index]
    return f"class {index}" if task != "binary" else ("positive" if index == 1 else "negative")
