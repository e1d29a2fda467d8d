"""The backbone families' `preprocess_input`, as a serializable layer."""

import keras
from keras import ops

# ImageNet statistics used by keras.applications' preprocess_input.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN_RGB = (0.485, 0.456, 0.406)
TORCH_STD_RGB = (0.229, 0.224, 0.225)

MODES = {
    "caffe": "RGB->BGR, x*255 minus the ImageNet BGR mean (VGG, ResNet v1)",
    "tf": "x*2-1, i.e. [-1, 1] (MobileNet v1/v2, Inception, ResNetV2, Xception, NASNet)",
    "torch": "ImageNet mean/std per RGB channel (DenseNet)",
    "scale255": "x*255; the backbone rescales itself (EfficientNet, ConvNeXt, MobileNetV3)",
    "identity": "unchanged [0, 1]",
}


@keras.saving.register_keras_serializable(package="kmedimg")
class BackbonePreprocessing(keras.layers.Layer):
    """Maps [0, 1] images to the input a backbone family was trained on.

    Equivalent to `keras.applications.<family>.preprocess_input(255 * x)` but a
    layer inside the model, so a saved model takes raw pixels. One-channel input
    uses the channel-averaged statistics (the grey "fold" of the first
    convolution in `kmedimg.models` corrects for the difference exactly).

    Args:
        mode: one of `"caffe"`, `"tf"`, `"torch"`, `"scale255"`, `"identity"`
            (see `MODES`). Defaults to `"tf"`.
        **kwargs: forwarded to `keras.layers.Layer`.

    Example:

    >>> BackbonePreprocessing("tf")(np.array([[[[0.0, 0.5, 1.0]]]]))
    [[[[-1.0, 0.0, 1.0]]]]
    """

    def __init__(self, mode="tf", **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(
                f"Argument `mode` must be one of {sorted(MODES)}. Received: mode={mode!r}"
            )
        self.mode = mode

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        channels = x.shape[-1]
        if self.mode == "tf":
            return x * 2.0 - 1.0
        if self.mode == "scale255":
            return x * 255.0
        if self.mode == "identity":
            return x
        if self.mode == "caffe":
            if channels == 3:
                x = ops.flip(x, axis=-1)
                mean = ops.convert_to_tensor(CAFFE_MEAN_BGR, dtype=self.compute_dtype)
            else:
                mean = sum(CAFFE_MEAN_BGR) / 3.0
            return x * 255.0 - mean
        # torch
        if channels == 3:
            mean = ops.convert_to_tensor(TORCH_MEAN_RGB, dtype=self.compute_dtype)
            std = ops.convert_to_tensor(TORCH_STD_RGB, dtype=self.compute_dtype)
        else:
            mean = sum(TORCH_MEAN_RGB) / 3.0
            std = sum(TORCH_STD_RGB) / 3.0
        return (x - mean) / std

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode})
        return config
