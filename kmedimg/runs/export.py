"""Exporting a run's model as `.keras`, TensorFlow SavedModel or TFLite (raw pixels in).

The export is checked with the format's own runtime (`export_model`) on held-out
images of the run's own dataset (its `data.path`, resolved against the run directory;
split "val", else "test"), never on the calibration images: the decisions that change
at the run's operating point are counted, and more than `max_flip_rate` of them
(default 1%) fails the export. int8 quantisation is calibrated on the run's training
images or on `calibration_data`. The default output folder is
`RUN_DIR/export/<format>[-<quantize>]`; an existing export is replaced only with
`overwrite=True`.

Example:

```python
record = export_run("runs/quickstart", format="tflite", quantize="int8")
record["path"], record["check"]["flips"], record["check"]["max_abs_difference"]
```
"""

import os
import posixpath

from kmedimg.core.run_directory import RunDirectory, join
from kmedimg.core.validation import Interval, check_number
from kmedimg.data.pipeline import read_manifest
from kmedimg.evaluation.export import (
    DEFAULT_MAX_FLIP_RATE,
    check_export_options,
    check_output,
    export_model,
    sample_images,
)
from kmedimg.runs.predict import load_checked_model


def _folder_of(path):
    path = os.fspath(path)
    return posixpath.dirname(path) if "://" in path else os.path.dirname(os.path.abspath(path))


def export_run(path, format="keras", quantize="none", out=None, calibration_data=None,
               calibration_split="train", calibration_samples=200, check_data=None,
               check_split=None, check_samples=200, max_flip_rate=DEFAULT_MAX_FLIP_RATE,
               overwrite=False):
    """Exports a run's model and verifies the export with its own runtime.

    The check compares the export's predictions with the Keras model's on held-out
    images of the run's own dataset (never the calibration images) and counts the
    decisions that change at the run's operating point; more than `max_flip_rate`
    of them fails the export (`ExportCheckError`).

    Args:
        path: a run directory or a `.keras` file (local, `gs://` or `ram://`).
        format: "keras", "savedmodel" or "tflite". Defaults to `"keras"`.
        quantize: "none", "dynamic", "float16" or "int8" (TFLite only).
            Defaults to `"none"`.
        out: output folder. Defaults to `None` (`RUN_DIR/export/<format>[-<quantize>]`).
        calibration_data: dataset directory for int8 calibration images.
            Defaults to `None` (the run's dataset when reachable).
        calibration_split: split the calibration images come from. Defaults to `"train"`.
        calibration_samples: number of calibration images. Defaults to `200`.
        check_data: dataset directory of the held-out check images. Defaults to `None`
            (the run's dataset; without one, noise images check |Δp| only).
        check_split: split of the check images. Defaults to `None` ("val", else "test").
        check_samples: number of check images. Defaults to `200`.
        max_flip_rate: largest share of check decisions the export may change.
            Defaults to `DEFAULT_MAX_FLIP_RATE` (0.01).
        overwrite: replace an export already in `out`. Defaults to `False`.

    Returns:
        The export record (also written as `export.json` next to the artefact).

    Raises:
        ExportCheckError: when the export changes more than `max_flip_rate` of the
            held-out decisions.
    """
    quantize = check_export_options(format, quantize)
    check_number("max_flip_rate", max_flip_rate, Interval(0.0, 1.0))
    check_number("check_samples", check_samples, Interval(1), integer=True)
    model, info = load_checked_model(path)
    if out is None:
        out = _default_out(path, info, format + ("" if quantize == "none" else f"-{quantize}"))
    check_output(out, overwrite)
    run_data = info.get("data") if "data_missing" not in info else None
    check_data = check_data or run_data
    calibration = None
    if quantize == "int8":
        calibration_data = calibration_data or run_data
        if not calibration_data:
            raise ValueError(
                f"int8 quantisation needs calibration images, but {_no_dataset(info)}; "
                "pass --calibration-data DIR. Received: calibration_data=None"
            )
        calibration = sample_images(model, calibration_data, calibration_split,
                                    calibration_samples)
    check = {"task": info["task"], "threshold": info.get("threshold"),
             "max_flip_rate": max_flip_rate}
    check_images = None
    if check_data:
        split = _held_out_split(check_data, check_split, calibration_data, calibration_split,
                                quantize)
        check_images = sample_images(model, check_data, split, check_samples)
        check["images_from"] = f"{len(check_images)} held-out images of split {split!r}"
    elif quantize == "int8":
        raise ValueError(
            f"The int8 export must be checked on held-out real images, but {_no_dataset(info)}; "
            "pass --check-data DIR (a dataset of the run's kind, not the calibration images). "
            "Received: check_data=None"
        )
    metadata = {"task": info["task"], "class_names": info.get("class_names"),
                "threshold": info.get("threshold"), "source": info["model_path"]}
    return export_model(model, out, format, quantize, calibration=calibration,
                        check_images=check_images, metadata=metadata, check=check,
                        overwrite=overwrite)


def _no_dataset(info):
    if info.get("data_missing"):
        return f"the run's dataset is not reachable at {info['data_missing']}"
    return f"{info['model_path']} is a bare .keras file that names no dataset"


def _default_out(path, info, folder):
    if info["run_dir"]:
        return RunDirectory(info["run_dir"]).file(f"{RunDirectory.EXPORT}/{folder}")
    return join(_folder_of(path), RunDirectory.EXPORT, folder)


def _held_out_split(check_data, check_split, calibration_data, calibration_split, quantize):
    """The check split: given, else "val", else "test"; never the calibration images."""
    splits = read_manifest(check_data).splits
    if check_split is None:
        check_split = next((name for name in ("val", "test") if name in splits), None)
        if check_split is None:
            raise ValueError(
                f"{check_data} has no 'val' or 'test' split to check the export on; pass "
                f"--check-split (not the calibration split). Received: splits={sorted(splits)}"
            )
    if check_split not in splits:
        raise ValueError(
            f"--check-split must be a split of {check_data}: {sorted(splits)}. "
            f"Received: check_split={check_split!r}"
        )
    same_images = (quantize == "int8" and check_split == calibration_split
                   and _same_path(check_data, calibration_data))
    if same_images:
        raise ValueError(
            "The export must be checked on images it was not calibrated on; choose another "
            f"--check-split or --calibration-split. Received: check_split={check_split!r}, "
            f"calibration_split={calibration_split!r} of the same dataset"
        )
    return check_split


def _same_path(first, second):
    if "://" in str(first) or "://" in str(second):
        return str(first).rstrip("/") == str(second).rstrip("/")
    return os.path.realpath(first) == os.path.realpath(second)
