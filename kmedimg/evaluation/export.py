"""`export_model`: a trained model as `.keras`, TensorFlow SavedModel or TFLite.

Every export takes raw pixels (float32 [B, H, W, C] in the stored intensity range,
0..255 or 0..65535): scaling and the backbone's preprocessing are layers inside the
model. Each export is loaded back with its own runtime and its predictions on a
check batch are compared with the Keras model; the measured difference is written
to `export.json` next to the artefact.

Quantisation (TFLite only):

* `dynamic`: int8 weights, float activations; no data needed; typically within 0.01.
* `float16`: float16 weights; within 0.005.
* `int8`: int8 weights and activations (float32 input/output), calibrated on
  `calibration_samples` training images. The quantised input step keeps 8 bits of
  intensity resolution, which for uint16 (CT) data is coarser than the stored
  values. Tolerance checked by the tests: mean |Δp| <= 0.05, max |Δp| <= 0.2.

Example:

```python
record = export_model(model, "exports/tflite-int8", "tflite", "int8", calibration=images)
record["check"]["max_abs_difference"]
```
"""

import os
import warnings

import numpy as np
import tensorflow as tf

from kmedimg.core.progress import progress
from kmedimg.core.run_directory import join, write_json
from kmedimg.data.pipeline import load, read_manifest
from kmedimg.evaluation import inputs
from kmedimg.evaluation.model_file import as_classifier, load_keras_model

FORMATS = ("keras", "savedmodel", "tflite")
QUANTIZATIONS = ("none", "dynamic", "float16", "int8")
EXPORT_RECORD = "export.json"


def check_export_options(format, quantize):
    """The quantisation to use (`"none"` for None), after checking it fits `format`."""
    if format not in FORMATS:
        raise ValueError(f"`format` must be one of {FORMATS}. Received: format={format!r}")
    quantize = quantize or "none"
    if quantize not in QUANTIZATIONS:
        raise ValueError(
            f"`quantize` must be one of {QUANTIZATIONS}. Received: quantize={quantize!r}"
        )
    if quantize != "none" and format != "tflite":
        raise ValueError(
            "Quantisation applies to the TFLite export only; use --format tflite. "
            f"Received: format={format!r}, quantize={quantize!r}"
        )
    return quantize


def sample_images(model, data=None, split="train", count=64, dtype="uint8", seed=0):
    """Raw-range images for calibration/checking: from the dataset when given, else noise.

    Args:
        model: the Keras model (its input shape sizes the images).
        data: a dataset directory to take images from. Defaults to `None` (noise).
        split: split to read (the first one when absent). Defaults to `"train"`.
        count: number of images. Defaults to `64`.
        dtype: stored pixel type of the noise ("uint8", "uint16"). Defaults to `"uint8"`.
        seed: noise seed. Defaults to `0`.
    """
    height, width, channels = inputs.model_input_spec(model)
    if data is not None:
        manifest = read_manifest(data)
        split = split if split in manifest.splits else sorted(manifest.splits)[0]
        batches = load(data, split, image_size=(height, width), batch_size=min(count, 64),
                       channels=channels, deterministic=True)
        images = []
        for batch, _ in batches:
            images.append(batch.numpy())
            if sum(len(b) for b in images) >= count:
                break
        return np.concatenate(images)[:count].astype(np.float32)
    peak = 65535.0 if dtype == "uint16" else 255.0
    rng = np.random.default_rng(seed)
    return (rng.random((count, height, width, channels)) * peak).astype(np.float32)


def tflite_predict(model_path_or_content, images):
    """Runs a TFLite model with `tf.lite.Interpreter`, one image at a time (batch 1 graph)."""
    with warnings.catch_warnings():
        # TF 2.21 still ships tf.lite.Interpreter; it warns about the ai_edge_litert move.
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
        if isinstance(model_path_or_content, (bytes, bytearray)):
            interpreter = tf.lite.Interpreter(model_content=bytes(model_path_or_content))
        else:
            interpreter = tf.lite.Interpreter(model_path=os.fspath(model_path_or_content))
    input_detail = interpreter.get_input_details()[0]
    output_detail = interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(input_detail["index"], [1, *images.shape[1:]])
    interpreter.allocate_tensors()
    outputs = []
    for image in progress(np.asarray(images, dtype=np.float32), desc="TFLite check", unit="image"):
        interpreter.set_tensor(input_detail["index"], image[np.newaxis])
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(output_detail["index"])[0].astype(np.float32))
    return np.stack(outputs)


def saved_model_predict(path, images):
    """Runs an exported SavedModel's `serve` signature with `tf.saved_model.load`."""
    loaded = tf.saved_model.load(os.fspath(path))
    return np.asarray(loaded.serve(tf.constant(images, tf.float32)))


def export_model(model, out_dir, format="keras", quantize="none", calibration=None,
                 check_images=None, metadata=None):
    """Exports `model` to `out_dir` and verifies it with the format's own runtime.

    Args:
        model: an `ImageClassifier` taking raw pixels; a classifier saved by kmedimg
            0.1.0 is converted (`kmedimg.models.as_image_classifier`) and exported in
            the current format.
        out_dir: output folder (created).
        format: "keras", "savedmodel" or "tflite". Defaults to `"keras"`.
        quantize: "none", "dynamic", "float16" or "int8" (TFLite only).
            Defaults to `"none"`.
        calibration: raw-range images [N, H, W, C] for int8 calibration (required for
            int8). Defaults to `None`.
        check_images: images to compare predictions on. Defaults to `None`
            (`calibration`, else 8 noise images).
        metadata: extra JSON-able facts for `export.json` (task, classes, threshold).
            Defaults to `None`.

    Returns:
        dict: `path` of the artefact, `format`, `quantize`, `input`, and `check`
        (max/mean absolute probability difference to the Keras model).
    """
    quantize = check_export_options(format, quantize)
    model = as_classifier(model)
    out_dir = os.fspath(out_dir)
    tf.io.gfile.makedirs(out_dir)
    if check_images is None:
        check_images = calibration[:16] if calibration is not None else sample_images(model, count=8)
    check_images = np.asarray(check_images, np.float32)
    reference = np.asarray(model(check_images, training=False), np.float32)
    if format == "keras":
        path = join(out_dir, "model.keras")
        model.save(path)
        exported = np.asarray(load_keras_model(path)(check_images, training=False))
        runtime = "keras.saving.load_model(safe_mode=True)"
    else:
        saved_dir = join(out_dir, "savedmodel")
        if tf.io.gfile.isdir(saved_dir):
            tf.io.gfile.rmtree(saved_dir)
        spec = tf.TensorSpec([None, *check_images.shape[1:]], tf.float32, name="pixels")
        model.export(saved_dir, format="tf_saved_model", input_signature=[spec], verbose=False)
        if format == "savedmodel":
            path = saved_dir
            exported = saved_model_predict(saved_dir, check_images)
            runtime = "tf.saved_model.load(...).serve"
        else:
            converter = tf.lite.TFLiteConverter.from_saved_model(saved_dir)
            if quantize != "none":
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
            if quantize == "float16":
                converter.target_spec.supported_types = [tf.float16]
            if quantize == "int8":
                if calibration is None:
                    raise ValueError(
                        "int8 quantisation needs calibration images (the run's training data "
                        "or --calibration-data). Received: calibration=None"
                    )
                calibration = np.asarray(calibration, np.float32)

                def representative():
                    for image in progress(calibration, desc="int8 calibration", unit="image"):
                        yield [image[np.newaxis]]

                converter.representative_dataset = representative
                converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                                       tf.lite.OpsSet.TFLITE_BUILTINS]
            content = converter.convert()
            suffix = "" if quantize == "none" else f".{quantize}"
            path = join(out_dir, f"model{suffix}.tflite")
            with tf.io.gfile.GFile(path, "wb") as handle:
                handle.write(content)
            tf.io.gfile.rmtree(saved_dir)
            exported = tflite_predict(content, check_images)
            runtime = "tf.lite.Interpreter"
    difference = np.abs(np.asarray(exported, np.float32).reshape(reference.shape) - reference)
    record = {
        "path": path,
        "format": format,
        "quantize": quantize,
        "input": {"name": "pixels", "shape": [None, *map(int, check_images.shape[1:])],
                  "dtype": "float32", "range": "raw stored pixels (0..255 uint8, 0..65535 uint16)"},
        "output": {"shape": [None, int(reference.shape[-1])], "meaning": "probabilities"},
        "check": {"runtime": runtime, "images": int(len(check_images)),
                  "max_abs_difference": float(difference.max()),
                  "mean_abs_difference": float(difference.mean())},
        **(metadata or {}),
    }
    write_json(join(out_dir, EXPORT_RECORD), record)
    return record
