"""Backbones, the `ImageClassifier` task class and freezing by block.

`build_classifier` builds an `ImageClassifier` that takes the pipeline's raw
pixels; `backbone_blocks` / `freeze_backbone` work on its backbone's ordered
blocks; `get_backbone` / `list_backbones` read the backbone registry;
`as_image_classifier` reads classifiers saved by kmedimg 0.1.0. Nothing here
imports TensorFlow: the models build under any Keras backend.
"""

from kmedimg.models.backbone import Backbone
from kmedimg.models.backbones import get_backbone, list_backbones, register_backbone
from kmedimg.models.classifier import build_classifier
from kmedimg.models.features import feature_model
from kmedimg.models.freezing import backbone_blocks, freeze_backbone, resolve_freeze_depth
from kmedimg.models.image_classifier import ImageClassifier
from kmedimg.models.legacy import as_image_classifier
from kmedimg.models import bank
from kmedimg.models.imagenet_files import check_imagenet_available
from kmedimg.models.pretrained import build_backbone, get_backbone_model

__all__ = [
    "Backbone",
    "ImageClassifier",
    "as_image_classifier",
    "backbone_blocks",
    "bank",
    "check_imagenet_available",
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
