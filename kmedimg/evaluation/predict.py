"""`kmedimg predict`: probabilities for image files, DICOM folders or TFRecord splits, as CSV.

Inputs are read in their stored intensity range and fed to the model as raw pixels,
exactly as training saw them: image files keep their bit depth, DICOM files go through
the DICOM importer's pixel rules with the training dataset's window/offset (from its
manifest), TFRecords through the record decoder.

Example:

```
kmedimg predict runs/quickstart scans/*.png --out predictions.csv
kmedimg predict runs/quickstart datasets/phantoms --split test --out test.csv
```
"""

import csv
import os
import sys
import time

import numpy as np

from kmedimg.evaluation import inputs
from kmedimg.evaluation.evaluate import make_predict_fn, predict_dataset
from kmedimg.evaluation.runs import class_columns, load_model_for_inference


def records_with_ids(path_or_manifest, split, image_size, channels, batch_size=64):
    """A finite, ordered tf.data.Dataset of `(images, labels, ids)` of one split.

    Images and labels are exactly what `kmedimg.data.pipeline.load(..., training=False)`
    yields; `ids` are the records' `id` strings. Shards are read in manifest order.
    """
    import tensorflow as tf

    from kmedimg.data import schema
    from kmedimg.data.decoder import RecordDecoder
    from kmedimg.data.parser import RecordParser
    from kmedimg.data.pipeline import read_manifest

    manifest = path_or_manifest if isinstance(path_or_manifest, schema.Manifest) else (
        read_manifest(path_or_manifest))
    if split not in manifest.splits:
        raise ValueError(
            f"Dataset {getattr(manifest, 'directory', '')!r} has no split {split!r}; splits: "
            f"{sorted(manifest.splits)}. Received: split={split!r}"
        )
    directory = str(getattr(manifest, "directory", "."))
    files = [os.path.join(directory, shard.path) if "://" not in directory else
             directory.rstrip("/") + "/" + shard.path for shard in manifest.splits[split].shards]
    decoder = RecordDecoder(manifest)
    parser = RecordParser(manifest.task, manifest.num_classes, image_size, channels,
                          manifest.channels).parse_fn(False)
    id_spec = {schema.ID_KEY: schema.feature_spec()[schema.ID_KEY]}
    compression = "" if manifest.compression == "NONE" else manifest.compression
    dataset = tf.data.TFRecordDataset(files, compression_type=compression,
                                      num_parallel_reads=None)
    if decoder.supports_batch_decode:
        def decode_batch(records):
            images, labels = parser(decoder.decode_batch(records))
            return images, labels, tf.io.parse_example(records, id_spec)[schema.ID_KEY]

        dataset = dataset.batch(batch_size).map(decode_batch, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        def decode_one(record):
            images, labels = parser(decoder.decode(record))
            return images, labels, tf.io.parse_single_example(record, id_spec)[schema.ID_KEY]

        dataset = dataset.map(decode_one, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _is_dataset_dir(path):
    from kmedimg.data import schema

    return os.path.isdir(path) and os.path.isfile(os.path.join(path, schema.MANIFEST_NAME))


def predict_records(model, data_dir, split, batch_size=64, tta="none"):
    """Predicts one TFRecord split: `(ids, labels, probs)` numpy arrays in record order."""
    from kmedimg.evaluation.inputs import model_input_spec

    height, width, channels = model_input_spec(model)
    result = predict_dataset(model, records_with_ids(data_dir, split, (height, width), channels,
                                                     batch_size), tta)
    if result.ids is None:
        raise ValueError(f"Split {split!r} of {data_dir} holds no records. Received: 0 records")
    return result.ids, result.labels, result.probs


def predict_files(model, paths, dtype="auto", batch_size=32, dicom=None, tta="none"):
    """Predicts image/.npy/DICOM files: `(paths, probs)`; folders are expanded.

    Args:
        model: a Keras classifier taking raw pixels.
        paths: files or folders.
        dtype: stored pixel type the model was trained on ("uint8", "uint16") or
            "auto". Defaults to `"auto"`.
        batch_size: images per forward pass. Defaults to `32`.
        dicom: DICOM settings `{"window", "offset", "scale"}` of the training dataset.
            Defaults to `None` (full bit depth, offset 1024).
        tta: "none", "hflip" or "flips". Defaults to `"none"`.
    """
    spec = inputs.model_input_spec(model)
    predict = make_predict_fn(model, tta)
    files = inputs.expand_inputs(paths)
    probs = []
    for start in range(0, len(files), batch_size):
        batch = [inputs.fit_to_model(inputs.read_pixels(path, dtype, dicom=dicom), spec)
                 for path in files[start:start + batch_size]]
        probs.append(predict(np.stack(batch)).numpy())
    return np.asarray(files), np.concatenate(probs)


def decisions(probs, task, threshold):
    """Predicted class name(s) per row, given a threshold dict (or None: 0.5 / argmax)."""
    probs = np.asarray(probs)
    if task == "multiclass":
        return probs.argmax(axis=1), "argmax"
    values = (threshold or {}).get("values") or [0.5]
    rule = f"{(threshold or {}).get('rule', 'fixed')} on {(threshold or {}).get('chosen_on', 'fixed')}"
    values = np.asarray(values if len(values) == probs.shape[1] else values[:1] * probs.shape[1])
    return probs >= values[np.newaxis, :], rule


def write_predictions_csv(out, ids, probs, task, class_names, threshold=None, labels=None,
                          id_column="input"):
    """Writes one row per input: id, [true label], probability per class, decision.

    Args:
        out: CSV path, or "-" for stdout.
        ids: input identifiers (paths or record ids).
        probs: model outputs [N, 1] or [N, K].
        task: the task.
        class_names: class names (None: generic names).
        threshold: threshold dict (from `kmedimg evaluate`) for the decision column.
            Defaults to `None` (0.5 for sigmoid outputs, argmax for softmax).
        labels: pipeline labels [N, 1] / [N, K] to add a `true` column. Defaults to `None`.
        id_column: name of the first column. Defaults to `"input"`.
    """
    probs = np.asarray(probs, dtype=np.float64).reshape(len(ids), -1)
    columns = class_columns(task, class_names, probs.shape[1])
    names = class_names or (["negative", "positive"] if task == "binary" else columns)
    decided, rule = decisions(probs, task, threshold)
    header = [id_column] + (["true"] if labels is not None else []) + [
        f"p_{name}" for name in columns] + ["predicted", "decision_rule"]
    handle = sys.stdout if out == "-" else open(out, "w", newline="")
    try:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in range(len(ids)):
            cells = [ids[row]]
            if labels is not None:
                cells.append(_label_text(labels[row], task, names))
            cells.extend(f"{value:.9g}" for value in probs[row])
            if task == "multiclass":
                cells.append(names[int(decided[row])])
            elif task == "binary":
                cells.append(names[1] if decided[row, 0] else names[0])
            else:
                cells.append("|".join(n for n, on in zip(names, decided[row]) if on))
            cells.append(rule)
            writer.writerow(cells)
    finally:
        if handle is not sys.stdout:
            handle.close()
    return out


def _label_text(label_row, task, names):
    label_row = np.asarray(label_row).ravel()
    if task == "binary":
        return names[int(label_row[0] > 0.5)]
    if task == "multiclass":
        return names[int(np.argmax(label_row))]
    return "|".join(name for name, on in zip(names, label_row) if on > 0.5)


# ----------------------------------------------------------------------------- CLI


def add_predict_command(subparsers):
    parser = subparsers.add_parser(
        "predict", help="probabilities for images, DICOM folders or a TFRecord split, as CSV",
        description="Writes one CSV row per input with the probability of every class and the "
                    "decision at the run's validation-chosen operating point (else 0.5/argmax).")
    parser.add_argument("model", metavar="MODEL", help="a run directory or a .keras file")
    parser.add_argument("inputs", metavar="INPUT", nargs="+",
                        help="image files (PNG/JPEG/TIFF), .npy, DICOM files, folders of them, "
                             "or a dataset directory (TFRecords + dataset.json)")
    parser.add_argument("--out", default="-", help="CSV path (default: stdout)")
    parser.add_argument("--split", default="test",
                        help="split to predict when INPUT is a dataset directory (default: test)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch (default: 64)")
    parser.add_argument("--tta", default="none", choices=("none", "hflip", "flips"),
                        help="test-time augmentation (default: none)")
    parser.set_defaults(handler=_run_predict)


def _run_predict(args):
    model, info = load_model_for_inference(args.model)
    start = time.perf_counter()
    datasets = [path for path in args.inputs if _is_dataset_dir(path)]
    files = [path for path in args.inputs if not _is_dataset_dir(path)]
    if datasets and files:
        raise ValueError(
            "Pass either dataset directories or image files/folders, not both. "
            f"Received: datasets={datasets}, files={files}"
        )
    count = 0
    if datasets:
        all_ids, all_labels, all_probs = [], [], []
        for data_dir in datasets:
            ids, labels, probs = predict_records(model, data_dir, args.split, args.batch_size,
                                                 args.tta)
            all_ids.extend(ids)
            all_labels.append(labels)
            all_probs.append(probs)
        class_names = info.get("class_names")
        if class_names is None:
            from kmedimg.data.pipeline import read_manifest

            class_names = list(read_manifest(datasets[0]).class_names)
        write_predictions_csv(args.out, all_ids, np.concatenate(all_probs), info["task"],
                              class_names, info.get("threshold"), np.concatenate(all_labels),
                              id_column="id")
        count = len(all_ids)
    else:
        paths, probs = predict_files(model, files, info.get("dtype", "auto"), args.batch_size,
                                     info.get("dicom"), args.tta)
        write_predictions_csv(args.out, paths, probs, info["task"], info.get("class_names"),
                              info.get("threshold"))
        count = len(paths)
    seconds = time.perf_counter() - start
    if args.out != "-":
        print(f"{count} predictions -> {args.out} ({count / seconds:.1f} inputs/s)")
    return 0
