"""Per-image zero-mean / unit-variance normalisation."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kmedimg")
class PerImageStandardization(keras.layers.Layer):
    """Standardises every image to mean 0 and standard deviation 1.

    Like `tf.image.per_image_standardization`: the standard deviation is floored
    at `1 / sqrt(number of values)` so a constant image does not divide by zero.
    Useful for modalities without a fixed intensity scale (MRI).

    Args:
        **kwargs: forwarded to `keras.layers.Layer`.

    Example:

    >>> out = PerImageStandardization()(np.random.rand(2, 8, 8, 1))
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, inputs):
        inputs = ops.cast(inputs, self.compute_dtype)
        axes = tuple(range(1, len(inputs.shape)))
        mean = ops.mean(inputs, axis=axes, keepdims=True)
        std = ops.std(inputs, axis=axes, keepdims=True)
        count = ops.cast(ops.prod(ops.shape(inputs)[1:]), self.compute_dtype)
        return (inputs - mean) / ops.maximum(std, ops.rsqrt(count))

    def compute_output_shape(self, input_shape):
        return input_shape
