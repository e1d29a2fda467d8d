"""kmedimg.layers: numerics against Keras/TF references, serialisation, bf16 + XLA."""

import numpy as np
import pytest
import tensorflow as tf

import keras

from kmedimg import layers as kl


def _roundtrip(layer, x, tmp_path, training=False):
    inputs = keras.Input(x.shape[1:])
    model = keras.Model(inputs, layer(inputs, training=training) if training else layer(inputs))
    path = tmp_path / "layer.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    restored = type(layer).from_config(layer.get_config())
    assert restored.get_config() == layer.get_config()
    return loaded


@pytest.mark.parametrize(
    "layer",
    [
        kl.IntensityScaling("uint16"),
        kl.Window(center=1000.0, width=500.0),
        kl.PerImageStandardization(),
        kl.GreyToRGB(),
        kl.BackbonePreprocessing("caffe"),
        kl.GeMPooling2D(p=2.5),
        kl.LocalResponseNormalization(),
        kl.MedicalAugmentation(rotation=5, seed=3),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_layers_save_and_load_with_safe_mode(layer, tmp_path):
    x = np.random.default_rng(0).uniform(0, 1200, (2, 12, 12, 1)).astype("float32")
    _roundtrip(layer, x, tmp_path)


def test_intensity_scaling_and_window_values():
    x = np.array([[0.0, 255.0, 65535.0]], dtype="float32")
    np.testing.assert_allclose(kl.IntensityScaling("uint8")(x), [[0.0, 1.0, 1.0]])
    np.testing.assert_allclose(kl.IntensityScaling("uint16")(x), [[0.0, 255 / 65535, 1.0]], rtol=1e-6)
    # Integer tensors are accepted.
    np.testing.assert_allclose(kl.IntensityScaling("uint8")(np.array([[0, 51]], dtype="uint8")), [[0.0, 0.2]])
    window = kl.Window(center=40, width=400)  # soft tissue, in HU
    np.testing.assert_allclose(window(np.array([[-1000.0, -160.0, 40.0, 240.0, 3000.0]])), [[0, 0, 0.5, 1, 1]])
    with pytest.raises(ValueError, match="Received: pixel_dtype='int8'"):
        kl.IntensityScaling("int8")
    with pytest.raises(ValueError, match="Received: width=0"):
        kl.Window(0, 0)


def test_per_image_standardization_matches_tensorflow():
    x = np.random.default_rng(1).uniform(0, 1, (3, 9, 9, 2)).astype("float32")
    x[2] = 0.5  # constant image: no division by zero
    expected = tf.image.per_image_standardization(x).numpy()
    np.testing.assert_allclose(kl.PerImageStandardization()(x), expected, atol=1e-5)


@pytest.mark.parametrize(
    "mode, module",
    [
        ("caffe", keras.applications.resnet50),
        ("tf", keras.applications.mobilenet_v2),
        ("torch", keras.applications.densenet),
    ],
)
def test_backbone_preprocessing_matches_keras_preprocess_input(mode, module):
    x = np.random.default_rng(2).uniform(0, 1, (2, 5, 5, 3)).astype("float32")
    expected = module.preprocess_input(x * 255.0)
    np.testing.assert_allclose(kl.BackbonePreprocessing(mode)(x), expected, rtol=1e-5, atol=1e-4)


def test_grey_to_rgb_and_gem_pooling():
    grey = np.random.default_rng(3).uniform(0, 1, (2, 4, 4, 1)).astype("float32")
    rgb = kl.GreyToRGB()(grey)
    assert rgb.shape == (2, 4, 4, 3)
    np.testing.assert_array_equal(rgb[..., 2], grey[..., 0])
    features = np.random.default_rng(4).uniform(0.1, 2, (2, 5, 5, 8)).astype("float32")
    np.testing.assert_allclose(kl.GeMPooling2D(p=1.0)(features), features.mean(axis=(1, 2)), rtol=1e-5)
    gem = kl.GeMPooling2D(p=3.0)(features)
    np.testing.assert_allclose(gem, np.mean(features**3, axis=(1, 2)) ** (1 / 3), rtol=1e-4)


def test_local_response_normalization_matches_tensorflow():
    x = np.random.default_rng(5).normal(size=(2, 4, 4, 11)).astype("float32") * 10
    expected = tf.nn.local_response_normalization(x, depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75)
    np.testing.assert_allclose(kl.LocalResponseNormalization()(x), expected, rtol=1e-5)


def test_augmentation_is_off_at_inference_and_on_in_training():
    x = np.random.default_rng(6).uniform(0, 1, (4, 16, 16, 1)).astype("float32")
    augment = kl.MedicalAugmentation(seed=0)
    np.testing.assert_array_equal(augment(x, training=False), x)
    out = keras.ops.convert_to_numpy(augment(x, training=True))
    assert out.shape == x.shape and not np.allclose(out, x)
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_augmentation_flip_only_is_an_exact_flip():
    x = np.random.default_rng(7).uniform(0, 1, (16, 8, 8, 1)).astype("float32")
    augment = kl.MedicalAugmentation(
        flip="horizontal", rotation=0, zoom=0, translation=0, contrast=0, brightness=0, noise_stddev=0, seed=1
    )
    out = keras.ops.convert_to_numpy(augment(x, training=True))
    flipped = [np.allclose(o, xi[:, ::-1], atol=1e-6) for o, xi in zip(out, x)]
    same = [np.allclose(o, xi, atol=1e-6) for o, xi in zip(out, x)]
    assert all(f or s for f, s in zip(flipped, same))
    assert 0 < sum(flipped) < len(x)


def test_augmentation_runs_under_mixed_bfloat16_inside_xla():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        augment = kl.MedicalAugmentation(seed=2)
        x = tf.constant(np.random.default_rng(8).uniform(0, 1, (4, 16, 16, 3)), tf.float32)

        @tf.function(jit_compile=True)
        def step(images):
            return augment(images, training=True)

        out = step(x).numpy()
        assert augment.compute_dtype == "float32"
        assert np.isfinite(out).all() and not np.allclose(out, x.numpy())
    finally:
        keras.config.set_dtype_policy(previous)


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="Received: flip='diagonal'"):
        kl.MedicalAugmentation(flip="diagonal")
    with pytest.raises(ValueError, match="Received: rotation=270"):
        kl.MedicalAugmentation(rotation=270)
    with pytest.raises(ValueError, match="Received: mode='yolo'"):
        kl.BackbonePreprocessing("yolo")
    with pytest.raises(ValueError, match="Received: input shape"):
        kl.GreyToRGB()(np.zeros((1, 2, 2, 2)))


def test_augmentation_noise_has_the_requested_spread():
    augment = kl.MedicalAugmentation(
        flip=None, rotation=0, zoom=0, translation=0, contrast=0, brightness=0, noise_stddev=0.05, seed=4
    )
    out = keras.ops.convert_to_numpy(augment(np.full((8, 32, 32, 1), 0.5, "float32"), training=True))
    assert abs(out.mean() - 0.5) < 0.005
    assert abs(out.std() - 0.05) < 0.005
