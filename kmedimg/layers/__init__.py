"""kmedimg's Keras layer library: preprocessing, augmentation and heads.

Every layer is registered with `keras.saving.register_keras_serializable(
package="kmedimg")`, so a model using them saves to and loads from `.keras`
with `safe_mode=True`.
"""

from kmedimg.layers.backbone_preprocessing import BackbonePreprocessing
from kmedimg.layers.gem_pooling import GeMPooling2D
from kmedimg.layers.grey_to_rgb import GreyToRGB
from kmedimg.layers.intensity_scaling import IntensityScaling
from kmedimg.layers.local_response_normalization import LocalResponseNormalization
from kmedimg.layers.medical_augmentation import MedicalAugmentation
from kmedimg.layers.per_image_standardization import PerImageStandardization
from kmedimg.layers.window import Window

__all__ = [
    "BackbonePreprocessing",
    "GeMPooling2D",
    "GreyToRGB",
    "IntensityScaling",
    "LocalResponseNormalization",
    "MedicalAugmentation",
    "PerImageStandardization",
    "Window",
]
