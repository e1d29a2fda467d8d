"""`kmedimg export`: a trained model as `.keras`, TensorFlow SavedModel or TFLite.

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

```
kmedimg export runs/quickstart --format tflite --quantize int8 --out exports/
```
"""

import json
import os
import shutil
import warnings

import numpy as np

from kmedimg.evaluation import inputs
from kmedimg.evaluation.runs import load_keras_model, load_model_for_inference

FORMATS = ("keras", "savedmodel", "tflite")
QUANTIZATIONS = ("none", "dynamic", "float16", "int8")


def _check(format, quantize):
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


def _sample_images(model, data=None, split="train", count=64, dtype="uint8", seed=0):
    """Raw-range images for calibration/checking: from the dataset when given, else noise."""
    height, width, channels = inputs.model_input_spec(model)
    if data is not None:
        from kmedimg.data.pipeline import load, read_manifest

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
    import tensorflow as tf

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
    for image in np.asarray(images, dtype=np.float32):
        interpreter.set_tensor(input_detail["index"], image[np.newaxis])
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(output_detail["index"])[0].astype(np.float32))
    return np.stack(outputs)


def saved_model_predict(path, images):
    """Runs an exported SavedModel's `serve` signature with `tf.saved_model.load`."""
    import tensorflow as tf

    loaded = tf.saved_model.load(os.fspath(path))
    return np.asarray(loaded.serve(tf.constant(images, tf.float32)))


def export_model(model, out_dir, format="keras", quantize="none", calibration=None,
                 check_images=None, metadata=None):
    """Exports `model` to `out_dir` and verifies it with the format's own runtime.

    Args:
        model: a Keras classifier taking raw pixels.
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
    import tensorflow as tf

    quantize = _check(format, quantize)
    os.makedirs(out_dir, exist_ok=True)
    if check_images is None:
        check_images = calibration[:16] if calibration is not None else _sample_images(model, count=8)
    check_images = np.asarray(check_images, np.float32)
    reference = np.asarray(model(check_images, training=False), np.float32)
    if format == "keras":
        path = os.path.join(out_dir, "model.keras")
        model.save(path)
        exported = np.asarray(load_keras_model(path)(check_images, training=False))
        runtime = "keras.saving.load_model(safe_mode=True)"
    else:
        saved_dir = os.path.join(out_dir, "savedmodel")
        if os.path.isdir(saved_dir):
            shutil.rmtree(saved_dir)
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
                    for image in calibration:
                        yield [image[np.newaxis]]

                converter.representative_dataset = representative
                converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                                       tf.lite.OpsSet.TFLITE_BUILTINS]
            content = converter.convert()
            suffix = "" if quantize == "none" else f".{quantize}"
            path = os.path.join(out_dir, f"model{suffix}.tflite")
            with open(path, "wb") as handle:
                handle.write(content)
            shutil.rmtree(saved_dir)
            exported = tflite_predict(path, check_images)
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
    with open(os.path.join(out_dir, "export.json"), "w") as handle:
        json.dump(record, handle, indent=2, default=str)
    return record


# ----------------------------------------------------------------------------- CLI


def add_export_command(subparsers):
    parser = subparsers.add_parser(
        "export", help="export a run's model as .keras, SavedModel or TFLite (raw pixels in)",
        description="Exports the model and checks the export's predictions with its own runtime.")
    parser.add_argument("run", metavar="RUN_DIR", help="a run directory or a .keras file")
    parser.add_argument("--format", default="keras", choices=FORMATS, help="default: keras")
    parser.add_argument("--quantize", default="none", choices=QUANTIZATIONS,
                        help="TFLite quantisation (default: none)")
    parser.add_argument("--out", default=None,
                        help="output folder (default: RUN_DIR/export/<format>)")
    parser.add_argument("--calibration-data", default=None,
                        help="dataset directory for int8 calibration (default: the run's data)")
    parser.add_argument("--calibration-split", default="train", help="default: train")
    parser.add_argument("--calibration-samples", type=int, default=200, help="default: 200")
    parser.set_defaults(handler=_run_export)


def _run_export(args):
    model, info = load_model_for_inference(args.run)
    quantize = _check(args.format, args.quantize)
    base = info["run_dir"] or os.path.dirname(os.path.abspath(args.run))
    out = args.out or os.path.join(base, "export", args.format + (
        "" if quantize == "none" else f"-{quantize}"))
    data = args.calibration_data or (info.get("data") if "data_missing" not in info else None)
    calibration = None
    if data:
        calibration = _sample_images(model, data, args.calibration_split, args.calibration_samples)
    elif quantize == "int8":
        raise ValueError(
            "int8 quantisation needs calibration images: the run's dataset is not reachable "
            f"({info.get('data_missing')}); pass --calibration-data DIR. Received: "
            "calibration_data=None"
        )
    metadata = {"task": info["task"], "class_names": info.get("class_names"),
                "threshold": info.get("threshold"), "source": info["model_path"]}
    record = export_model(model, out, args.format, quantize, calibration=calibration,
                          check_images=None if calibration is None else calibration[:32],
                          metadata=metadata)
    check = record["check"]
    print(f"{record['path']}  ({check['runtime']}: max |dp| = {check['max_abs_difference']:.2g} "
          f"on {check['images']} images)")
    return 0
