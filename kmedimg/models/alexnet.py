"""AlexNet (Krizhevsky, Sutskever and Hinton, 2012) as a headless Keras backbone."""

import keras
from keras import layers

from kmedimg.layers import LocalResponseNormalization


def AlexNet(input_shape=(227, 227, 3), normalization="lrn", weights=None, name="alexnet"):
    """The five convolutional layers of AlexNet, single-tower layout.

    conv1 96@11x11/4 - norm - maxpool 3/2 - conv2 256@5x5 - norm - maxpool 3/2 -
    conv3 384@3x3 - conv4 384@3x3 - conv5 256@3x3 - maxpool 3/2, ReLU after every
    convolution. The paper's two-GPU grouping is not reproduced (it was a memory
    work-around). `normalization="lrn"` uses the paper's local response
    normalisation, `"batchnorm"` the BatchNormalization that replaced it in
    practice. The fully connected layers belong to the classifier head
    (`hidden_units=4096`).

    Args:
        input_shape: `(height, width, channels)`, at least 67x67.
            Defaults to `(227, 227, 3)`.
        normalization: `"lrn"` or `"batchnorm"`. Defaults to `"lrn"`.
        weights: `None` or a path to a weights file. Defaults to `None`.
        name: model name. Defaults to `"alexnet"`.

    Returns:
        A `keras.Model` mapping images to the pool5 feature map (256 channels).
    """
    if normalization not in ("lrn", "batchnorm"):
        raise ValueError(
            "Argument `normalization` must be one of ['lrn', 'batchnorm']. "
            f"Received: normalization={normalization!r}"
        )

    def norm(x, index):
        if normalization == "lrn":
            return LocalResponseNormalization(name=f"conv{index}_lrn")(x)
        return layers.BatchNormalization(name=f"conv{index}_bn")(x)

    inputs = keras.Input(shape=input_shape)
    x = layers.Conv2D(96, 11, strides=4, activation="relu", name="conv1_conv")(inputs)
    x = norm(x, 1)
    x = layers.MaxPooling2D(3, strides=2, name="conv1_pool")(x)
    x = layers.Conv2D(256, 5, padding="same", activation="relu", name="conv2_conv")(x)
    x = norm(x, 2)
    x = layers.MaxPooling2D(3, strides=2, name="conv2_pool")(x)
    x = layers.Conv2D(384, 3, padding="same", activation="relu", name="conv3_conv")(x)
    x = layers.Conv2D(384, 3, padding="same", activation="relu", name="conv4_conv")(x)
    x = layers.Conv2D(256, 3, padding="same", activation="relu", name="conv5_conv")(x)
    x = layers.MaxPooling2D(3, strides=2, name="conv5_pool")(x)
    model = keras.Model(inputs, x, name=name)
    if weights is not None:
        model.load_weights(weights)
    return model
