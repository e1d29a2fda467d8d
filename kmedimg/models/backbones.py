"""The backbone registry: one `Backbone` record per network, registered explicitly.

Every entry is a `Backbone` record (`kmedimg.models.backbone`): the constructor, the
family's input preprocessing (a `kmedimg.layers.BackbonePreprocessing` mode), the
minimum input size and the sizes ImageNet weights exist for, the parameter count,
the feature width, the ordered blocks that `freeze_depth` counts (the stem is
block 0, see `kmedimg.models.block_rules`) and the last convolutional layer for
Grad-CAM. The families below are registered with the `register_family`
decorator; `get_backbone` and `list_backbones` read the registry.
"""

import re

import keras

from kmedimg.core.registry import Registry
from kmedimg.layers.backbone_preprocessing import MODES as PREPROCESSING_MODES
from kmedimg.models.alexnet import AlexNet
from kmedimg.models.backbone import Backbone
from kmedimg.models.block_rules import MarkerBlocks, PatternBlocks, SuffixBlocks
from kmedimg.models.lenet import LeNet5

BACKBONES = Registry("backbone")
"""Every registered `Backbone`, by its lower-case key."""


def _normalise(name):
    return str(name).lower().replace("-", "_")


def register_backbone(record):
    """Adds one `Backbone` record to the registry.

    Args:
        record: a `Backbone`; its `name` is lower case with `_`.

    Returns:
        The record.

    Raises:
        ValueError: if the name is taken or the record is inconsistent.
    """
    key = _normalise(record.name)
    if key != record.name:
        raise ValueError(f"Backbone names are lower case with `_`. Received: name={record.name!r}")
    if record.preprocessing not in PREPROCESSING_MODES:
        raise ValueError(
            f"Backbone {key!r}: `preprocessing` must be one of {sorted(PREPROCESSING_MODES)}. "
            f"Received: preprocessing={record.preprocessing!r}"
        )
    return BACKBONES.register(key, record)


def register_family(factory):
    """Decorator: calls `factory()` and registers every `Backbone` it returns."""
    for record in factory():
        register_backbone(record)
    return factory


def get_backbone(name):
    """Returns the registry record for `name` (case-insensitive).

    Keras-style spellings are accepted: `"ResNet50V2"`, `"mobilenet_v2"`,
    `"EfficientNet-B0"`.

    Args:
        name: a registry key or a `Backbone` record (returned as is).

    Raises:
        ValueError: for an unknown name, listing the registered ones.
    """
    if isinstance(name, Backbone):
        return name
    key = _normalise(name)
    if key not in BACKBONES:
        compact = {registered.replace("_", ""): registered for registered in BACKBONES.names()}
        key = compact.get(key.replace("_", ""), key)
    if key not in BACKBONES:
        raise ValueError(BACKBONES.unknown_message(name))
    return BACKBONES.get(key)


def list_backbones(family=None):
    """Registered backbone names, sorted (optionally only one family's)."""
    return [key for key, record in BACKBONES.items() if family is None or record.family == family]


A = keras.applications
_ANY = None  # ImageNet weights load at any input size >= min_size.


@register_family
def _vgg():
    specs = [("vgg16", A.VGG16, 14714688, (2, 2, 3, 3, 3)), ("vgg19", A.VGG19, 20024384, (2, 2, 4, 4, 4))]
    for key, constructor, parameters, depths in specs:
        yield Backbone(
            name=key, family="VGG", constructor=constructor, preprocessing="caffe",
            min_size=32, default_size=224, imagenet_sizes=_ANY, parameters=parameters, channels=3,
            feature_width=512,
            block_rule=PatternBlocks([(f"block{i}", rf"block{i}_") for i in range(1, 6)]),
            last_conv_layer=f"block5_conv{depths[-1]}",
            reference="Simonyan & Zisserman 2015, arXiv:1409.1556",
        )


@register_family
def _resnet():
    specs = [
        ("resnet50", A.ResNet50, 23587712, False), ("resnet101", A.ResNet101, 42658176, False),
        ("resnet152", A.ResNet152, 58370944, False), ("resnet50v2", A.ResNet50V2, 23564800, True),
        ("resnet101v2", A.ResNet101V2, 42626560, True), ("resnet152v2", A.ResNet152V2, 58331648, True),
    ]
    for key, constructor, parameters, v2 in specs:
        stages = [("stem", r"conv1_|pool1_")] + [(f"conv{i}", rf"conv{i}_") for i in range(2, 6)]
        if v2:
            stages[-1] = ("conv5", r"conv5_|post_")
        yield Backbone(
            name=key, family="ResNetV2" if v2 else "ResNet", constructor=constructor,
            preprocessing="tf" if v2 else "caffe", min_size=32, default_size=224,
            imagenet_sizes=_ANY, parameters=parameters, channels=3, feature_width=2048,
            block_rule=PatternBlocks(stages),
            last_conv_layer="post_relu" if v2 else "conv5_block3_out",
            reference="He et al. 2016, arXiv:1512.03385" + ("; arXiv:1603.05027" if v2 else ""),
        )


@register_family
def _inception():
    yield Backbone(
        name="inceptionv3", family="Inception", constructor=A.InceptionV3, preprocessing="tf",
        min_size=75, default_size=299, imagenet_sizes=_ANY, parameters=21802784, channels=3,
        feature_width=2048,
        block_rule=MarkerBlocks(
            "stem",
            [("mixed0", "after_type", "MaxPooling2D:2")]
            + [(f"mixed{i}", "after", f"mixed{i - 1}") for i in range(1, 11)],
        ),
        last_conv_layer="mixed10",
        reference="Szegedy et al. 2016, arXiv:1512.00567",
    )
    yield Backbone(
        name="inceptionresnetv2", family="InceptionResNet", constructor=A.InceptionResNetV2,
        preprocessing="tf", min_size=75, default_size=299, imagenet_sizes=_ANY,
        parameters=54336736, channels=3, feature_width=1536,
        block_rule=MarkerBlocks(
            "stem",
            [
                ("mixed_5b", "after_type", "MaxPooling2D:2"),
                ("block35", "after", "mixed_5b"),
                ("mixed_6a", "after", "block35_10_ac"),
                ("block17", "after", "mixed_6a"),
                ("mixed_7a", "after", "block17_20_ac"),
                ("block8", "after", "mixed_7a"),
                ("conv_7b", "at", "conv_7b"),
            ],
        ),
        last_conv_layer="conv_7b_ac",
        reference="Szegedy et al. 2017, arXiv:1602.07261",
    )
    yield Backbone(
        name="xception", family="Xception", constructor=A.Xception, preprocessing="tf",
        min_size=71, default_size=299, imagenet_sizes=_ANY, parameters=20861480, channels=3,
        feature_width=2048,
        block_rule=PatternBlocks([("block1", r"block1_")] + [(f"block{i}", rf"block{i}_") for i in range(2, 15)]),
        last_conv_layer="block14_sepconv2_act",
        reference="Chollet 2017, arXiv:1610.02357",
    )


@register_family
def _densenet():
    specs = [
        ("densenet121", A.DenseNet121, 7037504, 1024),
        ("densenet169", A.DenseNet169, 12642880, 1664),
        ("densenet201", A.DenseNet201, 18321984, 1920),
    ]
    for key, constructor, parameters, width in specs:
        patterns = [("stem", r"conv1_|pool1$")]
        for i in range(2, 5):
            patterns += [(f"conv{i}", rf"conv{i}_"), (f"pool{i}", rf"pool{i}_")]
        patterns.append(("conv5", r"conv5_|bn$|relu$"))
        yield Backbone(
            name=key, family="DenseNet", constructor=constructor, preprocessing="torch",
            min_size=32, default_size=224, imagenet_sizes=_ANY, parameters=parameters, channels=3,
            feature_width=width, block_rule=PatternBlocks(patterns), last_conv_layer="relu",
            reference="Huang et al. 2017, arXiv:1608.06993",
        )


@register_family
def _mobilenet():
    yield Backbone(
        name="mobilenet", family="MobileNet", constructor=A.MobileNet, preprocessing="tf",
        min_size=32, default_size=224, imagenet_sizes=(128, 160, 192, 224), parameters=3228864,
        channels=3, feature_width=1024,
        block_rule=PatternBlocks(
            [("stem", r"conv1(_|$)")] + [(f"block_{i}", rf"conv_(dw|pw|pad)_{i}(_|$)") for i in range(1, 14)]
        ),
        last_conv_layer="conv_pw_13_relu",
        reference="Howard et al. 2017, arXiv:1704.04861",
    )
    yield Backbone(
        name="mobilenetv2", family="MobileNetV2", constructor=A.MobileNetV2, preprocessing="tf",
        min_size=32, default_size=224, imagenet_sizes=(96, 128, 160, 192, 224), parameters=2257984,
        channels=3, feature_width=1280,
        block_rule=PatternBlocks(
            [("stem", r"Conv1|bn_Conv1"), ("block_0", r"expanded_conv_")]
            + [(f"block_{i}", rf"block_{i}_") for i in range(1, 17)]
            + [("top", r"Conv_1|out_relu")]
        ),
        last_conv_layer="out_relu",
        reference="Sandler et al. 2018, arXiv:1801.04381",
    )
    for key, constructor, parameters, width, count in (
        ("mobilenetv3small", A.MobileNetV3Small, 939120, 576, 10),
        ("mobilenetv3large", A.MobileNetV3Large, 2996352, 960, 14),
    ):
        yield Backbone(
            name=key, family="MobileNetV3", constructor=constructor, preprocessing="scale255",
            min_size=32, default_size=224, imagenet_sizes=_ANY, parameters=parameters, channels=3,
            feature_width=width,
            block_rule=PatternBlocks(
                [("stem", r"conv(_bn)?$"), ("block_0", r"expanded_conv_[a-z]")]
                + [(f"block_{i}", rf"expanded_conv_{i}_") for i in range(1, count + 1)]
                + [("top", r"conv_1(_bn)?$")]
            ),
            # The final hard-swish activation is auto-named; its input is stable.
            last_conv_layer="conv_1_bn",
            reference="Howard et al. 2019, arXiv:1905.02244",
        )


@register_family
def _efficientnet():
    v1 = [
        (4049571, 1280), (6575239, 1280), (7768569, 1408), (10783535, 1536),
        (17673823, 1792), (28513527, 2048), (40960143, 2304), (64097687, 2560),
    ]
    for index, (parameters, width) in enumerate(v1):
        yield Backbone(
            name=f"efficientnetb{index}", family="EfficientNet",
            constructor=getattr(A, f"EfficientNetB{index}"), preprocessing="scale255",
            min_size=32, default_size=(224, 240, 260, 300, 380, 456, 528, 600)[index],
            imagenet_sizes=_ANY, parameters=parameters, channels=3, feature_width=width,
            block_rule=PatternBlocks(
                [("stem", r"stem_")] + [(f"block{i}", rf"block{i}[a-z]_") for i in range(1, 8)] + [("top", r"top_")]
            ),
            last_conv_layer="top_activation",
            reference="Tan & Le 2019, arXiv:1905.11946",
        )
    v2 = [
        ("b0", 5919312, 1280, 6, 224), ("b1", 6931124, 1280, 6, 240), ("b2", 8769374, 1408, 6, 260),
        ("b3", 12930622, 1536, 6, 300), ("s", 20331360, 1280, 6, 384), ("m", 53150388, 1280, 7, 480),
        ("l", 117746848, 1280, 7, 480),
    ]
    for suffix, parameters, width, stages, size in v2:
        yield Backbone(
            name=f"efficientnetv2{suffix}", family="EfficientNetV2",
            constructor=getattr(A, f"EfficientNetV2{suffix.upper()}"), preprocessing="scale255",
            min_size=32, default_size=size, imagenet_sizes=_ANY, parameters=parameters, channels=3,
            feature_width=width,
            block_rule=PatternBlocks(
                [("stem", r"stem_")]
                + [(f"block{i}", rf"block{i}[a-z]_") for i in range(1, stages + 1)]
                + [("top", r"top_")]
            ),
            last_conv_layer="top_activation",
            reference="Tan & Le 2021, arXiv:2104.00298",
        )


@register_family
def _convnext():
    for size, parameters, width in (
        ("tiny", 27820128, 768), ("small", 49454688, 768), ("base", 87566464, 1024), ("large", 196230336, 1536),
    ):
        prefix = f"convnext_{size}_"
        yield Backbone(
            name=f"convnext{size}", family="ConvNeXt",
            constructor=getattr(A, f"ConvNeXt{size.capitalize()}"), preprocessing="scale255",
            min_size=32, default_size=224, imagenet_sizes=_ANY, parameters=parameters, channels=3,
            feature_width=width,
            block_rule=PatternBlocks(
                [("stem", rf"{prefix}stem"), ("stage_0", rf"{prefix}stage_0_")]
                + [(f"stage_{i}", rf"{prefix}(downsampling_block_{i - 1}|stage_{i}_)") for i in range(1, 4)]
            ),
            last_conv_layer=f"{prefix}stage_3_block_2_identity",
            reference="Liu et al. 2022, arXiv:2201.03545",
        )


_NASNET_CELL = re.compile(r"_((?:stem|reduce)_\d+|\d+)$")


def _nasnet_block(layer_name):
    if layer_name.startswith(("stem_conv", "stem_bn")):
        return "stem"
    if not any(part in layer_name for part in ("normal_", "reduction_", "adjust_", "separable_conv")):
        return None  # auto-named activations, paddings, pools inherit
    match = _NASNET_CELL.search(layer_name)
    return f"cell_{match.group(1)}" if match else None


@register_family
def _nasnet():
    cells = ["stem_1", "stem_2", "0", "1", "2", "3", "reduce_4", "5", "6", "7", "8", "reduce_8", "9", "10", "11", "12"]
    yield Backbone(
        name="nasnetmobile", family="NASNet", constructor=A.NASNetMobile, preprocessing="tf",
        min_size=32, default_size=224, imagenet_sizes=_ANY, parameters=4269716, channels=3,
        feature_width=1056,
        block_rule=SuffixBlocks(["stem"] + [f"cell_{cell}" for cell in cells], _nasnet_block),
        last_conv_layer="normal_concat_12",
        reference="Zoph et al. 2018, arXiv:1707.07012",
    )


@register_family
def _classic():
    for key, variant in (("lenet5", "classic"), ("lenet5_modern", "modern")):
        yield Backbone(
            name=key, family="LeNet", constructor=LeNet5, preprocessing="tf", min_size=32,
            default_size=32, imagenet_sizes=(), parameters=50692, channels=1, feature_width=120,
            block_rule=PatternBlocks([("c1_s2", r"c1_|s2_"), ("c3_s4", r"c3_|s4_"), ("c5", r"c5_")]),
            last_conv_layer="c5_conv", constructor_kwargs=(("variant", variant),),
            reference="LeCun et al. 1998, Proc. IEEE 86(11):2278",
        )
    for key, normalization, parameters in (("alexnet", "lrn", 3747200), ("alexnet_bn", "batchnorm", 3748608)):
        yield Backbone(
            name=key, family="AlexNet", constructor=AlexNet, preprocessing="tf", min_size=67,
            default_size=227, imagenet_sizes=(), parameters=parameters, channels=3, feature_width=256,
            block_rule=PatternBlocks([(f"conv{i}", rf"conv{i}_") for i in range(1, 6)]),
            last_conv_layer="conv5_conv", constructor_kwargs=(("normalization", normalization),),
            reference="Krizhevsky, Sutskever & Hinton 2012, NeurIPS",
        )
