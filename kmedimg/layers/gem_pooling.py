"""Generalised-mean (GeM) global pooling."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kmedimg")
class GeMPooling2D(keras.layers.Layer):
    """Global generalised-mean pooling, `mean(x ** p) ** (1 / p)` per channel.

    `p = 1` is average pooling and large `p` approaches max pooling (Radenović et
    al., 2018). Inputs are clipped at `epsilon` first (the power needs positive
    values) and the pooling runs in float32 even under mixed precision.

    Args:
        p: initial exponent, > 0. Defaults to `3.0`.
        trainable_p: learn `p` with the rest of the head. Defaults to `True`.
        epsilon: lower clip of the input. Defaults to `1e-6`.
        **kwargs: forwarded to `keras.layers.Layer`.

    Example:

    >>> GeMPooling2D()(np.ones((2, 7, 7, 16))).shape
    (2, 16)
    """

    def __init__(self, p=3.0, trainable_p=True, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        if not p > 0:
            raise ValueError(f"Argument `p` must be > 0. Received: p={p}")
        self.p = float(p)
        self.trainable_p = trainable_p
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        self.exponent = self.add_weight(
            name="p",
            shape=(),
            initializer=keras.initializers.Constant(self.p),
            trainable=self.trainable_p,
            dtype="float32",
        )

    def call(self, inputs):
        inputs = ops.cast(inputs, "float32")
        exponent = ops.maximum(ops.cast(self.exponent, "float32"), 1e-3)
        powered = ops.power(ops.maximum(inputs, self.epsilon), exponent)
        pooled = ops.mean(powered, axis=(1, 2))
        return ops.cast(ops.power(pooled, 1.0 / exponent), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(
            {"p": self.p, "trainable_p": self.trainable_p, "epsilon": self.epsilon}
        )
        return config
