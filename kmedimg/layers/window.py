"""CT-style intensity windowing."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kmedimg")
class Window(keras.layers.Layer):
    """Maps the intensity window `[center - width/2, center + width/2]` to [0, 1].

    Values below the window become 0, values above it 1 (the radiologist's
    window/level). `center` and `width` are in the units the pixels are stored in:
    for CT stored as uint16 with the usual +1024 offset, a lung window
    (center -600 HU, width 1500 HU) is `Window(424, 1500)`.

    Args:
        center: window centre (level). Defaults to `40.0` (soft tissue in HU).
        width: window width, > 0. Defaults to `400.0`.
        **kwargs: forwarded to `keras.layers.Layer`.

    Example:

    >>> Window(center=50, width=100)(np.array([[0.0, 50.0, 100.0]]))
    [[0.0, 0.5, 1.0]]
    """

    def __init__(self, center=40.0, width=400.0, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if not width > 0:
            raise ValueError(
                f"Argument `width` must be > 0 (the window width). Received: width={width}"
            )
        self.center = float(center)
        self.width = float(width)

    def call(self, inputs):
        low = self.center - self.width / 2.0
        windowed = (ops.cast(inputs, self.compute_dtype) - low) / self.width
        return ops.clip(windowed, 0.0, 1.0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"center": self.center, "width": self.width})
        return config
