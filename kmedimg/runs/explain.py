"""Explaining a run's model on image files: one PNG overlay per input.

Each overlay shows the input in its stored intensities and the heatmap (Grad-CAM,
Grad-CAM++ or occlusion sensitivity) over it; the title names the explained class
and its probability.

Example:

```python
written = explain_run("runs/quickstart", ["scan.png"], "cams/", method="gradcam++")
```
"""

import os
import posixpath

import numpy as np
import tensorflow as tf

from kmedimg.core.run_directory import join
from kmedimg.evaluation import inputs
from kmedimg.evaluation.gradcam import METHODS, GradCam
from kmedimg.evaluation.occlusion import occlusion_sensitivity
from kmedimg.evaluation.overlay import save_overlay
from kmedimg.runs.inference import load_model_for_inference

EXPLAIN_METHODS = METHODS + ("occlusion",)
_LABELS = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "occlusion": "occlusion"}


def _class_label(class_names, task, index):
    if class_names and 0 <= index < len(class_names):
        return class_names[index]
    return f"class {index}" if task != "binary" else ("positive" if index == 1 else "negative")


def explain_run(path, images, out_dir, method="gradcam", class_index=None, layer=None):
    """Writes one heatmap overlay PNG per input image and returns their paths.

    Args:
        path: a run directory or a `.keras` file (local, `gs://` or `ram://`).
        images: image files (PNG/JPEG/TIFF, .npy, DICOM) or folders of them.
        out_dir: output folder for the PNG overlays (created; local or remote).
        method: "gradcam", "gradcam++" or "occlusion". Defaults to `"gradcam"`.
        class_index: class to explain (binary: 1 positive, 0 negative).
            Defaults to `None` (the predicted class; binary: positive).
        layer: backbone layer to explain. Defaults to `None` (the registry's last
            conv layer, or the deepest block output with a map of at least 4x4;
            `kmedimg.evaluation.gradcam.choose_layer`).

    Warns:
        GradCamWarning: when Grad-CAM cannot localise (every feature map smaller
            than 4x4 at the model's input size); it suggests occlusion.
    """
    if method not in EXPLAIN_METHODS:
        raise ValueError(f"`method` must be one of {EXPLAIN_METHODS}. Received: method={method!r}")
    model, info = load_model_for_inference(path)
    spec = inputs.model_input_spec(model)
    files = inputs.expand_inputs(images)
    out_dir = os.fspath(out_dir)
    tf.io.gfile.makedirs(out_dir)
    class_names = info.get("class_names")
    task = model.task
    explainer = None if method == "occlusion" else GradCam(model, layer, method)
    label = _LABELS[method]
    if explainer is not None:
        label += f" · {explainer.layer_name} ({'×'.join(map(str, explainer.feature_shape))})"
    written = []
    for file in files:
        pixels = inputs.read_pixels(file, dtype=info.get("dtype", "auto"), dicom=info.get("dicom"))
        image = inputs.fit_to_model(pixels, spec)[np.newaxis]
        if explainer is None:
            heatmap = occlusion_sensitivity(model, image, class_index)[0]
            probs = model.predict_on_batch(image)
            explained = class_index if class_index is not None else (
                1 if task == "binary" else int(np.argmax(probs[0])))
        else:
            heatmaps, probs, explained = explainer(image, class_index, return_details=True)
            heatmap, explained = heatmaps[0], int(explained[0])
        name = _class_label(class_names, task, explained)
        score = float(probs[0][0] if task == "binary" else probs[0][explained])
        if task == "binary" and explained == 0:
            score = 1 - score
        base = posixpath.basename(file) if "://" in file else os.path.basename(file)
        out = join(out_dir, f"{os.path.splitext(base)[0]}.{method.replace('+', 'p')}.png")
        save_overlay(out, image[0], heatmap, title=f"{base}: {name} p={score:.3f}",
                     heatmap_label=label)
        written.append(out)
    return written
