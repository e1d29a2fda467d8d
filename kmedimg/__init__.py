"""kmedimg: CNN transfer learning on medical images with Keras 3, tf.data and TPUs."""

from kmedimg._tensorflow import require_tensorflow

require_tensorflow()

__version__ = "0.1.0"
