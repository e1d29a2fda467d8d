"""Finds the user's TensorFlow and refuses, clearly, to run without a supported one.

TensorFlow is not a hard dependency of the package (it would replace
`tensorflow-tpu` on a Cloud TPU VM), so the check happens here, when the first
package built on tf.data (`kmedimg.data`) is imported. `kmedimg.layers` and
`kmedimg.models` need no TensorFlow.
"""

import os

MINIMUM_TENSORFLOW = (2, 16)
TESTED_TENSORFLOW = "2.16 - 2.21"

_INSTALL_HINT = (
    "Install one with `pip install 'kmedimg[cpu]'` (tensorflow-cpu) or "
    "`pip install 'kmedimg[gpu]'` (tensorflow[and-cuda]); on a Cloud TPU VM keep the "
    "preinstalled `tensorflow-tpu`."
)


def _version_tuple(version):
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def set_default_environment():
    """Defaults Keras' backend to TensorFlow and quiets TensorFlow's C++ start-up log.

    Imports nothing; a variable the user has set wins. Called by `import kmedimg`
    before Keras is imported, since Keras picks its backend at import.
    """
    # Keras 3 picks its backend at import; kmedimg's input pipeline is tf.data.
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    # TensorFlow's C++ start-up chatter (oneDNN, CPU features) drowns the CLI's output;
    # a user who wants it sets TF_CPP_MIN_LOG_LEVEL themselves.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def require_tensorflow():
    """Imports TensorFlow and checks that its version is supported.

    Returns:
        The `tensorflow` module.

    Raises:
        ImportError: when TensorFlow is missing or older than 2.16.
    """
    set_default_environment()
    try:
        import tensorflow as tf
    except ImportError as error:
        raise ImportError(
            "kmedimg needs TensorFlow >= 2.16 (tested "
            f"{TESTED_TENSORFLOW}), but it could not be imported: {error}. {_INSTALL_HINT}"
        ) from error
    if _version_tuple(tf.__version__) < MINIMUM_TENSORFLOW:
        raise ImportError(
            "kmedimg needs TensorFlow >= 2.16 with Keras 3 (tested "
            f"{TESTED_TENSORFLOW}). Received: tensorflow=={tf.__version__}. {_INSTALL_HINT}"
        )
    return tf
