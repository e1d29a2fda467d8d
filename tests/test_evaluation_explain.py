"""Grad-CAM, Grad-CAM++ and occlusion find a planted bright square a trained classifier
detects; the layer explained has a map of at least 4x4, or the explainer says why not."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from kmedimg import evaluation  # noqa: E402
from kmedimg.evaluation import gradcam  # noqa: E402
from kmedimg.models import build_classifier, get_backbone  # noqa: E402
from helpers import old_build_classifier  # noqa: E402

SIZE, SQUARE = 64, 14


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


@pytest.fixture(scope="module")
def trained():
    """A registered backbone (LeNet-5, 'valid' convolutions) trained on the squares."""
    keras.utils.set_random_seed(0)
    images, labels, _ = _squares(384, seed=3)
    model = build_classifier("lenet5_modern", 1, (SIZE, SIZE, 1), dropout=0.0)
    model.compile(keras.optimizers.Adam(3e-3), "binary_crossentropy", metrics=["accuracy"])
    model.fit(images, labels, epochs=5, batch_size=32, verbose=0)
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
    explainer = evaluation.GradCam(model, method=method)
    assert explainer.task == "binary"
    assert explainer.layer_name == get_backbone("lenet5_modern").last_conv_layer
    assert explainer.note is None and explainer.warning is None
    # Receptive-field arithmetic: c5 cells sit every 4 px from pixel 15.5 (valid convs).
    assert explainer.geometry == ((15.5, 4.0), (15.5, 4.0))
    heatmaps, probs, explained = explainer(images, return_details=True)
    assert heatmaps.shape == images.shape[:3]
    assert heatmaps.min() >= 0 and heatmaps.max() <= 1
    assert np.all(explained == 1)
    np.testing.assert_allclose(probs, model.predict(images, verbose=0), atol=1e-5)
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
    with pytest.raises(ValueError, match="'lenet5_modern' has no layer 'conv_missing'"):
        evaluation.GradCam(model, layer="conv_missing")
    with pytest.raises(ValueError, match="method"):
        evaluation.GradCam(model, method="saliency")
    with pytest.raises(ValueError, match="images.shape"):
        evaluation.GradCam(model)(images[:, :32])
    with pytest.raises(ValueError, match="binary classifier.*Received: task='multiclass'"):
        evaluation.GradCam(model, task="multiclass")
    # uint16-range input: the overlay shows the stored intensities.
    path = evaluation.save_overlay(tmp_path / "case.png", images[1] * 257, np.random.rand(SIZE, SIZE))
    assert path.stat().st_size > 2000
    from PIL import Image

    assert Image.open(path).size == (640, 320)


def test_a_model_that_is_no_classifier_is_refused_naming_the_version(trained):
    """No guessing: a Keras model that is neither an ImageClassifier nor a 0.1.0
    classifier fails with the formats accepted, in every function taking a model."""
    _, images, _ = trained
    inputs = keras.Input((SIZE, SIZE, 1))
    features = keras.layers.Conv2D(4, 3, name="features")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    other = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(pooled), name="mine")
    message = r"kmedimg 0\.1\.0's build_classifier.*Received: model='mine'"
    with pytest.raises(ValueError, match=message):
        evaluation.GradCam(other, layer="features")
    with pytest.raises(ValueError, match=message):
        evaluation.occlusion_sensitivity(other, images[:1])
    with pytest.raises(ValueError, match=message):
        evaluation.evaluate_model(other, (images, np.zeros((len(images), 1))), "binary")
    with pytest.raises(ValueError, match=message):
        evaluation.export_model(other, "unused")


def test_a_classifier_saved_by_0_1_0_is_explained_like_its_conversion(trained, tmp_path):
    """The old functional format (kmedimg 0.1.0) is converted, not guessed at."""
    model, images, boxes = trained
    record = get_backbone("lenet5_modern")
    old = old_build_classifier(model.backbone, record, (SIZE, SIZE, 1), "binary", 1, dropout=0.0)
    old.get_layer("predictions").set_weights(model.output_dense.get_weights())
    expected = evaluation.GradCam(model)(images)
    np.testing.assert_allclose(evaluation.GradCam(old)(images), expected, atol=1e-5)
    result = evaluation.evaluate_model(old, (images, np.asarray([[b is not None] for b in boxes], "float32")),
                                       n_bootstrap=0)
    assert result["task"] == "binary" and result["metrics"]["roc_auc"]["value"] > 0.9


def test_a_1x1_feature_map_is_replaced_by_the_deepest_block_output_of_at_least_4x4():
    """LeNet-5 at 32 px (the demo's size): c5_conv is 1x1, its s4_pool block output 5x5."""
    model = build_classifier("lenet5_modern", 1, (32, 32, 1), weights=None)
    assert tuple(model.backbone.get_layer("c5_conv").output.shape[1:3]) == (1, 1)
    explainer = evaluation.GradCam(model)
    assert (explainer.layer_name, explainer.feature_shape, explainer.warning) == ("s4_pool", (5, 5), None)
    assert "'c5_conv' has a 1×1 map" in explainer.note
    assert explainer.describe()["feature_map"] == [5, 5]
    heatmaps = explainer(np.random.default_rng(0).random((2, 32, 32, 1)).astype("float32") * 255)
    assert heatmaps.shape == (2, 32, 32) and np.isfinite(heatmaps).all()
    # At 64 px the registered layer is 9x9 and is kept.
    assert gradcam.choose_layer(build_classifier("lenet5_modern", 1, (64, 64, 1)))[0] == "c5_conv"


def test_no_feature_map_of_4x4_warns_and_suggests_occlusion():
    model = build_classifier("lenet5_modern", 1, (32, 32, 1), weights=None)
    layer, note, warning = gradcam.choose_layer(model, min_size=64)
    assert (layer, note) == ("c5_conv", None)
    assert "cannot localise" in warning and "--method occlusion" in warning
    with pytest.warns(gradcam.GradCamWarning, match="occlusion"):
        explainer = evaluation.GradCam(model, layer="c5_conv")
    assert "layer 'c5_conv' of 'lenet5_modern' has a 1×1 feature map at 32×32 input" in (
        explainer.describe()["warning"])


def test_report_grad_cam_has_a_colour_bar_a_uniform_colormap_and_the_warning():
    from kmedimg.evaluation import report_figures

    rng = np.random.default_rng(0)
    cases = [{"group": "Correct", "image": rng.random((32, 32, 1)) * 255, "heatmap": rng.random((32, 32)),
              "caption": f"case {index}"} for index in range(3)]
    figure = report_figures._case_grid(cases)
    assert len(figure.axes) == len(cases) + 1  # the cases and one colour bar
    heat_maps = {image.cmap.name for axis in figure.axes[:len(cases)] for image in axis.images[1:]}
    assert heat_maps == {"viridis"}
    evaluation_result = {"task": "binary", "class_names": ["normal", "opacity"],
                         "grad_cam": {"layer": "s4_pool", "feature_map": [5, 5], "note": "n", "warning": None}}
    text = report_figures.gradcam_section(cases, evaluation_result)
    assert "layer s4_pool (5×5 map)" in text and "viridis" in text
    evaluation_result["grad_cam"]["warning"] = "Grad-CAM cannot localise here: use occlusion"
    text = report_figures.gradcam_section(cases, evaluation_result)
    assert "No Grad-CAM" in text and "occlusion" in text and "<img" not in text


@pytest.mark.slow
def test_every_registered_backbone_has_its_grad_cam_layer():
    """Registry-driven: the recorded last_conv_layer exists and gives a heatmap (weights=None)."""
    from kmedimg.models import list_backbones

    for name in list_backbones():
        record = get_backbone(name)
        size = max(record.min_size, 32)
        channels = record.channels
        model = build_classifier(name, 3, (size, size, channels), task="multiclass")
        explainer = evaluation.GradCam(model)
        assert explainer.layer_name in {record.last_conv_layer} | {
            layers[-1].name for _, layers in record.assign_blocks(model.backbone) if layers}, name
        heatmaps = explainer(np.random.default_rng(0).random((1, size, size, channels)) * 255)
        assert heatmaps.shape == (1, size, size) and np.isfinite(heatmaps).all(), name
        keras.backend.clear_session()
