"""Registry-driven backbone tests: every registered entry is checked.

Each entry is built at its minimum input with its native channel count: the
parameter count must equal the record, the feature width and the Grad-CAM layer
must exist, and the blocks must cover every weighted layer exactly once. By
default this runs for the smallest member of every family (the other members
share its block rule with different counts); `--run-slow` runs it for every entry,
plus a classifier with 1 and 3 channels and a finite forward pass for every entry:
building 42 networks takes minutes on 2 cores.
"""

import numpy as np
import pytest

import keras

from kmedimg.cli.backbones import format_table
from kmedimg.models import backbones, build_classifier, get_backbone, list_backbones

ALL = list_backbones()
_SMALLEST_OF_FAMILY = {}
for _name in sorted(ALL, key=lambda name: -get_backbone(name).parameters):
    _SMALLEST_OF_FAMILY[get_backbone(_name).family] = _name
DEFAULT_ENTRIES = set(_SMALLEST_OF_FAMILY.values()) | {"lenet5", "lenet5_modern", "alexnet_bn"}
ENTRIES = [name if name in DEFAULT_ENTRIES else pytest.param(name, marks=pytest.mark.slow) for name in ALL]


def _leaf_weighted(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield layer
        elif layer.weights:
            yield layer


@pytest.mark.parametrize("name", ENTRIES)
def test_entry_builds_and_blocks_cover_every_weighted_layer(name):
    record = get_backbone(name)
    size = record.min_size
    model = record.build((size, size, record.channels))
    assert model.name == name
    assert model.count_params() == record.parameters
    assert model.output.shape[-1] == record.feature_width
    assert record.last_conv_layer in [layer.name for layer in model.layers]
    blocks = record.assign_blocks(model)
    assert [block for block, _ in blocks] == list(record.blocks)
    assigned = [id(layer) for _, layers in blocks for layer in layers]
    assert len(assigned) == len(set(assigned)), "a layer is in two blocks"
    weighted = {id(layer) for layer in _leaf_weighted(model)}
    assert weighted <= set(assigned), "a weighted layer is in no block"
    for block, layers in blocks:
        assert any(layer.weights for layer in layers), f"block {block} has no weights"
    keras.backend.clear_session()


@pytest.mark.slow
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", ALL)
def test_every_entry_classifies_one_and_three_channels(name, channels):
    record = get_backbone(name)
    size = record.min_size
    model = build_classifier(name, 3, (size, size, channels), task="multiclass")
    x = np.random.default_rng(0).integers(0, 256, (2, size, size, channels)).astype("float32")
    out = model.predict(x, verbose=0)
    assert out.shape == (2, 3) and np.isfinite(out).all()
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    keras.backend.clear_session()


def test_registry_rejects_duplicates_and_lists_names_on_a_miss():
    with pytest.raises(ValueError, match="already registered"):
        backbones.register_backbone(get_backbone("resnet50"))
    with pytest.raises(ValueError, match=r"Did you mean 'resnet50'\?.*Registered: .*resnet50.*Received: backbone='resnet5'"):
        get_backbone("resnet5")
    assert ALL == sorted(ALL) and backbones.BACKBONES.get("vgg16") is get_backbone("VGG16")


def test_lookup_accepts_keras_spellings():
    assert get_backbone("ResNet50V2").name == "resnet50v2"
    assert get_backbone("mobilenet_v2").name == "mobilenetv2"
    assert get_backbone("EfficientNet-B0").name == "efficientnetb0"
    assert get_backbone("lenet5_modern").name == "lenet5_modern"


def test_registry_covers_the_issue_families():
    families = {get_backbone(name).family for name in ALL}
    assert {
        "VGG", "ResNet", "ResNetV2", "Inception", "InceptionResNet", "Xception", "DenseNet",
        "MobileNet", "MobileNetV2", "MobileNetV3", "EfficientNet", "EfficientNetV2", "ConvNeXt",
        "NASNet", "LeNet", "AlexNet",
    } <= families
    assert len(ALL) == 42


def test_backbones_table_lists_every_entry():
    table = format_table()
    for name in ALL:
        assert f"\n{name} " in table
    rows = [line.split()[0] for line in table.splitlines()[1:]]
    assert rows.index("resnet50") < rows.index("resnet101") < rows.index("resnet152")
    with pytest.raises(ValueError, match="Received: family='Nope'"):
        format_table("Nope")


def test_cli_prints_the_table(capsys):
    from kmedimg.cli import main

    assert main(["backbones", "--family", "DenseNet"]) == 0
    out = capsys.readouterr().out
    assert "densenet121" in out and "resnet50" not in out
