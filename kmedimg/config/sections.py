"""The sections of a recipe file, one dataclass each, with their allowed values.

Plain data, declared together like Model Garden's `official/core/config_definitions.py`
(one module of section dataclasses rather than one file each: they are read side by
side). Each field's type annotation and `kmedimg.core.validation.field` rules (choices,
numeric range) are what `kmedimg.config.config_from_dict` checks; the shared words
(optimizers, pixel dtypes, strategy kinds, precision policies) come from the modules
that define them once.
"""

import dataclasses
from typing import Any, Optional, Union

from kmedimg.core.validation import field
from kmedimg.core.vocabulary import OPTIMIZERS, PIXEL_DTYPES
from kmedimg.distribute import PRECISION_POLICIES, STRATEGY_KINDS
from kmedimg.layers.medical_augmentation import FILL_MODES, FLIP_MODES
from kmedimg.models.image_classifier import HEADS
from kmedimg.models.pretrained import GREY_WEIGHTS

LOSSES = ("auto", "crossentropy", "focal")
CLASS_WEIGHTS = ("auto", "balanced", "none")
THRESHOLD_RULES = ("youden", "f1", "sensitivity", "specificity", "fixed")
#: The `model.augmentation` values that are not a mapping of settings.
AUGMENTATION_PRESETS = (None, False, True, "default")
#: Largest `training.seed`: NumPy seeds are unsigned 32-bit.
MAX_SEED = 2**32 - 1


@dataclasses.dataclass
class DataConfig:
    """Where the TFRecords are and how to read them.

    Attributes:
        path: dataset directory holding `dataset.json` (written by `kmedimg convert`
            or `kmedimg.data.writer.write_dataset`), or the manifest itself. Local or
            `gs://`. Defaults to `None` (must be given here or with `--data`).
        image_size: model input size, an int or `[height, width]`. Defaults to `None`
            (the stored size from the manifest).
        batch_size: global batch size (split across replicas). Defaults to `32`.
        channels: model input channels (1 or 3). Defaults to `None` (stored channels).
        train_split: split to train on. Defaults to `"train"`.
        val_split: split for validation, checkpoint selection and early stopping.
            Defaults to `"val"`.
        test_split: split for the final evaluation; when the dataset has none, the
            validation split is reported instead (and labelled so). Defaults to `"test"`.
        load_options: extra keyword arguments for `kmedimg.data.pipeline.load`, the
            keys of `LoadOptions`. Defaults to `{}`.
    """

    path: Optional[str] = None
    image_size: Union[int, list, None] = None
    batch_size: int = field(32, minimum=1)
    channels: Optional[int] = field(None, choices=(None, 1, 3))
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    load_options: dict = field(default_factory=dict)


@dataclasses.dataclass
class LoadOptions:
    """The `data.load_options` a recipe may set (`kmedimg.data.pipeline.load` arguments).

    The other arguments of `load` (split, sizes, batch, shuffling seed, sharding) are
    set by the run from the rest of the recipe.

    Attributes:
        cache: `true` caches the decoded records in memory, a string caches them to
            that file prefix. Defaults to `False`.
        shuffle_buffer: records in the training shuffle buffer; `None` picks up to
            2048 within 256 MB. Defaults to `None`.
        check_files: stat every shard against the manifest before reading.
            Defaults to `True`.
        check_records: count each shard's records while reading, naming a corrupt
            shard. Defaults to `True`.
    """

    cache: Union[bool, str] = False
    shuffle_buffer: Optional[int] = field(None, minimum=1)
    check_files: bool = True
    check_records: bool = True


@dataclasses.dataclass
class AugmentationConfig:
    """The settings of a `model.augmentation` mapping (`kmedimg.layers.MedicalAugmentation`).

    Attributes:
        flip: `null`, `"horizontal"`, `"vertical"` or `"horizontal_and_vertical"`.
            Defaults to `"horizontal"`.
        rotation: maximum rotation in degrees, in [0, 180]. Defaults to `10.0`.
        zoom: maximum relative zoom, in [0, 0.9]. Defaults to `0.1`.
        translation: maximum shift as a fraction of the size, in [0, 0.5].
            Defaults to `0.05`.
        contrast: maximum relative contrast change, in [0, 1]. Defaults to `0.1`.
        brightness: maximum additive brightness change, in [0, 1]. Defaults to `0.05`.
        noise_stddev: gaussian noise standard deviation, in [0, 1]. Defaults to `0.01`.
        value_range: `[low, high]` to clip to, or `null`. Defaults to `[0.0, 1.0]`.
        fill_mode: `"constant"` or `"nearest"`. Defaults to `"constant"`.
        fill_value: value for `fill_mode="constant"`. Defaults to `0.0`.
        seed: an int >= 0, or `null`. Defaults to `None`.
    """

    flip: Optional[str] = field("horizontal", choices=FLIP_MODES)
    rotation: float = field(10.0, minimum=0, maximum=180)
    zoom: float = field(0.1, minimum=0, maximum=0.9)
    translation: float = field(0.05, minimum=0, maximum=0.5)
    contrast: float = field(0.1, minimum=0, maximum=1)
    brightness: float = field(0.05, minimum=0, maximum=1)
    noise_stddev: float = field(0.01, minimum=0, maximum=1)
    value_range: Optional[list] = field(default_factory=lambda: [0.0, 1.0])
    fill_mode: str = field("constant", choices=FILL_MODES)
    fill_value: float = 0.0
    seed: Optional[int] = field(None, minimum=0)


@dataclasses.dataclass
class ModelConfig:
    """Arguments of `kmedimg.models.build_classifier` plus where initial weights come from.

    Attributes:
        backbone: a name from `kmedimg.models.backbones.list_backbones()`.
            Defaults to `"mobilenetv2"`.
        weights: `None` (random init), `"imagenet"`, `"bank:NAME"` (an entry of the
            local weights bank, `kmedimg weights add`), a backbone weights file, a saved
            kmedimg `.keras` model or a run directory whose backbone is reused (a
            backbone pretrained on another medical dataset). `"imagenet"` whose file is
            not in the Keras cache on a machine that cannot download it is refused
            before training (`kmedimg.models.check_imagenet_available`).
            Recipes that start from random weights (`from_scratch`) ignore it.
            Defaults to `None`.
        head: pooling head, `"avg"`, `"gem"` or `"max"`. Defaults to `"avg"`.
        dropout: dropout rate before the classifier. Defaults to `0.2`.
        hidden_units: width of an extra dense layer in the head, 0 for none.
            Defaults to `0`.
        augmentation: `None`/`false` (none), `true`/`"default"` (the default
            `MedicalAugmentation`) or a mapping of its settings (the keys of
            `AugmentationConfig`); active only in training. Defaults to `None`.
        dtype_policy: Keras dtype policy; `None` lets `kmedimg.distribute` choose.
            Defaults to `None`.
        input_dtype: dtype of the stored pixels. Defaults to `"uint8"`.
        grey_weights: how an ImageNet stem takes 1-channel input. Defaults to `"fold"`.
    """

    backbone: str = "mobilenetv2"
    weights: Optional[str] = None
    head: str = field("avg", choices=HEADS)
    dropout: float = field(0.2, minimum=0, maximum=1, include_maximum=False)
    hidden_units: int = field(0, minimum=0)
    augmentation: Any = None
    dtype_policy: Optional[str] = None
    input_dtype: str = field("uint8", choices=PIXEL_DTYPES)
    grey_weights: str = field("fold", choices=GREY_WEIGHTS)


@dataclasses.dataclass
class RecipeSection:
    """The `recipe:` section: a registered recipe name and its factory's arguments.

    Attributes:
        name: one of `kmedimg.recipes.list_recipes()`. Defaults to `"two_stage"`.
        options: keyword arguments for the factory (written flat next to `name` in
            YAML). Defaults to `{}`.
    """

    name: str = "two_stage"
    options: dict = field(default_factory=dict)


@dataclasses.dataclass
class TrainingConfig:
    """How the stages of a recipe are run.

    Attributes:
        seed: seeds Python, NumPy, TensorFlow (`keras.utils.set_random_seed`) and the
            data order; an int in [0, 2**32 - 1]. Defaults to `0`.
        deterministic: also enable TensorFlow op determinism (same seed, same weights;
            a resumed run ends equal to an uninterrupted one). Not applied when the step
            compiles with XLA, because Keras turns XLA off under op determinism; the
            run log says so. Defaults to `True`.
        optimizer: `"adamw"`, `"adam"` or `"sgd"` (with momentum 0.9). A recipe stage
            may name its own. Defaults to `"adamw"`.
        weight_decay: decoupled weight decay of AdamW/SGD (the review's §8.1 weight
            decay). Defaults to `1e-4`.
        label_smoothing: label smoothing of the cross-entropy. Defaults to `0.0`.
        loss: `"auto"` (cross-entropy), `"crossentropy"` or `"focal"`. Defaults to
            `"auto"`.
        focal_gamma: focusing parameter of the focal loss. Defaults to `2.0`.
        class_weight: `"auto"` (balanced weights from the manifest's training counts
            when the largest/smallest class ratio reaches `imbalance_ratio` and the loss
            is not focal), `"balanced"` (always), `"none"`, or a list with one weight per
            class. Defaults to `"auto"`.
        imbalance_ratio: class-count ratio from which `"auto"` weights classes.
            Defaults to `1.5`.
        batchnorm_momentum: momentum of the BatchNormalization moving statistics.
            `None` means 0.9 for recipes that start from random weights and the
            backbone's own value otherwise: Keras applications use 0.999, tuned for
            ImageNet-length runs; after a few hundred steps from scratch the moving
            statistics are still near their initial values and validation predictions
            collapse to a constant. Defaults to `None`.
        early_stopping_patience: epochs without improvement of `monitor` before a
            stage stops; `None` disables early stopping. Defaults to `None`.
        monitor: validation metric for the best checkpoint and early stopping.
            Defaults to `"val_auc"`.
        monitor_mode: `"max"`, `"min"` or `"auto"` (min for losses). Defaults to `"auto"`.
        steps_per_epoch: training steps per epoch; `None` means one pass over the
            training split. Defaults to `None`.
        validation_steps: `None` means the whole validation split. Defaults to `None`.
        steps_per_execution: `None` takes `kmedimg.distribute.platform_defaults`.
            Defaults to `None`.
        jit_compile: `"auto"` takes the platform default (off on CPU), or a bool.
            Defaults to `"auto"`.
        restore_best: save and evaluate the best epoch's weights (by `monitor`) as
            `model.keras`; `False` keeps the last epoch's (the best is still
            checkpointed). Selecting on validation makes its metrics optimistic.
            Defaults to `True`.
        tensorboard: write TensorBoard logs to `run_dir/logs`. Defaults to `True`.
        backup: resume a killed run from `run_dir/backup` (Keras `BackupAndRestore`).
            Defaults to `True`.
        run_dir: output directory; `None` makes `runs/<recipe>-<UTC time>`. Running
            again with the same directory resumes. Defaults to `None`.
        verbose: Keras progress output, 0, 1 (bar) or 2 (line per epoch). Defaults to `1`.
    """

    seed: int = field(0, minimum=0, maximum=MAX_SEED)
    deterministic: bool = True
    optimizer: str = field("adamw", choices=OPTIMIZERS)
    weight_decay: float = field(1e-4, minimum=0)
    label_smoothing: float = field(0.0, minimum=0, maximum=1, include_maximum=False)
    loss: str = field("auto", choices=LOSSES)
    focal_gamma: float = field(2.0, minimum=0)
    class_weight: Union[str, list] = "auto"
    imbalance_ratio: float = field(1.5, minimum=1)
    batchnorm_momentum: Optional[float] = field(None, minimum=0, maximum=1, include_maximum=False)
    early_stopping_patience: Optional[int] = field(None, minimum=0)
    monitor: str = "val_auc"
    monitor_mode: str = field("auto", choices=("auto", "max", "min"))
    steps_per_epoch: Optional[int] = field(None, minimum=1)
    validation_steps: Optional[int] = field(None, minimum=1)
    steps_per_execution: Optional[int] = field(None, minimum=1)
    jit_compile: Union[bool, str] = "auto"
    restore_best: bool = True
    tensorboard: bool = True
    backup: bool = True
    run_dir: Optional[str] = None
    verbose: int = field(1, choices=(0, 1, 2))


@dataclasses.dataclass
class DistributeConfig:
    """Which `tf.distribute` strategy and precision (see `kmedimg.distribute`).

    Attributes:
        kind: `"auto"`, `"tpu"`, `"gpu"`, `"multiworker"` or `"cpu"`.
            Defaults to `"auto"`.
        tpu_address: TPU name or `grpc://` address; `None` for the local/Colab TPU.
            Defaults to `None`.
        precision: `None` (platform default), `"float32"`, `"mixed_float16"` or
            `"mixed_bfloat16"`. Defaults to `None`.
    """

    kind: str = field("auto", choices=STRATEGY_KINDS)
    tpu_address: Optional[str] = None
    precision: Optional[str] = field(None, choices=(None,) + PRECISION_POLICIES)


@dataclasses.dataclass
class EvaluationConfig:
    """The final evaluation written to `metrics.json` (see `kmedimg.evaluation.metrics`).

    Attributes:
        bootstrap: bootstrap resamples for confidence intervals, 0 for none.
            Defaults to `1000`.
        confidence: confidence level of the intervals. Defaults to `0.95`.
        threshold_rule: how the binary/multilabel operating point is chosen on the
            validation split: `"youden"`, `"f1"`, `"sensitivity"`, `"specificity"` (both
            need `threshold_target`) or `"fixed"` (`threshold_target`, default 0.5).
            Defaults to `"youden"`.
        threshold_target: the sensitivity/specificity to reach, or the fixed threshold.
            Defaults to `None`.
    """

    bootstrap: int = field(1000, minimum=0)
    confidence: float = field(
        0.95, minimum=0, maximum=1, include_minimum=False, include_maximum=False
    )
    threshold_rule: str = field("youden", choices=THRESHOLD_RULES)
    threshold_target: Optional[float] = None
