"""Opening a trained model and what is known about it: a run directory or a `.keras` file.

A run directory (written by `kmedimg.training.run`) holds `model.keras`,
`config.yaml` (with `data.path`, whose `dataset.json` gives the task, class names,
pixel dtype and DICOM conversion) and, after `kmedimg evaluate`, the operating point
chosen on validation. A bare `.keras` file gives only what the model itself says.
"""

import json
import os

MODEL_FILE = "model.keras"
CONFIG_FILE = "config.yaml"
EVALUATION_DIR = "evaluation"
THRESHOLD_FILE = "threshold.json"


def load_keras_model(path):
    """`keras.saving.load_model(path, safe_mode=True, compile=False)` with kmedimg's layers known."""
    import keras

    import kmedimg.layers  # noqa: F401 - registers the serializable layers

    try:
        import kmedimg.optimizers  # noqa: F401 - registers the optimizer of compiled models
    except ImportError:
        pass
    return keras.saving.load_model(os.fspath(path), safe_mode=True, compile=False)


def read_run_config(run_dir):
    """The run's `config.yaml` as a plain dict ({} when absent)."""
    import yaml

    path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path) as handle:
        config = yaml.safe_load(handle) or {}
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a mapping of sections. Received: {type(config).__name__}")
    return config


def _model_input_dtype(model):
    from kmedimg.layers import IntensityScaling

    def walk(container):
        for layer in container.layers:
            if isinstance(layer, IntensityScaling):
                return layer.input_dtype
            if hasattr(layer, "layers"):
                found = walk(layer)
                if found:
                    return found
        return None

    found = walk(model)
    return found if found in ("uint8", "uint16") else "auto"


def describe_dataset(data_path):
    """Task, classes, dtype, channels and DICOM settings from a dataset's manifest."""
    from kmedimg.data.pipeline import read_manifest

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


def load_model_for_inference(path, data=None):
    """Loads a model for prediction and collects what is known about it.

    Args:
        path: a run directory (with `model.keras`) or a `.keras` file.
        data: dataset directory to take the task/classes from instead of the run's
            `config.yaml` `data.path`. Defaults to `None`.

    Returns:
        `(model, info)`; `info` has `task`, `class_names`, `dtype` (of the pixels the
        model expects), `run_dir`, `config`, `threshold` (a dict, when the run was
        evaluated), `data` and `manifest` when the dataset is reachable.

    Raises:
        FileNotFoundError: when there is no model at `path`.
    """
    from kmedimg.evaluation.explain import infer_task

    path = os.fspath(path)
    run_dir = path if os.path.isdir(path) else None
    model_path = os.path.join(path, MODEL_FILE) if run_dir else path
    if not os.path.isfile(model_path):
        raise FileNotFoundError(
            f"No model at {model_path}: pass a run directory holding {MODEL_FILE} or a .keras file."
        )
    if not model_path.endswith(".keras"):
        raise ValueError(f"Expected a .keras model file. Received: path={model_path!r}")
    model = load_keras_model(model_path)
    info = {"run_dir": run_dir, "model_path": model_path, "config": {}}
    if run_dir:
        info["config"] = read_run_config(run_dir)
        data = data or (info["config"].get("data") or {}).get("path")
        threshold_path = os.path.join(run_dir, EVALUATION_DIR, THRESHOLD_FILE)
        metrics_path = os.path.join(run_dir, "metrics.json")
        if os.path.isfile(threshold_path):
            with open(threshold_path) as handle:
                info["threshold"] = json.load(handle)
        if os.path.isfile(metrics_path):
            with open(metrics_path) as handle:
                training_metrics = json.load(handle) or {}
            info["training_metrics"] = training_metrics
            test = training_metrics.get("test") if isinstance(training_metrics, dict) else None
            # The training run's test metrics carry the validation-chosen operating point.
            if "threshold" not in info and isinstance(test, dict) and test.get("threshold"):
                info["threshold"] = test["threshold"]
    if data:
        try:
            info.update(describe_dataset(data))
        except FileNotFoundError:
            info["data_missing"] = str(data)
    info.setdefault("task", infer_task(model))
    info.setdefault("class_names", None)
    if "dtype" not in info:
        info["dtype"] = _model_input_dtype(model)
    outputs = int(model.outputs[0].shape[-1])
    expected = 2 if info["task"] == "binary" else outputs
    if info["class_names"] is not None and len(info["class_names"]) != expected:
        raise ValueError(
            f"The model has {outputs} output(s) but the dataset lists {len(info['class_names'])} "
            f"classes ({info['class_names']}). Received: data={info.get('data')!r}"
        )
    return model, info


def class_columns(task, class_names, num_outputs):
    """Names of the probability columns: binary -> [positive class], else all classes."""
    if class_names is None:
        class_names = (["negative", "positive"] if task == "binary"
                       else [f"class_{index}" for index in range(num_outputs)])
    return [class_names[1]] if task == "binary" else list(class_names)
