"""Predicting from a run: probabilities for image files, DICOM folders or TFRecord splits.

Inputs are read in their stored intensity range and fed to the model as raw pixels,
exactly as training saw them: image files keep their bit depth, DICOM files go through
the DICOM importer's pixel rules with the training dataset's window/offset (from its
manifest), TFRecords through the record decoder. Decisions use the operating point
chosen on validation by `kmedimg evaluate` (else 0.5 / argmax).

Example:

```python
table = predict_run("runs/quickstart", ["scans/"])
print(predictions_csv(**table))
```
"""

import os

import numpy as np
import tensorflow as tf

from kmedimg.core.run_directory import join
from kmedimg.data import schema
from kmedimg.data.pipeline import read_manifest
from kmedimg.evaluation.prediction import predict_files, predict_records
from kmedimg.runs.inference import load_model_for_inference


def is_dataset_dir(path):
    """Whether `path` is a dataset directory (TFRecords + dataset.json), local or remote."""
    path = os.fspath(path)
    return tf.io.gfile.isdir(path) and tf.io.gfile.exists(join(path, schema.MANIFEST_NAME))


def predict_run(path, inputs, *, split="test", batch_size=64, tta="none"):
    """Predicts image files/folders or dataset splits with a run's (or `.keras` file's) model.

    Args:
        path: a run directory or a `.keras` file (local, `gs://` or `ram://`).
        inputs: image/.npy/DICOM files and folders of them, or dataset directories
            (not both).
        split: split to predict when the inputs are dataset directories.
            Defaults to `"test"`.
        batch_size: images per batch. Defaults to `64`.
        tta: "none", "hflip" or "flips". Defaults to `"none"`.

    Returns:
        dict with the arguments of `kmedimg.evaluation.predictions_csv.predictions_csv`:
        `ids`, `probs`, `task`, `class_names`, `threshold`, `labels` (None for files),
        `id_column`.
    """
    inputs = [os.fspath(item) for item in inputs]
    datasets = [item for item in inputs if is_dataset_dir(item)]
    files = [item for item in inputs if not is_dataset_dir(item)]
    if datasets and files:
        raise ValueError(
            "Pass either dataset directories or image files/folders, not both. "
            f"Received: datasets={datasets}, files={files}"
        )
    model, info = load_model_for_inference(path)
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
                "labels": np.concatenate(all_labels), "id_column": "id"}
    paths, probs = predict_files(model, files, info.get("dtype", "auto"), batch_size,
                                 info.get("dicom"), tta)
    return {"ids": list(paths), "probs": probs, "task": info["task"],
            "class_names": info.get("class_names"), "threshold": info.get("threshold"),
            "labels": None, "id_column": "input"}
