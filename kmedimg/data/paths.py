"""File hashing for local paths and gs:// alike (through tf.io.gfile).

Paths are joined with `kmedimg.core.run_directory.join`.
"""

import hashlib

import tensorflow as tf

_CHUNK_BYTES = 8 * 1024 * 1024


def sha256_of(path):
    """Hex sha256 of a file, read in chunks through tf.io.gfile."""
    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as handle:
        while True:
            chunk = handle.read(_CHUNK_BYTES)
            if not chunk:
                break
            digest.update(chunk)
    return digest.hexdigest()
