"""Opening a `.keras` file as an `ImageClassifier`, and checking a user's model is one."""

import os

import keras

import kmedimg.layers  # noqa: F401 - registers the serializable layers
import kmedimg.optimizers  # noqa: F401 - registers the optimizer of compiled models
from kmedimg.core.model_files import check_model_file, refused_class_error
from kmedimg.models import as_image_classifier


def load_keras_model(path, task=None, input_dtype=None):
    """Loads a classifier `.keras` file as an `ImageClassifier`.

    `keras.saving.load_model(path, safe_mode=True, compile=False)`, then
    `kmedimg.models.as_image_classifier`: a classifier saved by kmedimg 0.1.0 (a
    plain functional model) is converted, anything else fails with the version
    that wrote such files. Keras reads remote paths (`gs://`, `ram://`) itself.

    Args:
        path: a `.keras` file, local or remote.
        task: the task of an old model (the run's dataset task). Defaults to
            `None` (read from the model).
        input_dtype: the stored pixel type of an old model (the run config's
            `model.input_dtype`). Defaults to `None` (read from the model).

    Raises:
        ValueError: naming the file, when it holds no kmedimg classifier, is no
            `.keras` archive (e.g. an HDF5 file named `.keras`) or names a class
            that is neither Keras' nor kmedimg's (refused unrun).
    """
    path = os.fspath(path)
    check_model_file(path)
    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except TypeError as error:
        # Safe mode refused a class the file names (e.g. `os.system`): nothing ran.
        raise refused_class_error(path, error) or error from None
    try:
        return as_classifier(model, task=task, input_dtype=input_dtype)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def as_classifier(model, task=None, input_dtype=None):
    """`model` as an `ImageClassifier` whose task is `task` (when given).

    Converts a kmedimg 0.1.0 classifier (`kmedimg.models.as_image_classifier`).

    Args:
        model: an `ImageClassifier` or a classifier saved by kmedimg 0.1.0.
        task: the expected task. Defaults to `None` (the model's).
        input_dtype: the stored pixel type of an old model. Defaults to `None`.

    Raises:
        ValueError: when `model` is no kmedimg classifier, or its task is not `task`.
    """
    classifier = as_image_classifier(model, task=task, input_dtype=input_dtype)
    if task is not None and classifier.task != task:
        raise ValueError(
            f"Model {classifier.name!r} is a {classifier.task} classifier with "
            f"{classifier.num_classes} output(s); pass task={classifier.task!r} or a model "
            f"trained for the {task} task. Received: task={task!r}"
        )
    return classifier
