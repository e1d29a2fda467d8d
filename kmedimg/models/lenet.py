"""LeNet-5 (LeCun et al., 1998) as a headless Keras backbone."""

import keras
from keras import layers


def LeNet5(input_shape=(32, 32, 1), variant="classic", weights=None, name="lenet5"):
    """The convolutional part of LeNet-5: C1-S2-C3-S4-C5.

    `variant="classic"` follows the 1998 paper (tanh, average-pool subsampling;
    C3 is fully connected to S2 rather than the paper's partial connection
    table). `variant="modern"` swaps in ReLU and max pooling, the usual choice
    today. The classifier head (F6 and the output) is added by
    `build_classifier` (`hidden_units=84` reproduces F6).

    Args:
        input_shape: `(height, width, channels)`; 32x32 grey in the paper, at
            least 32x32. Defaults to `(32, 32, 1)`.
        variant: `"classic"` or `"modern"`. Defaults to `"classic"`.
        weights: `None` or a path to a weights file. Defaults to `None`.
        name: model name. Defaults to `"lenet5"`.

    Returns:
        A `keras.Model` mapping images to the C5 feature map (120 channels).
    """
    if variant not in ("classic", "modern"):
        raise ValueError(
            "Argument `variant` must be one of ['classic', 'modern']. "
            f"Received: variant={variant!r}"
        )
    activation = "tanh" if variant == "classic" else "relu"
    pool = layers.AveragePooling2D if variant == "classic" else layers.MaxPooling2D
    inputs = keras.Input(shape=input_shape)
    x = layers.Conv2D(6, 5, activation=activation, name="c1_conv")(inputs)
    x = pool(2, name="s2_pool")(x)
    x = layers.Conv2D(16, 5, activation=activation, name="c3_conv")(x)
    x = pool(2, name="s4_pool")(x)
    x = layers.Conv2D(120, 5, activation=activation, name="c5_conv")(x)
    model = keras.Model(inputs, x, name=name)
    if weights is not None:
        model.load_weights(weights)
    return model
