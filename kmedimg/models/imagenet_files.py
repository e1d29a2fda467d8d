"""The ImageNet weights file Keras expects for a backbone, and checks of such a file.

What file a `keras.applications` constructor downloads (its name, URL and the hash
Keras checks, if any) is read from Keras itself, not copied into kmedimg: the
constructor is called with `weights="imagenet"` while `keras.utils.get_file` is
briefly replaced by a recorder that stops the call before any download. The file
is then looked up in the Keras cache (`$KERAS_HOME/models`, else `~/.keras/models`).

"Cannot get the file" (`check_imagenet_available`): the file is not in the cache
and either `KMEDIMG_OFFLINE=1` or a TCP connection to the URL's host does not open
within 3 seconds.
"""

import contextlib
import os
import shutil
import socket
import urllib.parse


from keras.src.utils import file_utils

CONNECT_TIMEOUT = 3.0


class _Recorded(Exception):
    def __init__(self, kwargs):
        super().__init__("recorded")
        self.kwargs = kwargs


@contextlib.contextmanager
def _recording_get_file():
    original = file_utils.get_file

    def record(fname=None, origin=None, file_hash=None, md5_hash=None, **kwargs):
        raise _Recorded({"file_name": fname, "url": origin, "file_hash": file_hash or md5_hash})

    file_utils.get_file = record
    try:
        yield
    finally:
        file_utils.get_file = original


def keras_cache_dir():
    """The directory `keras.utils.get_file(..., cache_subdir="models")` stores files in."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "models")


def imagenet_size(record, input_shape=None):
    """The square input size whose ImageNet file applies to `input_shape` (or the default)."""
    if input_shape is not None:
        return int(input_shape[0])
    if record.imagenet_sizes:
        return int(record.default_size if record.default_size in record.imagenet_sizes
                   else record.imagenet_sizes[-1])
    return int(max(record.min_size, 32))


def imagenet_file(record, input_shape=None):
    """`{"file_name", "url", "file_hash", "path", "cached"}` of a backbone's ImageNet file.

    Args:
        record: a registry `Backbone` with ImageNet weights.
        input_shape: `(height, width, channels)`; the file of some families
            (MobileNet) depends on the size. Defaults to the record's default size.

    Returns:
        The dict, or `None` when Keras' constructor did not name a file
        (the URL cannot be derived for this family).
    """
    size = imagenet_size(record, input_shape)
    try:
        with _recording_get_file():
            record.constructor(include_top=False, weights="imagenet", input_shape=(size, size, 3),
                               **dict(record.constructor_kwargs))
    except _Recorded as recorded:
        info = dict(recorded.kwargs)
        info["path"] = os.path.join(keras_cache_dir(), info["file_name"])
        info["cached"] = os.path.exists(info["path"])
        return info
    except Exception:  # noqa: BLE001 - any other failure: the file cannot be derived
        return None
    return None


def _host_reachable(url):
    parts = urllib.parse.urlparse(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=CONNECT_TIMEOUT):
            return True
    except OSError:
        return False


def check_imagenet_available(record, input_shape):
    """Raises one-line `ValueError` when the ImageNet file is not cached and cannot be fetched.

    Offline means `KMEDIMG_OFFLINE=1` or no TCP connection to the URL's host
    within `CONNECT_TIMEOUT` seconds. A file Keras cannot name is left to Keras.
    """
    info = imagenet_file(record, input_shape)
    if info is None or info["cached"]:
        return
    if os.environ.get("KMEDIMG_OFFLINE") != "1" and _host_reachable(info["url"]):
        return
    raise ValueError(
        f"ImageNet weights for {record.name!r} are not in the Keras cache "
        f"({keras_cache_dir()}) and this machine cannot download them: get "
        f"{info['file_name']} from {info['url']} on another machine, then run "
        f"`kmedimg weights import FILE`. Received: model.weights='imagenet'"
    )


def check_architecture(record, path, size):
    """Loads `path` into the backbone built with `weights=None`; raises naming the mismatch."""
    model = record.constructor(include_top=False, weights=None, input_shape=(size, size, 3),
                               **dict(record.constructor_kwargs))
    try:
        model.load_weights(path)
    except Exception as error:  # noqa: BLE001 - h5py/Keras raise several types
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"The file {path!r} does not fit {record.name!r} at {size}x{size}: {first}. "
            f"Bring the file Keras names for this backbone (`kmedimg weights list`). "
            f"Received: file={os.path.basename(path)!r}"
        ) from None


def check_imagenet_file(record, info, path, size):
    """Checks `path` against Keras' published hash, or its architecture when Keras has none."""
    if info["file_hash"]:
        if not file_utils.validate_file(path, info["file_hash"]):
            algorithm = "sha256" if len(info["file_hash"]) == 64 else "md5"
            actual = file_utils.hash_file(path, algorithm)
            raise ValueError(
                f"The file {path!r} does not match the {algorithm} Keras publishes for "
                f"{info['file_name']}: expected {info['file_hash']}, got {actual}. Download it "
                f"again from {info['url']}. Received: file={os.path.basename(path)!r}"
            )
        return "hash"
    check_architecture(record, path, size)
    return "architecture"


def import_imagenet_file(record, info, path, size):
    """Checks `path`, then copies it into the Keras cache under the expected name."""
    how = check_imagenet_file(record, info, path, size)
    os.makedirs(keras_cache_dir(), exist_ok=True)
    shutil.copyfile(path, info["path"])
    return how


def load_file_names(record):
    """`{file_name: (info, size)}` for every ImageNet size of a backbone."""
    sizes = record.imagenet_sizes or (imagenet_size(record),)
    names = {}
    for size in sizes:
        info = imagenet_file(record, (size, size, 3))
        if info is not None:
            names.setdefault(info["file_name"], (info, size))
    return names


__all__ = ["check_architecture", "check_imagenet_available", "check_imagenet_file",
           "imagenet_file", "import_imagenet_file", "keras_cache_dir", "load_file_names"]
