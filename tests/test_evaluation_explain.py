"""Grad-CAM, Grad-CAM++ and occlusion find a planted bright square a trained CNN detects."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from kmedimg import evaluation  # noqa: E402
from kmedimg.evaluation import gradcam  # noqa: E402

SIZE, SQUARE = 48, 10


def _squares(count, seed):
    """Noise images; odd ones carry a bright square at a random place (label 1)."""
    rng = np.random.default_rng(seed)
    images = rng.normal(60, 15, (count, SIZE, SIZE, 1)).clip(0, 255).astype("float32")
    labels = np.zeros((count, 1), "float32")
    boxes = [None] * count
    for index in range(1, count, 2):
        top, left = rng.integers(0, SIZE - SQUARE, 2)
        images[index, top:top + SQUARE, left:left + SQUARE] = 220
        labels[index] = 1
        boxes[index] = (int(top), int(left))
    return images, labels, boxes


def _nested_cnn():
    """Raw pixels -> scaling -> nested backbone model -> pooling -> sigmoid, like build_classifier."""
    inner_input = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inner_input)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="features")(x)
    backbone = keras.Model(inner_input, x, name="tiny_backbone")
    inputs = keras.Input((SIZE, SIZE, 1))
    x = backbone(keras.layers.Rescaling(1 / 255.0)(inputs))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(0)
    images, labels, _ = _squares(512, seed=0)
    model = _nested_cnn()
    model.compile(keras.optimizers.Adam(1e-2), "binary_crossentropy", metrics=["accuracy"])
    model.fit(images, labels, epochs=4, batch_size=32, verbose=0)
    test_images, test_labels, boxes = _squares(16, seed=1)
    accuracy = model.evaluate(test_images, test_labels, verbose=0)[1]
    assert accuracy >= 0.9, f"the detector did not learn (accuracy {accuracy})"
    return model, test_images, boxes


def _peak_inside(heatmap, box, square=SQUARE):
    """The heatmap's maximum is reached inside the square (plateaus count)."""
    top, left = box
    return heatmap[top:top + square, left:left + square].max() >= heatmap.max() - 1e-6


@pytest.mark.parametrize("method", gradcam.METHODS)
def test_cam_peaks_inside_planted_square(trained, method):
    model, images, boxes = trained
    explainer = evaluation.GradCam(model, layer="features", method=method)
    assert explainer.task == "binary"
    heatmaps, probs, explained = explainer(images, return_details=True)
    assert heatmaps.shape == images.shape[:3]
    assert heatmaps.min() >= 0 and heatmaps.max() <= 1
    assert np.all(explained == 1)
    positives = [index for index, box in enumerate(boxes) if box]
    hits = sum(_peak_inside(heatmaps[index], boxes[index]) for index in positives)
    assert hits == len(positives)
    # Explaining the negative class points away from the square.
    negative = explainer(images[positives[:3]], class_index=0)
    assert sum(_peak_inside(negative[i], boxes[index]) for i, index in enumerate(positives[:3])) < 3


def test_occlusion_peaks_at_square(trained):
    model, images, boxes = trained
    positives = [index for index, box in enumerate(boxes) if box][:3]
    maps = evaluation.occlusion_sensitivity(model, images[positives], patch_size=8, stride=4)
    for heat, index in zip(maps, positives):
        row, col = np.unravel_index(np.argmax(heat), heat.shape)
        top, left = boxes[index]
        # A patch overlapping the square hides it; its centre is within half a patch.
        assert top - 4 <= row < top + SQUARE + 4 and left - 4 <= col < left + SQUARE + 4


def test_layer_lookup_errors_and_overlay(trained, tmp_path):
    model, images, _ = trained
    with pytest.raises(ValueError, match="tiny_backbone"):
        gradcam.find_layer(model, "conv_missing")
    with pytest.raises(ValueError, match="method"):
        evaluation.GradCam(model, layer="features", method="saliency")
    with pytest.raises(ValueError, match="images.shape"):
        evaluation.GradCam(model, layer="features")(images[:, :32])
    # uint16-range input: the overlay shows the stored intensities.
    path = evaluation.save_overlay(tmp_path / "case.png", images[1] * 257, np.random.rand(SIZE, SIZE))
    assert path.stat().st_size > 2000
    from PIL import Image

    assert Image.open(path).size == (640, 320)


def test_build_classifier_backbone_layer_from_registry():
    """A registered backbone (LeNet-5, 'valid' convolutions) trained on the squares."""
    from kmedimg.models import build_classifier, get_backbone

    size, square = 64, 14
    rng = np.random.default_rng(3)

    def squares(count):
        images = rng.normal(60, 15, (count, size, size, 1)).clip(0, 255).astype("float32")
        labels = np.zeros((count, 1), "float32")
        boxes = [None] * count
        for index in range(1, count, 2):
            top, left = rng.integers(0, size - square, 2)
            images[index, top:top + square, left:left + square] = 220
            labels[index], boxes[index] = 1, (int(top), int(left))
        return images, labels, boxes

    keras.utils.set_random_seed(0)
    model = build_classifier("lenet5_modern", 1, (size, size, 1), dropout=0.0)
    model.compile(keras.optimizers.Adam(3e-3), "binary_crossentropy", metrics=["accuracy"])
    images, labels, _ = squares(384)
    model.fit(images, labels, epochs=5, batch_size=32, verbose=0)
    test_images, test_labels, boxes = squares(12)
    assert model.evaluate(test_images, test_labels, verbose=0)[1] >= 0.9
    explainer = evaluation.GradCam(model, method="gradcam++")
    assert explainer.layer.name == get_backbone("lenet5_modern").last_conv_layer
    # Receptive-field arithmetic: c5 cells sit every 4 px from pixel 15.5 (valid convs).
    assert explainer.geometry == ((15.5, 4.0), (15.5, 4.0))
    heatmaps = explainer(test_images)
    positives = [index for index, box in enumerate(boxes) if box]
    assert all(_peak_inside(heatmaps[i], boxes[i], square) for i in positives)


@pytest.mark.slow
def test_every_registered_backbone_has_its_grad_cam_layer():
    """Registry-driven: the recorded last_conv_layer exists and gives a heatmap (weights=None)."""
    from kmedimg.models import build_classifier, get_backbone, list_backbones

    for name in list_backbones():
        record = get_backbone(name)
        size = max(record.min_size, 32)
        channels = record.channels
        model = build_classifier(name, 3, (size, size, channels), task="multiclass")
        explainer = evaluation.GradCam(model)
        assert explainer.layer.name == record.last_conv_layer, name
        heatmaps = explainer(np.random.default_rng(0).random((1, size, size, channels)) * 255)
        assert heatmaps.shape == (1, size, size) and np.isfinite(heatmaps).all(), name
        keras.backend.clear_session()
