"""Path joining and file hashing for local paths and gs:// alike (through tf.io.gfile)."""

import hashlib
import os

_CHUNK_BYTES = 8 * 1024 * 1024


def join(directory, name):
    """Joins `name` to a local directory or a URL-style one (gs://...)."""
    if "://" in str(directory):
        return str(directory).rstrip("/") + "/" + name
    return os.path.join(directory, name)


def sha256_of(path):
    """Hex sha256 of a file, read in chunks through tf.io.gfile."""
    import tensorflow as tf

    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as handle:
        while True:
            chunk = handle.read(_CHUNK_BYTES)
            if not chunk:
                break
            digest.update(chunk)
    return digest.hexdigest()
