"""Exporting a run's model as `.keras`, TensorFlow SavedModel or TFLite (raw pixels in).

The export is checked with the format's own runtime (`export_model`); int8
quantisation is calibrated on the run's training images (its `data.path`, resolved
against the run directory) or on `calibration_data`. The default output folder is
`RUN_DIR/export/<format>[-<quantize>]`.

Example:

```python
record = export_run("runs/quickstart", format="tflite", quantize="int8")
record["path"], record["check"]["max_abs_difference"]
```
"""

import os
import posixpath

from kmedimg.core.run_directory import RunDirectory, join
from kmedimg.evaluation.export import check_export_options, export_model, sample_images
from kmedimg.runs.inference import load_model_for_inference


def _folder_of(path):
    path = os.fspath(path)
    return posixpath.dirname(path) if "://" in path else os.path.dirname(os.path.abspath(path))


def export_run(path, format="keras", quantize="none", out=None, calibration_data=None,
               calibration_split="train", calibration_samples=200):
    """Exports a run's model and verifies the export with its own runtime.

    Args:
        path: a run directory or a `.keras` file (local, `gs://` or `ram://`).
        format: "keras", "savedmodel" or "tflite". Defaults to `"keras"`.
        quantize: "none", "dynamic", "float16" or "int8" (TFLite only).
            Defaults to `"none"`.
        out: output folder. Defaults to `None` (`RUN_DIR/export/<format>[-<quantize>]`).
        calibration_data: dataset directory for calibration and checking images.
            Defaults to `None` (the run's dataset when reachable).
        calibration_split: split the images come from. Defaults to `"train"`.
        calibration_samples: number of calibration images. Defaults to `200`.

    Returns:
        The export record (also written as `export.json` next to the artefact).
    """
    quantize = check_export_options(format, quantize)
    model, info = load_model_for_inference(path)
    folder = format + ("" if quantize == "none" else f"-{quantize}")
    if out is None:
        if info["run_dir"]:
            out = RunDirectory(info["run_dir"]).file(f"{RunDirectory.EXPORT}/{folder}")
        else:
            out = join(_folder_of(path), RunDirectory.EXPORT, folder)
    data = calibration_data or (info.get("data") if "data_missing" not in info else None)
    calibration = None
    if data:
        calibration = sample_images(model, data, calibration_split, calibration_samples)
    elif quantize == "int8":
        raise ValueError(
            "int8 quantisation needs calibration images: the run's dataset is not reachable "
            f"({info.get('data_missing')}); pass --calibration-data DIR. Received: "
            "calibration_data=None"
        )
    metadata = {"task": info["task"], "class_names": info.get("class_names"),
                "threshold": info.get("threshold"), "source": info["model_path"]}
    return export_model(model, out, format, quantize, calibration=calibration,
                        check_images=None if calibration is None else calibration[:32],
                        metadata=metadata)
