"""build_classifier, freezing by block, weights loading and mixed precision."""

import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import keras

from kmedimg.layers import BackbonePreprocessing, GreyToRGB
from kmedimg.models import (
    backbone_blocks,
    build_backbone,
    build_classifier,
    feature_model,
    freeze_backbone,
    get_backbone,
    get_backbone_model,
)

from helpers import randomize_weights, write_legacy_h5

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _pixels(shape, batch=2, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (batch,) + tuple(shape)).astype("float32")


def _trainable_count(model):
    return int(sum(np.prod(variable.shape) for variable in model.trainable_weights))


@pytest.mark.parametrize(
    "task, num_classes, units",
    [("binary", 1, 1), ("multiclass", 4, 4), ("multilabel", 3, 3)],
)
def test_outputs_per_task(task, num_classes, units):
    model = build_classifier("lenet5", num_classes, (32, 32, 1), task=task, hidden_units=84)
    out = model.predict(_pixels((32, 32, 1)), verbose=0)
    assert out.shape == (2, units) and np.isfinite(out).all()
    if task == "multiclass":
        np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    else:
        assert ((out > 0) & (out < 1)).all()


@pytest.mark.parametrize("channels", [1, 3])
def test_takes_raw_uint8_and_uint16_pixels(channels):
    model = build_classifier("alexnet_bn", 1, (67, 67, channels), input_dtype="uint16", head="gem")
    x = np.random.default_rng(1).integers(0, 65536, (2, 67, 67, channels)).astype("uint16")
    out = model.predict(x.astype("float32"), verbose=0)
    assert out.shape == (2, 1) and np.isfinite(out).all()
    # Integer tensors straight from a decoder work too.
    np.testing.assert_allclose(model(x.astype("int32")), out, rtol=1e-5)


def test_freeze_depth_trainable_counts_are_monotone_and_match_block_sums():
    model = build_classifier("mobilenetv2", 1, (32, 32, 1))
    blocks = backbone_blocks(model)
    assert blocks[0][0] == "stem" and len(blocks) == 19
    freeze_backbone(model, 0)
    everything = _trainable_count(model)
    block_params = [
        int(sum(np.prod(v.shape) for layer in layers for v in layer.trainable_weights)) for _, layers in blocks
    ]
    counts = []
    for depth in range(len(blocks) + 1):
        assert freeze_backbone(model, depth) == depth
        counts.append(_trainable_count(model))
        assert counts[-1] == everything - sum(block_params[:depth])
    assert all(a > b for a, b in zip(counts, counts[1:]))
    head = counts[-1]
    assert head == 1280 + 1  # only the output Dense trains
    assert freeze_backbone(model, "all") == len(blocks) and _trainable_count(model) == head
    assert freeze_backbone(model, 0.5) == 10 and _trainable_count(model) == counts[10]
    assert freeze_backbone(model, 0) == 0 and _trainable_count(model) == everything  # unfreezes
    assert freeze_backbone(model, 0.01) == 1  # a positive fraction freezes at least the stem
    for bad in (20, -1, 1.5, 0.0, "most", True):
        with pytest.raises(ValueError, match="Received: freeze_depth="):
            freeze_backbone(model, bad)


def test_frozen_batchnorm_keeps_its_moving_statistics_through_fit():
    # backbone_training="follow": the model is trained with training=True, so only
    # the freeze keeps BatchNormalization in inference mode.
    model = build_classifier("alexnet_bn", 1, (67, 67, 1), backbone_training="follow", dropout=0.0)
    freeze_backbone(model, "all")
    backbone = get_backbone_model(model)
    batchnorm = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    before = [keras.ops.convert_to_numpy(layer.moving_mean) for layer in batchnorm]
    model.compile("adam", "binary_crossentropy")
    model.fit(_pixels((67, 67, 1), batch=8), np.ones((8, 1)), epochs=1, verbose=0)
    for layer, old in zip(batchnorm, before):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.moving_mean), old)
    # Unfrozen, the same fit moves them.
    freeze_backbone(model, 0)
    model.compile("adam", "binary_crossentropy")
    model.fit(_pixels((67, 67, 1), batch=8), np.ones((8, 1)), epochs=1, verbose=0)
    assert not np.array_equal(keras.ops.convert_to_numpy(batchnorm[0].moving_mean), before[0])


def test_keras_round_trip_keeps_predictions_and_frozen_blocks(tmp_path):
    model = build_classifier(
        "mobilenetv2", 3, (32, 32, 1), task="multiclass", head="gem", hidden_units=16, augmentation=True
    )
    freeze_backbone(model, 3)
    x = _pixels((32, 32, 1), batch=3)
    expected = model.predict(x, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)
    frozen = [[layer.trainable for layer in layers] for _, layers in backbone_blocks(model)]
    assert [[layer.trainable for layer in layers] for _, layers in backbone_blocks(loaded)] == frozen
    assert _trainable_count(loaded) == _trainable_count(model)


def test_weights_from_a_file_really_load(tmp_path):
    source = get_backbone("vgg16").build((32, 32, 3))
    randomize_weights(source, seed=1)
    path = tmp_path / "vgg16.weights.h5"
    source.save_weights(path)
    model = build_classifier("vgg16", 1, (48, 48, 3), weights=str(path))
    loaded = get_backbone_model(model)
    for expected, actual in zip(source.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(actual, expected)


def test_weights_from_a_run_directory_really_load(tmp_path):
    trained = build_classifier("mobilenetv2", 1, (32, 32, 3))
    randomize_weights(get_backbone_model(trained), seed=2)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    trained.save(run_dir / "model.keras")
    reused = build_classifier("mobilenetv2", 4, (64, 64, 3), weights=str(run_dir), task="multiclass")
    for expected, actual in zip(get_backbone_model(trained).get_weights(), get_backbone_model(reused).get_weights()):
        np.testing.assert_array_equal(actual, expected)
    with pytest.raises(ValueError, match="holds a 'mobilenetv2' backbone"):
        build_classifier("densenet121", 1, (32, 32, 3), weights=str(run_dir))
    with pytest.raises(ValueError, match="without a model.keras"):
        build_classifier("mobilenetv2", 1, (32, 32, 3), weights=str(tmp_path))


def _first_layer_output(backbone, layer_name, preprocessed):
    sub = keras.Model(backbone.input, backbone.get_layer(layer_name).output)
    return keras.ops.convert_to_numpy(sub(preprocessed, training=False))


@pytest.mark.parametrize(
    "name, layer_name",
    [
        ("vgg16", "block1_conv1"),  # caffe BGR means, conv with bias
        pytest.param("resnet50", "conv1_conv", marks=pytest.mark.slow),
        pytest.param(  # torch mean/std, no bias: the BN absorbs the constant
            "densenet121", "conv1_bn", marks=pytest.mark.slow
        ),
        pytest.param(  # preprocessing inside the model
            "efficientnetb0", "stem_bn", marks=pytest.mark.slow
        ),
    ],
)
def test_grey_fold_equals_the_rgb_network_on_replicated_grey(name, layer_name, tmp_path):
    record = get_backbone(name)
    rgb = record.build((40, 40, 3))
    randomize_weights(rgb, seed=3)
    path = tmp_path / f"{name}.weights.h5"
    rgb.save_weights(path)
    # Reload: Normalization layers only use assigned statistics after loading.
    rgb = record.build((40, 40, 3))
    rgb.load_weights(path)
    grey_backbone = build_backbone(name, (40, 40, 1), weights=str(path), grey_weights="fold")
    assert grey_backbone.input.shape[-1] == 1
    grey = np.random.default_rng(4).uniform(0, 1, (2, 40, 40, 1)).astype("float32")
    preprocessing = BackbonePreprocessing(record.preprocessing)
    folded = _first_layer_output(grey_backbone, layer_name, preprocessing(grey))
    reference = _first_layer_output(rgb, layer_name, preprocessing(GreyToRGB()(grey)))
    inner = (slice(None), slice(3, -3), slice(3, -3))  # zero padding differs at the border
    np.testing.assert_allclose(folded[inner], reference[inner], rtol=2e-3, atol=2e-3)


def test_unsupported_imagenet_requests_name_the_allowed_values():
    with pytest.raises(ValueError, match=r"\[96, 128, 160, 192, 224\].*Received: input_shape=\(100, 100, 1\)"):
        build_classifier("mobilenetv2", 1, (100, 100, 1), weights="imagenet")
    with pytest.raises(ValueError, match="no ImageNet weights"):
        build_classifier("lenet5", 1, (32, 32, 1), weights="imagenet")
    with pytest.raises(ValueError, match=r"at least 75x75.*Received: input_shape=\(64, 64, 3\)"):
        build_classifier("inceptionv3", 1, (64, 64, 3))
    with pytest.raises(ValueError, match="Received: grey_weights='average'"):
        build_classifier("mobilenetv2", 1, (96, 96, 1), weights="imagenet", grey_weights="average")
    with pytest.raises(ValueError, match="Received: task='regression'"):
        build_classifier("lenet5", 1, (32, 32, 1), task="regression")


def test_imagenet_path_runs_offline_from_a_seeded_keras_cache(tmp_path):
    # Keras checks no hash for MobileNetV2 (file_hash=None in
    # keras/src/applications/mobilenet_v2.py), so a file of the right name in
    # $KERAS_HOME/models is what the real loading code reads.
    seeded = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(96, 96, 3))
    randomize_weights(seeded, seed=5)
    cache = tmp_path / "keras_home" / "models"
    cache.mkdir(parents=True)
    weights_file = cache / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5"
    write_legacy_h5(seeded, weights_file)
    expected = tmp_path / "expected.npz"
    np.savez(expected, *[keras.ops.convert_to_numpy(v) for v in seeded.weights])
    script = textwrap.dedent(
        f"""
        import keras
        import numpy as np
        from kmedimg.models import build_classifier, get_backbone_model
        expected = list(np.load({str(expected)!r}).values())
        rgb = get_backbone_model(build_classifier("mobilenetv2", 1, (96, 96, 3), weights="imagenet"))
        assert len(rgb.weights) == len(expected)
        for variable, value in zip(rgb.weights, expected):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), value)
        grey = get_backbone_model(build_classifier("mobilenetv2", 1, (96, 96, 1), weights="imagenet"))
        # "tf" preprocessing is the same affine map for every channel: the fold is the plain sum.
        np.testing.assert_allclose(keras.ops.convert_to_numpy(grey.weights[0]), expected[0].sum(axis=2, keepdims=True), rtol=1e-5, atol=1e-6)
        for variable, value in zip(grey.weights[1:], expected[1:]):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), value)
        print("seeded imagenet weights loaded")
        """
    )
    env = dict(os.environ, KERAS_HOME=str(tmp_path / "keras_home"), PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "seeded imagenet weights loaded" in result.stdout


def test_feature_model_returns_the_grad_cam_layer_and_the_predictions():
    model = build_classifier("resnet50", 1, (32, 32, 3))
    features, predictions = feature_model(model)(_pixels((32, 32, 3)))
    assert features.shape == (2, 1, 1, 2048)
    np.testing.assert_allclose(predictions, model.predict(_pixels((32, 32, 3)), verbose=0), rtol=1e-5)


def test_bfloat16_model_trains_a_step_under_jit_compile():
    model = build_classifier(
        "alexnet_bn", 1, (67, 67, 1), augmentation=True, head="gem", hidden_units=8, dtype_policy="mixed_bfloat16"
    )
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    assert get_backbone_model(model).layers[1].compute_dtype == "bfloat16"
    assert model.output.dtype == "float32"
    model.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy", jit_compile=True)
    history = model.fit(_pixels((67, 67, 1), batch=4), np.array([[0.0], [1.0], [0.0], [1.0]]), epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
