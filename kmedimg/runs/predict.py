"""Predicting from a run: probabilities for image files, DICOM folders or TFRecord splits.

Inputs are read in their stored intensity range and fed to the model as raw pixels,
exactly as training saw them: image files keep their bit depth, DICOM files go through
the DICOM importer's pixel rules with the training dataset's window/offset (from its
manifest), TFRecords through the record decoder. Decisions use the operating point
chosen on validation at training time (or, when asked, by the last `kmedimg
evaluate`; else 0.5 / argmax); `threshold_source` in the result says which.

One unreadable file does not stop the others: it is listed with its reason in
`table["failed"]` and the rest are predicted.

Example:

```python
table = predict_run("runs/quickstart", ["scans/"])
failed = table.pop("failed")  # [(path, reason), ...]
table.pop("threshold_source")
print(predictions_csv(**table))
```
"""

import os

import numpy as np
import tensorflow as tf

from kmedimg.core.errors import InputFileError, KmedimgError
from kmedimg.core.model_files import check_model_file, model_file_of, refused_class_error
from kmedimg.core.run_directory import join
from kmedimg.data import schema
from kmedimg.data.pipeline import read_manifest
from kmedimg.evaluation import inputs
from kmedimg.evaluation.prediction import make_predict_fn, predict_records
from kmedimg.runs.inference import load_model_for_inference


def is_dataset_dir(path):
    """Whether `path` is a dataset directory (TFRecords + dataset.json), local or remote."""
    path = os.fspath(path)
    return tf.io.gfile.isdir(path) and tf.io.gfile.exists(join(path, schema.MANIFEST_NAME))


def load_checked_model(path, **options):
    """`load_model_for_inference(path, **options)`, refusing bad model files clearly.

    Raises:
        ModelFileError: for a `model.keras` that is an HDF5 or non-zip file, or whose
            config names a class that is neither Keras' nor kmedimg's (nothing is run).
    """
    model_path = model_file_of(os.fspath(path))
    check_model_file(model_path)
    try:
        return load_model_for_inference(path, **options)
    except TypeError as error:
        refused = refused_class_error(model_path, error)
        if refused is None:
            raise
        raise refused from None


def predict_run(path, inputs, *, split="test", batch_size=64, tta="none",
                operating_point="training"):
    """Predicts image files/folders or dataset splits with a run's (or `.keras` file's) model.

    Args:
        path: a run directory or a `.keras` file (local, `gs://` or `ram://`).
        inputs: image/.npy/DICOM files and folders of them, or dataset directories
            (not both).
        split: split to predict when the inputs are dataset directories.
            Defaults to `"test"`.
        batch_size: images per batch. Defaults to `64`.
        tta: "none", "hflip" or "flips". Defaults to `"none"`.
        operating_point: "training" (chosen on validation at training time) or
            "evaluation" (the last `kmedimg evaluate`'s). Defaults to `"training"`.

    Returns:
        dict with the arguments of `kmedimg.evaluation.predictions_csv.predictions_csv`:
        `ids`, `probs`, `task`, `class_names`, `threshold`, `labels` (None for files),
        `id_column`; plus `threshold_source` (the file the operating point came from,
        or `None`) and `failed`, the `(path, reason)` of each input file that could not
        be read (not predicted), which are not among them.

    Raises:
        KmedimgError: when no input file could be read (each is named with its reason).
    """
    inputs = [os.fspath(item) for item in inputs]
    datasets = [item for item in inputs if is_dataset_dir(item)]
    files = [item for item in inputs if not is_dataset_dir(item)]
    if datasets and files:
        raise ValueError(
            "Pass either dataset directories or image files/folders, not both. "
            f"Received: datasets={datasets}, files={files}"
        )
    model, info = load_checked_model(path, operating_point=operating_point)
    if datasets:
        all_ids, all_labels, all_probs = [], [], []
        for data_dir in datasets:
            ids, labels, probs = predict_records(model, data_dir, split, batch_size, tta)
            all_ids.extend(ids)
            all_labels.append(labels)
            all_probs.append(probs)
        class_names = info.get("class_names")
        if class_names is None:
            class_names = list(read_manifest(datasets[0]).class_names)
        return {"ids": all_ids, "probs": np.concatenate(all_probs), "task": info["task"],
                "class_names": class_names, "threshold": info.get("threshold"),
                "labels": np.concatenate(all_labels), "id_column": "id", "failed": [],
                "threshold_source": info.get("threshold_source")}
    paths, probs, failed = _predict_files(model, files, info, batch_size, tta)
    return {"ids": paths, "probs": probs, "task": info["task"],
            "class_names": info.get("class_names"), "threshold": info.get("threshold"),
            "labels": None, "id_column": "input", "failed": failed,
            "threshold_source": info.get("threshold_source")}


def _predict_files(model, files, info, batch_size, tta):
    """`(paths, probs, failed)`: every readable file predicted, the others with their reason."""
    spec = inputs.model_input_spec(model)
    predict = make_predict_fn(model, tta)
    paths, probs, failed, batch = [], [], [], []
    files = inputs.expand_inputs(files)
    for index, path in enumerate(files):
        try:
            pixels = inputs.read_pixels(path, info.get("dtype", "auto"), dicom=info.get("dicom"))
            batch.append(inputs.fit_to_model(pixels, spec))
            paths.append(path)
        except InputFileError as error:
            failed.append((path, error.reason))
        except OSError as error:  # FileNotFoundError, permission denied, I/O error
            failed.append((path, f"{type(error).__name__}: {error.strerror or error}"))
        if batch and (len(batch) == batch_size or index == len(files) - 1):
            probs.append(predict(np.stack(batch)).numpy())
            batch = []
    if not paths:
        listed = "; ".join(f"{path}: {reason}" for path, reason in failed)
        raise KmedimgError(
            f"None of the {len(files)} input files could be read, so nothing was predicted. "
            f"Fix or remove them. Received: {listed}"
        )
    return paths, np.concatenate(probs), failed
