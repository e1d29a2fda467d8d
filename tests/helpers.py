"""Shared test helpers: tiny in-memory sources (writer, pipeline, and anyone else's), model
weights and the 0.1.0 classifier builder (model tests), run-file readers (training tests)."""

import csv

import h5py
import keras
import numpy as np

from kmedimg.data.sources.base import Item, Rejected
from kmedimg.layers import (
    BackbonePreprocessing, GeMPooling2D, GreyToRGB, IntensityScaling, Window,
)


class ListSource:
    """A Source over a fixed list of `Item`/`Rejected` (iterates the same way each time).

    Args:
        entries: the items and rejections, in order.
        task: "binary", "multiclass" or "multilabel". Defaults to `"binary"`.
        class_names: ordered class names. Defaults to `["neg", "pos"]`.
        fail_at: raise RuntimeError when reaching this position on the pass number
            `fail_on_pass` (1-based), to simulate an interrupted conversion.
            Defaults to `None`.
        fail_on_pass: see `fail_at`. Defaults to `2`.
    """

    def __init__(self, entries, task="binary", class_names=("neg", "pos"), fail_at=None,
                 fail_on_pass=2):
        self.entries = list(entries)
        self.task = task
        self.class_names = list(class_names)
        self.fail_at = fail_at
        self.fail_on_pass = fail_on_pass
        self.passes = 0

    def __iter__(self):
        self.passes += 1
        for position, entry in enumerate(self.entries):
            if self.fail_at == position and self.passes == self.fail_on_pass:
                raise RuntimeError(f"simulated failure at item {position}")
            yield entry

    def describe(self):
        return {"format": "test-list", "entries": len(self.entries)}


def image(index, size=8, channels=1, dtype="uint8"):
    """A deterministic image unique to `index` (pixel [0, 0, 0] encodes the index)."""
    rng = np.random.default_rng(index)
    limit = np.iinfo(dtype).max
    pixels = rng.integers(0, limit, size=(size, size, channels), endpoint=True).astype(dtype)
    pixels[0, 0, 0] = index % (limit + 1)
    return pixels


def binary_items(count, size=8, channels=1, dtype="uint8", positive_every=3,
                 patients=None):
    """`count` binary items; every `positive_every`-th is "pos"."""
    items = []
    for index in range(count):
        label = "pos" if index % positive_every == 0 else "neg"
        patient = None if patients is None else f"patient-{index // patients}"
        items.append(Item(f"img-{index:04d}.png", image(index, size, channels, dtype),
                          (label,), patient=patient))
    return items


__all__ = ["Item", "ListSource", "Rejected", "binary_items", "image"]


def randomize_weights(model, seed=0, scale=0.05):
    """Overwrites every weight with seeded normal values (variances kept positive)."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        value = rng.normal(0, scale, variable.shape)
        if "variance" in variable.path:
            value = np.abs(value) + 0.5
        variable.assign(value.astype(variable.dtype))


def history_rows(path):
    """A run's history.csv as a list of dicts of strings."""
    with open(path) as handle:
        return list(csv.DictReader(handle))


def h5_arrays(path):
    """Every dataset of a .weights.h5 file as sorted `(name, array)` pairs."""
    arrays = []
    with h5py.File(path, "r") as handle:
        handle.visititems(lambda name, item: arrays.append((name, item[()]))
                          if isinstance(item, h5py.Dataset) else None)
    return sorted(arrays, key=lambda pair: pair[0])


def old_build_classifier(backbone_model, record, input_shape, task, num_classes, head="avg", dropout=0.2,
                         hidden_units=0, augmentation=None, input_dtype="uint8", window=None, inference=False):
    """The functional model kmedimg 0.1.0's build_classifier returned (its code, inlined)."""
    units, activation = (1, "sigmoid") if task == "binary" else (
        num_classes, "softmax" if task == "multiclass" else "sigmoid")
    inputs = keras.Input(shape=input_shape, name="pixels")
    if window is not None:
        x = Window(*window, name="window")(inputs)
    else:
        x = IntensityScaling(pixel_dtype=input_dtype, name="intensity_scaling")(inputs)
    if augmentation is not None:
        x = augmentation(x)
    if input_shape[-1] == 1 and backbone_model.input.shape[-1] == 3:
        x = GreyToRGB(name="grey_to_rgb")(x)
    x = BackbonePreprocessing(record.preprocessing, name="backbone_preprocessing")(x)
    x = backbone_model(x, training=False) if inference else backbone_model(x)
    if head == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    elif head == "max":
        x = keras.layers.GlobalMaxPooling2D(name="pool")(x)
    else:
        x = GeMPooling2D(name="pool")(x)
    if hidden_units:
        x = keras.layers.Dense(int(hidden_units), activation="relu", name="head_hidden")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(units, activation=activation, dtype="float32", name="predictions")(x)
    return keras.Model(inputs, outputs, name=f"{record.name}_classifier")


def write_legacy_h5(model, path):
    """Writes `model`'s weights in the Keras 2 HDF5 layout keras.applications downloads."""
    with h5py.File(path, "w") as handle:
        weighted = [layer for layer in model.layers if layer.weights]
        handle.attrs["layer_names"] = [layer.name.encode() for layer in weighted]
        handle.attrs["backend"] = b"tensorflow"
        handle.attrs["keras_version"] = b"2.15.0"
        for layer in weighted:
            group = handle.create_group(layer.name)
            names = [f"{layer.name}/{variable.name}:0".encode() for variable in layer.weights]
            group.attrs["weight_names"] = names
            for name, variable in zip(names, layer.weights):
                group.create_dataset(name.decode(), data=keras.ops.convert_to_numpy(variable))
