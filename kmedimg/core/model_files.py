"""What a model file is before Keras opens it, and why Keras refused one.

`kmedimg` opens models only as Keras v3 `.keras` archives with `safe_mode=True`: a
config naming a class Keras does not know (say `os.system`) is refused before anything
from the file is run. These helpers turn what Keras reports into one clear message:

- `model_file_of(path)`: `RUN_DIR/model.keras` for a run directory, else `path`.
- `check_model_file(path)`: refuses a file named `.keras` that is an HDF5 (legacy
  `.h5`) file, or not a zip archive at all, saying what it is and what to do.
- `refused_class_error(path, error)`: the `ModelFileError` for Keras' "Could not
  locate class" `TypeError` (an unsafe or unknown class), else None.

Example:

```python
check_model_file("runs/quickstart/model.keras")
```
"""

import json
import re
import zipfile

import tensorflow as tf

from kmedimg.core.errors import ModelFileError
from kmedimg.core.run_directory import RunDirectory

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"
_UNLOCATED = re.compile(r"Could not locate (class|function) '([^']+)'")


def model_file_of(path):
    """The model file of `path`: `RUN_DIR/model.keras` for a run directory, else `path`."""
    path = str(path)
    return RunDirectory(path).model_path if tf.io.gfile.isdir(path) else path


def check_model_file(path):
    """Raises `ModelFileError` unless `path` is a zip archive (a `.keras` file).

    Args:
        path: a model file (local or any tf.io.gfile file system); a missing file is
            left to the caller.
    """
    path = str(path)
    if not tf.io.gfile.exists(path) or tf.io.gfile.isdir(path):
        return
    with tf.io.gfile.GFile(path, "rb") as handle:
        head = handle.read(8)
    if head == HDF5_SIGNATURE:
        raise ModelFileError(
            f"{path}: is an HDF5 file (the legacy Keras `.h5` format), not a `.keras` zip "
            "archive, although it is named `.keras`. kmedimg opens only Keras v3 `.keras` "
            "files. Re-save the model from the code that built it with "
            "`model.save('model.keras')`, or load `.weights.h5` weights into the run's "
            "model with `model.load_weights(...)`. Received: a file starting with the "
            "HDF5 signature"
        )
    if head[:4] != ZIP_SIGNATURE:
        raise ModelFileError(
            f"{path}: is not a `.keras` file (a zip archive); it may be truncated or another "
            f"format. Pass the `model.keras` a kmedimg run wrote. Received: first bytes "
            f"{head[:4]!r}"
        )


def refused_class_error(path, error):
    """The `ModelFileError` for Keras refusing an unknown class in `path`, else None.

    Nothing from the file has run when Keras raises this: safe mode looks classes up
    in its own and kmedimg's registered objects only.

    Args:
        path: the model file Keras was opening.
        error: the exception Keras raised.
    """
    match = _UNLOCATED.search(str(error)) if isinstance(error, TypeError) else None
    if match is None:
        return None
    kind, name = match.groups()
    module = _module_of(path, name)
    named = f"{module}.{name}" if module else name
    return ModelFileError(
        f"{path}: refused as unsafe: its config names the {kind} {named!r}, which is "
        "neither a Keras nor a kmedimg object. Nothing from the file was run. Open only "
        "models written by kmedimg or Keras; a model with your own layers must be loaded "
        "from Python after registering them with `keras.saving.register_keras_serializable`. "
        f"Received: {kind} {named!r}"
    )


def _module_of(path, name):
    """The `module` the archive's config.json gives for class `name` ('' if unknown)."""
    try:
        with tf.io.gfile.GFile(str(path), "rb") as handle, zipfile.ZipFile(handle) as archive:
            config = json.loads(archive.read("config.json"))
    except Exception:  # noqa: BLE001 - only for the message: the refusal stands anyway
        return ""
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("class_name") == name and isinstance(node.get("module"), str):
                return node["module"]
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return ""
