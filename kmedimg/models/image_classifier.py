"""`ImageClassifier`: the task class, raw pixels in, class probabilities out."""

import copy
import numbers

import keras

from kmedimg.core.vocabulary import TASKS
from kmedimg.layers import (
    BackbonePreprocessing,
    GeMPooling2D,
    GreyToRGB,
    IntensityScaling,
    MedicalAugmentation,
    Window,
)
from kmedimg.layers.intensity_scaling import INPUT_RANGES
from kmedimg.models.backbones import get_backbone

HEADS = ("avg", "gem", "max")
"""Global pooling of the backbone's feature map: average, generalised mean, max."""

BACKBONE_MODES = ("inference", "follow")
"""How the backbone runs: always in inference mode, or following the training flag."""

OUTPUTS = ("logits", "probabilities")
"""What `gradcam_model` returns next to the feature map."""


def check_arguments(task, num_classes, head="avg", dropout=0.2, hidden_units=0, input_dtype="uint8"):
    """Validates the classifier arguments that need no backbone.

    `build_classifier` calls it before building (and downloading) a backbone.

    Returns:
        `(units, activation)` of the output layer.

    Raises:
        ValueError: naming the argument, the allowed values and the received one.
    """
    if task not in TASKS:
        raise ValueError(f"Argument `task` must be one of {list(TASKS)}. Received: task={task!r}")
    if head not in HEADS:
        raise ValueError(f"Argument `head` must be one of {list(HEADS)}. Received: head={head!r}")
    if input_dtype not in INPUT_RANGES:
        raise ValueError(
            f"Argument `input_dtype` must be one of {sorted(INPUT_RANGES)}. "
            f"Received: input_dtype={input_dtype!r}"
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"Argument `dropout` must be in [0, 1). Received: dropout={dropout}")
    if isinstance(hidden_units, bool) or not isinstance(hidden_units, numbers.Integral) or hidden_units < 0:
        raise ValueError(
            f"Argument `hidden_units` must be an int >= 0 (0 for no hidden layer). "
            f"Received: hidden_units={hidden_units!r}"
        )
    if task == "binary":
        if num_classes not in (1, 2):
            raise ValueError(
                "A binary task has one sigmoid output; pass num_classes=1 (or 2). "
                f"Received: num_classes={num_classes}"
            )
        return 1, "sigmoid"
    if task == "multiclass":
        if num_classes < 2:
            raise ValueError(f"A multiclass task needs num_classes >= 2. Received: num_classes={num_classes}")
        return int(num_classes), "softmax"
    if num_classes < 1:
        raise ValueError(f"A multilabel task needs num_classes >= 1. Received: num_classes={num_classes}")
    return int(num_classes), "sigmoid"


def augmentation_layer(augmentation):
    """The augmentation layer for an `augmentation` argument, or `None`.

    Args:
        augmentation: `None`/`False`, `True`/`"default"` (a default
            `MedicalAugmentation`), a dict of `MedicalAugmentation` arguments, or a
            Keras layer.
    """
    if augmentation is None or augmentation is False:
        return None
    if augmentation is True or augmentation == "default":
        return MedicalAugmentation(name="augmentation")
    if isinstance(augmentation, dict):
        return MedicalAugmentation(name="augmentation", **augmentation)
    if isinstance(augmentation, keras.layers.Layer):
        return augmentation
    raise ValueError(
        "Argument `augmentation` must be None, True/'default', a dict of "
        "MedicalAugmentation arguments or a keras Layer. "
        f"Received: augmentation={augmentation!r}"
    )


def _check_input_shape(input_shape, backbone):
    backbone_shape = tuple(backbone.input.shape[1:])
    if input_shape is None:
        return backbone_shape
    input_shape = tuple(int(v) for v in input_shape)
    if len(input_shape) != 3 or input_shape[:2] != backbone_shape[:2] or input_shape[-1] not in (
        1, backbone_shape[-1]
    ):
        raise ValueError(
            f"Argument `input_shape` must be (height, width, channels) with the backbone's "
            f"height and width {backbone_shape[:2]} and 1 or {backbone_shape[-1]} channels. "
            f"Received: input_shape={input_shape}"
        )
    return input_shape


@keras.saving.register_keras_serializable(package="kmedimg")
class ImageClassifier(keras.Model):
    """A registered backbone with preprocessing and a classification head.

    The model is `pixels -> preprocessor -> backbone -> pooler -> [hidden Dense]
    -> dropout -> output_dense (logits) -> output_activation (probabilities)`.
    The `preprocessor` (a `keras.Sequential`) maps raw stored pixels to the
    backbone's input: `IntensityScaling` (or a CT `Window`), the augmentation
    (active only in training), `GreyToRGB` when grey pixels meet a three-channel
    backbone, and the family's `BackbonePreprocessing`. The backbone is a nested
    `keras.Model` named after its registry key. The output layers compute in
    float32 under mixed precision; the logits are reachable without patching any
    layer through `logits_model()` and `gradcam_model()`.

    `kmedimg.models.build_classifier` builds the backbone (with its weights) and
    calls this constructor.

    Args:
        backbone: a headless backbone `keras.Model` named after its registry key
            (`kmedimg.models.build_backbone`).
        num_classes: number of output units: 1 for `task="binary"` (2 is accepted
            and stored as 1), the number of classes or labels otherwise.
        task: `"binary"` (one sigmoid unit), `"multiclass"` (softmax) or
            `"multilabel"` (a sigmoid per class). Defaults to `"binary"`.
        input_shape: `(height, width, channels)` of the raw pixels; channels 1
            with a three-channel backbone adds `GreyToRGB`. Defaults to the
            backbone's input shape.
        input_dtype: the stored pixel type, `"uint8"`, `"uint16"` or `"float"`
            (already in [0, 1]). Defaults to `"uint8"`.
        window: `(center, width)` to apply a CT `Window` instead of
            `IntensityScaling`, in stored units. Defaults to `None`.
        augmentation: `None`, `True` (a default `MedicalAugmentation`), a dict of
            `MedicalAugmentation` arguments or any Keras layer. Defaults to `None`.
        head: global pooling, `"avg"`, `"gem"` (`GeMPooling2D`) or `"max"`.
            Defaults to `"avg"`.
        hidden_units: width of an optional ReLU Dense layer before the output,
            0 for none. Defaults to `0`.
        dropout: dropout rate before the output layer. Defaults to `0.2`.
        backbone_training: `"inference"` calls the backbone with
            `training=False` in the graph; `"follow"` passes the model's training
            flag on. (Keras 3 lets an explicit outer `training=True`, as `fit`
            passes, override the recorded `False`: to keep BatchNormalization
            statistics fixed while training, freeze the blocks with
            `freeze_backbone`.) Defaults to `"follow"`.
        head_dtype: dtype policy of the layers this class adds (the preprocessing
            and the head; the output layers stay float32). Defaults to the
            backbone's dtype policy.
        **kwargs: forwarded to `keras.Model` (`name`, `trainable`).

    Example:

    >>> backbone = kmedimg.models.build_backbone("lenet5", (32, 32, 1))
    >>> model = ImageClassifier(backbone, 3, task="multiclass")
    >>> model.task, model.num_classes, model.gradcam_layer
    ('multiclass', 3, 'c5_conv')
    """

    def __init__(
        self,
        backbone,
        num_classes,
        task="binary",
        input_shape=None,
        input_dtype="uint8",
        window=None,
        augmentation=None,
        head="avg",
        hidden_units=0,
        dropout=0.2,
        backbone_training="follow",
        head_dtype=None,
        **kwargs,
    ):
        units, activation = check_arguments(task, num_classes, head, dropout, hidden_units, input_dtype)
        if not isinstance(backbone, keras.Model):
            raise ValueError(
                "Argument `backbone` must be a keras.Model named after a registered backbone "
                f"(kmedimg.models.build_backbone). Received: backbone={backbone!r}"
            )
        record = get_backbone(backbone.name)
        if backbone_training not in BACKBONE_MODES:
            raise ValueError(
                f"Argument `backbone_training` must be one of {list(BACKBONE_MODES)}. "
                f"Received: backbone_training={backbone_training!r}"
            )
        if window is not None:
            window = tuple(float(v) for v in window)
            if len(window) != 2:
                raise ValueError(f"Argument `window` must be (center, width). Received: window={window}")
        pixel_shape = _check_input_shape(input_shape, backbone)
        head_dtype = head_dtype or backbone.dtype_policy

        # === Layers ===
        self.backbone = backbone
        self.augmentation = augmentation_layer(augmentation)
        if window is not None:
            scaling = Window(*window, name="window")
        else:
            scaling = IntensityScaling(pixel_dtype=input_dtype, name="intensity_scaling")
        steps = [keras.Input(shape=pixel_shape), scaling]
        if self.augmentation is not None:
            steps.append(self.augmentation)
        if pixel_shape[-1] == 1 and backbone.input.shape[-1] == 3:
            steps.append(GreyToRGB(dtype=head_dtype, name="grey_to_rgb"))
        # Scaling, window and backbone preprocessing compute in float32 by their own default.
        steps.append(BackbonePreprocessing(record.preprocessing, name="backbone_preprocessing"))
        self.preprocessor = keras.Sequential(steps, name="preprocessor")
        pooling = {"avg": keras.layers.GlobalAveragePooling2D, "max": keras.layers.GlobalMaxPooling2D,
                   "gem": GeMPooling2D}[head]
        self.pooler = pooling(dtype=head_dtype, name="pool")
        self.hidden_dense = None
        if hidden_units:
            self.hidden_dense = keras.layers.Dense(int(hidden_units), activation="relu", dtype=head_dtype,
                                                   name="head_hidden")
        # Without dropout the layer is an exact identity: in float32 it casts nothing
        # (under mixed precision a bfloat16 layer would round float32 GeM features).
        self.dropout = keras.layers.Dropout(
            dropout, dtype=head_dtype if dropout else "float32", name="head_dropout"
        )
        self.output_dense = keras.layers.Dense(units, dtype="float32", name="predictions")
        self.output_activation = keras.layers.Activation(activation, dtype="float32", name="probabilities")

        # === Functional model ===
        inputs = keras.Input(shape=pixel_shape, name="pixels")
        x = self.preprocessor(inputs)
        x = backbone(x, training=False) if backbone_training == "inference" else backbone(x)
        x = self.pooler(x)
        if self.hidden_dense is not None:
            x = self.hidden_dense(x)
        x = self.dropout(x)
        logits = self.output_dense(x)
        outputs = self.output_activation(logits)
        kwargs.setdefault("name", f"{record.name}_classifier")
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self._logits = logits

        # === Config ===
        self.task = task
        self.num_classes = units
        self._input_dtype = input_dtype
        self.window = window
        self.head = head
        self.hidden_units = int(hidden_units)
        self.backbone_training = backbone_training
        self.head_dtype = keras.dtype_policies.get(head_dtype).name

    @property
    def input_dtype(self):
        """The stored pixel type the model expects: `"uint8"`, `"uint16"` or `"float"`.

        (This replaces Keras' `Layer.input_dtype`, which a functional model does not
        use: it converts its inputs to the dtype of its `Input` tensor, float32.)
        """
        return self._input_dtype

    @property
    def backbone_name(self):
        """The backbone's registry key (`kmedimg.models.get_backbone`)."""
        return self.backbone.name

    @property
    def gradcam_layer(self):
        """Name of the backbone layer Grad-CAM explains: the registry's `last_conv_layer`."""
        return get_backbone(self.backbone_name).last_conv_layer

    def logits_model(self):
        """A `keras.Model` from raw pixels to the logits (the output layer before its activation).

        It shares this model's layers and weights. Use it for scores that must not
        saturate: Grad-CAM's class score, log-odds for occlusion sensitivity.
        """
        return keras.Model(self.input, self._logits, name=f"{self.name}_logits")

    def gradcam_model(self, layer_name=None, output="logits"):
        """A `keras.Model` from raw pixels to `[feature_map, logits]` for Grad-CAM.

        The backbone is a nested model, so its inner layers are not reachable from
        this model's graph; this builds a two-output view of the backbone and runs
        the classifier's parts around it, in inference mode, sharing all layers and
        weights. Grad-CAM differentiates a class's logit with respect to the
        feature map (a confident model's probability is saturated and has no
        gradient).

        Args:
            layer_name: backbone layer whose output is the feature map.
                Defaults to `gradcam_layer` (the registry's last conv layer).
            output: `"logits"` or `"probabilities"` as the second output.
                Defaults to `"logits"`.

        Returns:
            A `keras.Model` with outputs `[feature_map, logits or probabilities]`.
        """
        if output not in OUTPUTS:
            raise ValueError(f"Argument `output` must be one of {list(OUTPUTS)}. Received: output={output!r}")
        layer_name = layer_name or self.gradcam_layer
        try:
            layer = self.backbone.get_layer(layer_name)
        except ValueError as error:
            raise ValueError(
                f"Backbone {self.backbone_name!r} has no layer {layer_name!r}. Received: layer_name={layer_name!r}"
            ) from error
        features = keras.Model(
            self.backbone.input, [layer.output, self.backbone.output], name=f"{self.backbone_name}_features"
        )
        inputs = keras.Input(shape=tuple(self.input_shape[1:]), name="pixels")
        x = self.preprocessor(inputs, training=False)
        feature_map, x = features(x, training=False)
        x = self.pooler(x)
        if self.hidden_dense is not None:
            x = self.hidden_dense(x)
        x = self.output_dense(self.dropout(x, training=False))
        if output == "probabilities":
            x = self.output_activation(x)
        return keras.Model(inputs, [feature_map, x], name=f"{self.name}_features")

    def get_config(self):
        # Not chained to keras.Model: a functional model's config is its layer
        # graph, which this constructor does not take.
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "backbone_name": self.backbone_name,
            "num_classes": self.num_classes,
            "task": self.task,
            "input_shape": list(self.input_shape[1:]),
            "input_dtype": self.input_dtype,
            "window": None if self.window is None else list(self.window),
            "augmentation": (
                None if self.augmentation is None else keras.saving.serialize_keras_object(self.augmentation)
            ),
            "head": self.head,
            "hidden_units": self.hidden_units,
            "dropout": float(self.dropout.rate),
            "backbone_training": self.backbone_training,
            "head_dtype": self.head_dtype,
        }

    @classmethod
    def from_config(cls, config):
        # Deserialising consumes the nested dicts; the caller's config stays intact.
        config = copy.deepcopy(config)
        backbone_name = config.pop("backbone_name", None)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        if backbone_name is not None and config["backbone"].name != backbone_name:
            raise ValueError(
                f"The config names backbone {backbone_name!r} but holds {config['backbone'].name!r}. "
                f"Received: backbone_name={backbone_name!r}"
            )
        if config.get("augmentation") is not None:
            config["augmentation"] = keras.saving.deserialize_keras_object(config["augmentation"])
        return cls(**config)
