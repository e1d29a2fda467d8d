"""Opening a `.keras` file with kmedimg's serializable layers and optimizers known."""

import os

import keras

import kmedimg.layers  # noqa: F401 - registers the serializable layers
import kmedimg.optimizers  # noqa: F401 - registers the optimizer of compiled models


def load_keras_model(path):
    """`keras.saving.load_model(path, safe_mode=True, compile=False)`.

    Keras reads remote paths (`gs://`, `ram://`) itself: it copies the file to a local
    temporary directory first.

    Args:
        path: a `.keras` file, local or remote.
    """
    return keras.saving.load_model(os.fspath(path), safe_mode=True, compile=False)
