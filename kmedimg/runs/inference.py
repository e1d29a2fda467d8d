"""Opening a trained model for inference: a run directory or a `.keras` file, anywhere.

A run directory (written by training) holds `model.keras`, `config.yaml` (with
`data.path`, whose `dataset.json` gives the task, class names, pixel dtype and DICOM
conversion), `metrics.json` with the operating point chosen on validation at training
time and, after `kmedimg evaluate`, that evaluation's operating point.
A bare `.keras` file gives only what the model itself says. Every file of a run is
read through `RunDirectory` (tf.io.gfile), so runs on `gs://` open like local ones,
and the stored `data.path` is resolved from any working directory.

Example:

```python
model, info = load_model_for_inference("runs/quickstart")
info["task"], info["class_names"], info.get("threshold")
```
"""

import os

import tensorflow as tf

from kmedimg.core.run_directory import RunDirectory
from kmedimg.core.vocabulary import PIXEL_DTYPES
from kmedimg.data.pipeline import read_manifest
from kmedimg.evaluation.model_file import load_keras_model


def describe_dataset(data_path):
    """Task, classes, dtype, channels and DICOM settings from a dataset's manifest.

    Args:
        data_path: a dataset directory (local, gs:// or ram://).

    Raises:
        FileNotFoundError: when there is no `dataset.json` at `data_path`.
    """
    manifest = read_manifest(data_path)
    info = {
        "data": str(data_path),
        "task": manifest.task,
        "class_names": list(manifest.class_names),
        "dtype": manifest.dtype,
        "stored_channels": manifest.channels,
        "manifest": manifest,
    }
    source = manifest.source or {}
    if source.get("format") == "dicom":
        window = source.get("window")
        if isinstance(window, dict):
            window = (window.get("name"), window.get("center"), window.get("width"))
        intensity = source.get("intensity") or {}
        info["dicom"] = {"window": window, "offset": intensity.get("offset") or 1024,
                         "scale": intensity.get("scale") or 1.0}
    return info


OPERATING_POINTS = ("training", "evaluation")
"""Where `kmedimg predict` takes its operating point from (see `_run_facts`)."""


def _run_facts(run, operating_point="training"):
    """Config, operating point and training metrics stored in a run directory.

    The operating point is the one training chose on validation (`metrics.json`),
    so predictions do not change with whichever `kmedimg evaluate` ran last;
    `operating_point="evaluation"` takes the last evaluation's
    (`evaluation/threshold.json`) instead. `threshold_source` says which was used.
    """
    if operating_point not in OPERATING_POINTS:
        raise ValueError(f"`operating_point` must be one of {OPERATING_POINTS}. "
                         f"Received: operating_point={operating_point!r}")
    info = {"config": run.read_config()}
    training_metrics = run.read_json(RunDirectory.METRICS)
    trained = None
    if isinstance(training_metrics, dict):
        info["training_metrics"] = training_metrics
        test = training_metrics.get("test")
        # Runs from before `operating_point` carry it in their test metrics.
        trained = training_metrics.get("operating_point") or (
            test.get("threshold") if isinstance(test, dict) else None)
    if operating_point == "training" and trained:
        info["threshold"] = trained
        info["threshold_source"] = f"{run.file(RunDirectory.METRICS)} (chosen at training time)"
        return info
    evaluated = run.read_json(RunDirectory.THRESHOLD)
    if evaluated is not None:
        info["threshold"] = evaluated
        info["threshold_source"] = f"{run.threshold_path} (the last kmedimg evaluate)"
    elif operating_point == "evaluation":
        raise ValueError(
            f"{run.path} has no {RunDirectory.THRESHOLD}: run `kmedimg evaluate {run.path}` "
            "first, or use the operating point chosen at training time. "
            f"Received: operating_point={operating_point!r}"
        )
    return info


def load_model_for_inference(path, data=None, operating_point="training"):
    """Loads a model for prediction and collects what is known about it.

    Args:
        path: a run directory (with `model.keras`) or a `.keras` file; local, `gs://`
            or `ram://`.
        data: dataset directory to take the task/classes from instead of the run's
            `config.yaml` `data.path`. Defaults to `None`.
        operating_point: "training" (the one chosen on validation at training time,
            in `metrics.json`) or "evaluation" (the last `kmedimg evaluate`'s).
            Defaults to `"training"`.

    Returns:
        `(model, info)`: the model as an `ImageClassifier` (one saved by kmedimg
        0.1.0 is converted with the run's task and pixel type); `info` has `task`,
        `class_names`, `dtype` (of the pixels the model expects), `run_dir`,
        `model_path`, `config`, `threshold` (a dict) and `threshold_source` (which
        file) when the run has one, `data` and `manifest` when the dataset is
        reachable, else `data_missing`.

    Raises:
        FileNotFoundError: when there is no model at `path`.
        ValueError: when the file holds no kmedimg classifier, or its task or
            outputs do not match the dataset's.
    """
    path = os.fspath(path)
    run = RunDirectory(path) if tf.io.gfile.isdir(path) else None
    model_path = run.model_path if run else path
    if not tf.io.gfile.exists(model_path):
        raise FileNotFoundError(
            f"No model at {model_path}: pass a run directory holding {RunDirectory.MODEL} "
            "or a .keras file."
        )
    if not model_path.endswith(".keras"):
        raise ValueError(f"Expected a .keras model file. Received: path={model_path!r}")
    info = {"run_dir": run.path if run else None, "model_path": model_path, "config": {}}
    if run:
        info.update(_run_facts(run, operating_point))
        stored = (info["config"].get("data") or {}).get("path")
        data = data or run.resolve_data_path(stored)
    if data:
        try:
            info.update(describe_dataset(data))
        except FileNotFoundError:
            info["data_missing"] = str(data)
    # The task and pixel type of the run convert a model saved by kmedimg 0.1.0.
    input_dtype = (info["config"].get("model") or {}).get("input_dtype")
    model = load_keras_model(model_path, task=info.get("task"),
                             input_dtype=input_dtype if input_dtype in PIXEL_DTYPES else None)
    info.setdefault("task", model.task)
    info.setdefault("class_names", None)
    info.setdefault("dtype", model.input_dtype if model.input_dtype in PIXEL_DTYPES else "auto")
    expected = 2 if info["task"] == "binary" else model.num_classes
    if info["class_names"] is not None and len(info["class_names"]) != expected:
        raise ValueError(
            f"The model has {model.num_classes} output(s) but the dataset lists {len(info['class_names'])} "
            f"classes ({info['class_names']}). Received: data={info.get('data')!r}"
        )
    return model, info
