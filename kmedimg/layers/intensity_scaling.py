"""Scale raw stored intensities (uint8 / uint16 range) to [0, 1]."""

import keras
from keras import ops

INPUT_RANGES = {"uint8": 255.0, "uint16": 65535.0, "float": 1.0}


@keras.saving.register_keras_serializable(package="kmedimg")
class IntensityScaling(keras.layers.Layer):
    """Divides raw pixel values by the maximum of their stored integer type.

    The kmedimg pipeline hands the model images in their stored range (0..255 for
    uint8, 0..65535 for uint16), so an exported model takes raw pixels. Integer
    tensors are accepted and cast first. The layer computes in float32 by default
    so that 16-bit intensities keep their precision under mixed precision.

    Args:
        pixel_dtype: the stored pixel type, one of `"uint8"`, `"uint16"` or
            `"float"` (already in [0, 1]; the layer only casts). Defaults to `"uint8"`.
        clip: clip the result to [0, 1]. Defaults to `True`.
        **kwargs: forwarded to `keras.layers.Layer`.

    Example:

    >>> layer = IntensityScaling("uint16")
    >>> float(layer(np.array([[65535.0]]))[0, 0])
    1.0
    """

    def __init__(self, pixel_dtype="uint8", clip=True, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if pixel_dtype not in INPUT_RANGES:
            raise ValueError(
                "Argument `pixel_dtype` must be one of "
                f"{sorted(INPUT_RANGES)}. Received: pixel_dtype={pixel_dtype!r}"
            )
        self.pixel_dtype = pixel_dtype
        self.clip = clip

    def call(self, inputs):
        scaled = ops.cast(inputs, self.compute_dtype) / INPUT_RANGES[self.pixel_dtype]
        if self.clip:
            scaled = ops.clip(scaled, 0.0, 1.0)
        return scaled

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"pixel_dtype": self.pixel_dtype, "clip": self.clip})
        return config
