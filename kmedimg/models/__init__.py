"""Backbones, the classifier builder and freezing by block.

`build_classifier` makes a model that takes the pipeline's raw pixels;
`backbone_blocks` / `freeze_backbone` work on its backbone's ordered blocks;
`backbones.get_backbone` / `list_backbones` read the registry.
"""

from kmedimg.models import backbones
from kmedimg.models.backbones import Backbone, get_backbone, list_backbones, register_backbone
from kmedimg.models.classifier import build_classifier
from kmedimg.models.features import feature_model
from kmedimg.models.freezing import backbone_blocks, freeze_backbone, resolve_freeze_depth
from kmedimg.models.pretrained import build_backbone, get_backbone_model

__all__ = [
    "Backbone",
    "backbone_blocks",
    "backbones",
    "build_backbone",
    "build_classifier",
    "feature_model",
    "freeze_backbone",
    "get_backbone",
    "get_backbone_model",
    "list_backbones",
    "register_backbone",
    "resolve_freeze_depth",
]
