"""Local response normalisation across channels (AlexNet, 2012)."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kmedimg")
class LocalResponseNormalization(keras.layers.Layer):
    """`x / (bias + alpha * sum(x**2 over 2*depth_radius+1 channels)) ** beta`.

    The normalisation of Krizhevsky et al. (2012) with their constants
    (k=2, n=5, alpha=1e-4, beta=0.75), written with Keras ops so it runs on any
    backend and under XLA; same definition as `tf.nn.local_response_normalization`.

    Args:
        depth_radius: half-width of the channel window. Defaults to `2`.
        bias: additive constant `k`. Defaults to `2.0`.
        alpha: scale. Defaults to `1e-4`.
        beta: exponent. Defaults to `0.75`.
        **kwargs: forwarded to `keras.layers.Layer`.

    Example:

    >>> LocalResponseNormalization()(np.ones((1, 4, 4, 8))).shape
    (1, 4, 4, 8)
    """

    def __init__(self, depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75, **kwargs):
        super().__init__(**kwargs)
        if depth_radius < 0:
            raise ValueError(
                f"Argument `depth_radius` must be >= 0. Received: depth_radius={depth_radius}"
            )
        self.depth_radius = int(depth_radius)
        self.bias = float(bias)
        self.alpha = float(alpha)
        self.beta = float(beta)

    def call(self, inputs):
        squared = ops.square(ops.cast(inputs, "float32"))
        channels = inputs.shape[-1]
        radius = self.depth_radius
        padded = ops.pad(squared, [[0, 0]] * (len(inputs.shape) - 1) + [[radius, radius]])
        window = 0.0
        for offset in range(2 * radius + 1):
            window = window + padded[..., offset : offset + channels]
        scale = ops.power(self.bias + self.alpha * window, -self.beta)
        return ops.cast(ops.cast(inputs, "float32") * scale, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "depth_radius": self.depth_radius,
                "bias": self.bias,
                "alpha": self.alpha,
                "beta": self.beta,
            }
        )
        return config
