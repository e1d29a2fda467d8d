"""`export_model`: a trained model as `.keras`, TensorFlow SavedModel or TFLite.

Every export takes raw pixels (float32 [B, H, W, C] in the stored intensity range,
0..255 or 0..65535): scaling and the backbone's preprocessing are layers inside the
model. Each export is loaded back with its own runtime and its predictions on held-out
check images (never the calibration images) are compared with the Keras model's: the
largest and mean |Δp| and the decisions that change at the operating point (the run's
threshold, else 0.5 / argmax) are written to `export.json` next to the artefact. More
than `max_flip_rate` changed decisions (default `DEFAULT_MAX_FLIP_RATE`, 1%) fails the
export with `ExportCheckError`; the artefact is kept, marked `check.passed: false`.
An output folder already holding an export is replaced only with `overwrite=True`.

Quantisation (TFLite only):

* `dynamic`: int8 weights, float activations; no data needed; typically within 0.01.
* `float16`: float16 weights; within 0.005.
* `int8`: int8 weights and activations (float32 input/output), calibrated on
  `calibration_samples` training images. The quantised input step keeps 8 bits of
  intensity resolution, which for uint16 (CT) data is coarser than the stored
  values; the sigmoid output moves in steps of 1/256. Calibrating on unrepresentative
  images (blank ones) changes about half the decisions at a mid-range operating
  point: the check fails it.

Example:

```python
record = export_model(model, "exports/tflite-int8", "tflite", "int8", calibration=train_images,
                      check_images=val_images, check={"task": "binary", "threshold": None})
record["check"]["flips"], record["check"]["max_abs_difference"]
```
"""

import os
import warnings

import numpy as np
import tensorflow as tf

from kmedimg.core.errors import ExportCheckError
from kmedimg.core.progress import progress
from kmedimg.core.run_directory import join, write_json
from kmedimg.data.pipeline import load, read_manifest
from kmedimg.evaluation import inputs
from kmedimg.evaluation.model_file import as_classifier, load_keras_model
from kmedimg.evaluation.predictions_csv import decisions

FORMATS = ("keras", "savedmodel", "tflite")
QUANTIZATIONS = ("none", "dynamic", "float16", "int8")
EXPORT_RECORD = "export.json"
#: Largest share of held-out decisions an export may change (at the run's operating point).
DEFAULT_MAX_FLIP_RATE = 0.01
_ARTEFACTS = (EXPORT_RECORD, "model.keras", "savedmodel")


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


def check_output(out_dir, overwrite=False):
    """Refuses an `out_dir` that is a file, or that holds an export, unless `overwrite`."""
    out_dir = os.fspath(out_dir)
    if tf.io.gfile.exists(out_dir) and not tf.io.gfile.isdir(out_dir):
        raise ValueError(
            f"`--out` is a folder (the export and its {EXPORT_RECORD} are written into it), "
            f"but {out_dir} is an existing file. Choose a folder. Received: out={out_dir!r}"
        )
    if overwrite or not tf.io.gfile.isdir(out_dir):
        return
    existing = sorted(name for name in tf.io.gfile.listdir(out_dir)
                      if name.rstrip("/") in _ARTEFACTS or name.endswith(".tflite"))
    if existing:
        raise ValueError(
            f"{out_dir} already holds an export ({', '.join(existing)}); pass --overwrite "
            f"(overwrite=True) to replace it, or choose another --out. Received: out={out_dir!r}"
        )


def export_model(model, out_dir, format="keras", quantize="none", calibration=None,
                 check_images=None, metadata=None, check=None, overwrite=False):
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
        check_images: held-out images to compare predictions on (never the calibration
            images). Defaults to `None` (8 noise images: differences only, no decisions).
        metadata: extra JSON-able facts for `export.json` (task, classes, threshold).
            Defaults to `None`.
        check: how to judge the comparison: `{"task", "threshold", "max_flip_rate",
            "images_from"}`; decisions are taken at `threshold` (a threshold dict, None:
            0.5/argmax) and the export fails when more than `max_flip_rate` of them
            change. Defaults to `None` (`max_flip_rate` `DEFAULT_MAX_FLIP_RATE`).
        overwrite: replace an export already in `out_dir`. Defaults to `False`.

    Returns:
        dict: `path` of the artefact, `format`, `quantize`, `input`, and `check`
        (max/mean absolute probability difference to the Keras model, decision flips).

    Raises:
        ExportCheckError: when the decision flip rate exceeds `max_flip_rate`; the
            artefact and `export.json` (with `check.passed: false`) are kept to inspect.
    """
    quantize = check_export_options(format, quantize)
    model = as_classifier(model)
    out_dir = os.fspath(out_dir)
    check_output(out_dir, overwrite)
    tf.io.gfile.makedirs(out_dir)
    check = dict(check or {})
    if check_images is None:
        check_images = sample_images(model, count=8)
        check["images_from"] = ("8 noise images (no dataset reachable: pass --check-data "
                                "to count decision flips)")
        check["count_flips"] = False
    check_images = np.asarray(check_images, np.float32)
    reference = _batched(lambda x: model(x, training=False), check_images)
    if format == "keras":
        path = join(out_dir, "model.keras")
        model.save(path)
        loaded = load_keras_model(path)
        exported = _batched(lambda x: loaded(x, training=False), check_images)
        runtime = "keras.saving.load_model(safe_mode=True)"
    else:
        path, exported, runtime = _export_tensorflow(model, out_dir, format, quantize,
                                                     calibration, check_images)
    record = {
        "path": path,
        "format": format,
        "quantize": quantize,
        "input": {"name": "pixels", "shape": [None, *map(int, check_images.shape[1:])],
                  "dtype": "float32", "range": "raw stored pixels (0..255 uint8, 0..65535 uint16)"},
        "output": {"shape": [None, int(reference.shape[-1])], "meaning": "probabilities"},
        "check": {"runtime": runtime, **compare_predictions(reference, exported, check)},
        **(metadata or {}),
    }
    write_json(join(out_dir, EXPORT_RECORD), record)
    if not record["check"]["passed"]:
        raise ExportCheckError(_failed_message(record), record)
    return record


def compare_predictions(reference, exported, check):
    """The check entry of `export.json`: |Δp| and decision flips against a tolerance."""
    exported = np.asarray(exported, np.float32).reshape(reference.shape)
    difference = np.abs(exported - reference)
    result = {"images": int(len(reference)), "images_from": check.get("images_from", "given"),
              "max_abs_difference": float(difference.max()),
              "mean_abs_difference": float(difference.mean())}
    limit = check.get("max_flip_rate", DEFAULT_MAX_FLIP_RATE)
    if not check.get("count_flips", True):
        return {**result, "flips": None, "flip_rate": None, "max_flip_rate": limit,
                "passed": True}
    task = check.get("task") or ("binary" if reference.shape[-1] == 1 else "multiclass")
    before, rule = decisions(reference, task, check.get("threshold"))
    after, _ = decisions(exported, task, check.get("threshold"))
    changed = np.asarray(before != after).reshape(len(reference), -1).any(axis=1)
    flips = int(changed.sum())
    return {**result, "decision_rule": rule, "flips": flips,
            "flip_rate": flips / len(reference), "max_flip_rate": limit,
            "passed": flips / len(reference) <= limit}


def _failed_message(record):
    check = record["check"]
    return (
        f"The {record['format']}{'' if record['quantize'] == 'none' else ' ' + record['quantize']} "
        f"export changes {check['flips']} of {check['images']} decisions "
        f"({check['flip_rate']:.1%}) on {check['images_from']} ({check['decision_rule']}); "
        f"the tolerance is {check['max_flip_rate']:.1%} (max |dp| "
        f"{check['max_abs_difference']:.3g}, mean |dp| {check['mean_abs_difference']:.3g}). "
        "For int8, calibrate on real training images of the run (--calibration-data, "
        "--calibration-samples) or use --quantize dynamic/float16; raise --max-flip-rate "
        f"only knowingly. The failing export is kept to inspect at {record['path']}. "
        f"Received: flip_rate={check['flip_rate']:.4g}, max_flip_rate={check['max_flip_rate']}"
    )


def _batched(predict, images, batch_size=32):
    return np.concatenate([np.asarray(predict(images[start:start + batch_size]), np.float32)
                           for start in range(0, len(images), batch_size)])


def _export_tensorflow(model, out_dir, format, quantize, calibration, check_images):
    """SavedModel or TFLite export: `(path, predictions on check_images, runtime)`."""
    saved_dir = join(out_dir, "savedmodel")
    if tf.io.gfile.isdir(saved_dir):
        tf.io.gfile.rmtree(saved_dir)
    spec = tf.TensorSpec([None, *check_images.shape[1:]], tf.float32, name="pixels")
    model.export(saved_dir, format="tf_saved_model", input_signature=[spec], verbose=False)
    if format == "savedmodel":
        return saved_dir, saved_model_predict(saved_dir, check_images), (
            "tf.saved_model.load(...).serve")
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
    return path, tflite_predict(content, check_images), "tf.lite.Interpreter"
