"""Replicate a single grey channel into three."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kmedimg")
class GreyToRGB(keras.layers.Layer):
    """Repeats a 1-channel image three times along the channel axis.

    Three-channel input passes through unchanged, so the layer can sit in any
    model whose input may be grey or colour.

    Args:
        **kwargs: forwarded to `keras.layers.Layer`.

    Example:

    >>> GreyToRGB()(np.zeros((1, 4, 4, 1))).shape
    (1, 4, 4, 3)
    """

    def call(self, inputs):
        channels = inputs.shape[-1]
        if channels == 3:
            return inputs
        if channels != 1:
            raise ValueError(
                "GreyToRGB expects 1 or 3 channels (channels-last). "
                f"Received: input shape={tuple(inputs.shape)}"
            )
        return ops.repeat(inputs, 3, axis=-1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (3,)
