"""kmedimg: CNN transfer learning on medical images with Keras 3, tf.data and TPUs.

`import kmedimg` registers the serializable layers and `ImageClassifier`, so
`keras.saving.load_model("run/model.keras")` works after it. It imports no
TensorFlow itself: `kmedimg.layers` and `kmedimg.models` run on any Keras backend
(set `KERAS_BACKEND`; unset, kmedimg defaults it to `"tensorflow"`). The packages
built on tf.data (`kmedimg.data` and everything above it) check for a supported
TensorFlow when imported.
"""

__version__ = "0.1.0"

from kmedimg._tensorflow import set_default_environment  # noqa: E402

set_default_environment()

from kmedimg import layers, models  # noqa: E402,F401  (registers the serializable classes)
