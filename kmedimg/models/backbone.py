"""`Backbone`: one record of the backbone registry."""

import dataclasses
from typing import Callable, Optional

import keras


@dataclasses.dataclass(frozen=True)
class Backbone:
    """One registry record.

    Attributes:
        name: registry key (lower case, e.g. `"resnet50"`); also the name of the
            backbone sub-model inside a classifier.
        family: family name (`"ResNet"`).
        constructor: `f(input_shape=..., weights=..., name=..., **constructor_kwargs)`
            returning a headless `keras.Model`.
        preprocessing: `BackbonePreprocessing` mode for [0, 1] input.
        min_size: smallest input height/width the architecture accepts.
        default_size: the size it was designed for.
        imagenet_sizes: `None` if ImageNet weights load at any size >= `min_size`,
            a tuple of the sizes they exist for, or `()` if there are none.
        parameters: parameter count at `default_size` with `channels` input
            channels, without the classification top (verified by the tests).
        channels: the native number of input channels.
        feature_width: channels of the final feature map.
        block_rule: a `PatternBlocks`, `MarkerBlocks` or `SuffixBlocks`.
        last_conv_layer: name of the layer whose output Grad-CAM uses.
        constructor_kwargs: extra constructor arguments (as a tuple of pairs).
        reference: the paper.
    """

    name: str
    family: str
    constructor: Callable
    preprocessing: str
    min_size: int
    default_size: int
    imagenet_sizes: Optional[tuple]
    parameters: int
    channels: int
    feature_width: int
    block_rule: object
    last_conv_layer: str
    constructor_kwargs: tuple = ()
    reference: str = ""

    @property
    def blocks(self):
        """The ordered block names; the stem is block 0."""
        return self.block_rule.names

    @property
    def has_imagenet(self):
        return self.imagenet_sizes is None or len(self.imagenet_sizes) > 0

    def build(self, input_shape, weights=None):
        """Calls the constructor (headless) and names the model after the key.

        Args:
            input_shape: `(height, width, channels)`.
            weights: `None`, `"imagenet"` or a weights-file path, passed to the
                constructor. Defaults to `None`.

        Returns:
            A `keras.Model` named `self.name`.
        """
        kwargs = dict(self.constructor_kwargs)
        if self.family in ("LeNet", "AlexNet"):
            return self.constructor(input_shape=input_shape, weights=weights, name=self.name, **kwargs)
        model = self.constructor(
            include_top=False, weights=weights, input_shape=tuple(input_shape), **kwargs
        )
        # Not `name=` in the constructor: some families derive layer names
        # (ConvNeXt) or weight-file keys (EfficientNetV2) from it.
        return keras.Model(model.input, model.output, name=self.name)

    def assign_blocks(self, backbone_model):
        """Groups the backbone model's layers (input layer excluded) into blocks.

        Returns:
            Ordered list of `(block_name, [layers])`, one entry per block name.
        """
        layer_list = [
            layer for layer in backbone_model.layers if not isinstance(layer, keras.layers.InputLayer)
        ]
        assigned = self.block_rule.assign(layer_list)
        groups = {name: [] for name in self.blocks}
        for layer, block in zip(layer_list, assigned):
            groups[block].append(layer)
        return list(groups.items())

    def describe(self):
        sizes = (
            "any"
            if self.imagenet_sizes is None
            else ("none" if not self.imagenet_sizes else ",".join(map(str, self.imagenet_sizes)))
        )
        return {
            "name": self.name,
            "family": self.family,
            "parameters": self.parameters,
            "min_size": self.min_size,
            "default_size": self.default_size,
            "imagenet_sizes": sizes,
            "preprocessing": self.preprocessing,
            "feature_width": self.feature_width,
            "blocks": len(self.blocks),
            "last_conv_layer": self.last_conv_layer,
        }

