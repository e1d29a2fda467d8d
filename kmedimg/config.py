"""Recipe files: the configuration dataclasses and their YAML loading.

A recipe file is YAML with seven optional sections; every key is a field of one of
the dataclasses below, and every field has a default, so the smallest recipe file is
`recipe: {name: two_stage}` plus a data path:

```yaml
data: {path: data/pneumonia, image_size: 64, batch_size: 32}
model: {backbone: mobilenetv2, weights: imagenet}
recipe: {name: two_stage, freeze_depth: 0.5, head_epochs: 3, finetune_epochs: 10}
training: {seed: 0, weight_decay: 1.0e-4, label_smoothing: 0.05}
```

The `recipe` section is `name` plus the keyword arguments of that recipe's factory in
`kmedimg.recipes` (see `kmedimg.recipes.list_recipes()`), checked against the factory.

Loading is strict and happens once, at the edge: unknown keys, wrong types and values
outside a fixed set are `ValueError`s naming the key, the file and the allowed values.
`load_config(path, overrides=["training.seed=3"])` applies `--set`-style overrides
(values parsed as YAML scalars) with the same checks.
"""

import dataclasses
import difflib
import os
import typing
from typing import Any, Optional, Union

import yaml


def _choices(*values):
    return {"choices": tuple(values)}


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
        load_options: extra keyword arguments for `kmedimg.data.pipeline.load`.
            Defaults to `{}`.
    """

    path: Optional[str] = None
    image_size: Union[int, list, None] = None
    batch_size: int = 32
    channels: Optional[int] = dataclasses.field(default=None, metadata=_choices(None, 1, 3))
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    load_options: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class ModelConfig:
    """Arguments of `kmedimg.models.build_classifier` plus where initial weights come from.

    Attributes:
        backbone: a name from `kmedimg.models.backbones.list_backbones()`.
            Defaults to `"mobilenetv2"`.
        weights: `None` (random init), `"imagenet"`, a backbone weights file, a saved
            kmedimg `.keras` model or a run directory whose backbone is reused (a
            backbone pretrained on another medical dataset).
            Recipes that start from random weights (`from_scratch`) ignore it.
            Defaults to `None`.
        head: pooling head, `"avg"`, `"max"` or `"flatten"`. Defaults to `"avg"`.
        dropout: dropout rate before the classifier. Defaults to `0.2`.
        hidden_units: width of an extra dense layer in the head, 0 for none.
            Defaults to `0`.
        augmentation: augmentation preset or settings understood by `build_classifier`
            (active only in training). Defaults to `None`.
        dtype_policy: Keras dtype policy; `None` lets `kmedimg.distribute` choose.
            Defaults to `None`.
        input_dtype: dtype of the stored pixels. Defaults to `"uint8"`.
        grey_weights: how an ImageNet stem takes 1-channel input. Defaults to `"fold"`.
    """

    backbone: str = "mobilenetv2"
    weights: Optional[str] = None
    head: str = "avg"
    dropout: float = 0.2
    hidden_units: int = 0
    augmentation: Any = None
    dtype_policy: Optional[str] = None
    input_dtype: str = dataclasses.field(default="uint8", metadata=_choices("uint8", "uint16"))
    grey_weights: str = "fold"


@dataclasses.dataclass
class RecipeSection:
    """The `recipe:` section: a registered recipe name and its factory's arguments.

    Attributes:
        name: one of `kmedimg.recipes.list_recipes()`. Defaults to `"two_stage"`.
        options: keyword arguments for the factory (written flat next to `name` in
            YAML). Defaults to `{}`.
    """

    name: str = "two_stage"
    options: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class TrainingConfig:
    """How the stages of a recipe are run.

    Attributes:
        seed: seeds Python, NumPy, TensorFlow (`keras.utils.set_random_seed`) and the
            data order. Defaults to `0`.
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

    seed: int = 0
    deterministic: bool = True
    optimizer: str = dataclasses.field(default="adamw", metadata=_choices("adamw", "adam", "sgd"))
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    loss: str = dataclasses.field(default="auto", metadata=_choices("auto", "crossentropy", "focal"))
    focal_gamma: float = 2.0
    class_weight: Union[str, list] = "auto"
    imbalance_ratio: float = 1.5
    batchnorm_momentum: Optional[float] = None
    early_stopping_patience: Optional[int] = None
    monitor: str = "val_auc"
    monitor_mode: str = dataclasses.field(default="auto", metadata=_choices("auto", "max", "min"))
    steps_per_epoch: Optional[int] = None
    validation_steps: Optional[int] = None
    steps_per_execution: Optional[int] = None
    jit_compile: Union[bool, str] = "auto"
    restore_best: bool = True
    tensorboard: bool = True
    backup: bool = True
    run_dir: Optional[str] = None
    verbose: int = dataclasses.field(default=1, metadata=_choices(0, 1, 2))


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

    kind: str = dataclasses.field(
        default="auto", metadata=_choices("auto", "tpu", "gpu", "multiworker", "cpu")
    )
    tpu_address: Optional[str] = None
    precision: Optional[str] = dataclasses.field(
        default=None, metadata=_choices(None, "float32", "mixed_float16", "mixed_bfloat16")
    )


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

    bootstrap: int = 1000
    confidence: float = 0.95
    threshold_rule: str = dataclasses.field(
        default="youden", metadata=_choices("youden", "f1", "sensitivity", "specificity", "fixed")
    )
    threshold_target: Optional[float] = None


@dataclasses.dataclass
class RecipeConfig:
    """A whole recipe file.

    Attributes:
        description: free text shown in the run directory. Defaults to `""`.
        data: see `DataConfig`.
        model: see `ModelConfig`.
        recipe: see `RecipeSection`.
        training: see `TrainingConfig`.
        distribute: see `DistributeConfig`.
        evaluation: see `EvaluationConfig`.
        tune: the `tune:` mapping, validated by `kmedimg.tuning.TuneSettings.from_dict`
            (owned by the tuning module; kept as plain data here).
    """

    description: str = ""
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    recipe: RecipeSection = dataclasses.field(default_factory=RecipeSection)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    distribute: DistributeConfig = dataclasses.field(default_factory=DistributeConfig)
    evaluation: EvaluationConfig = dataclasses.field(default_factory=EvaluationConfig)
    tune: dict = dataclasses.field(default_factory=dict)

    def to_dict(self):
        """The config as plain YAML-ready data (recipe options flattened next to `name`)."""
        raw = dataclasses.asdict(self)
        recipe = raw.pop("recipe")
        raw["recipe"] = {"name": recipe["name"], **recipe["options"]}
        return {key: raw[key] for key in _section_order()}

    def to_yaml(self):
        """The config as a YAML document that `load_config` reads back unchanged."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)


def _section_order():
    return [field.name for field in dataclasses.fields(RecipeConfig)]


_SECTIONS = {
    "data": DataConfig,
    "model": ModelConfig,
    "training": TrainingConfig,
    "distribute": DistributeConfig,
    "evaluation": EvaluationConfig,
}


def type_name(annotation):
    """A readable name of a type annotation, for error messages."""
    if annotation is Any:
        return "any"
    origin = typing.get_origin(annotation)
    if origin is Union:
        return " or ".join(type_name(arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def matches_type(value, annotation):
    """Whether a YAML value fits a type annotation (ints are accepted for floats)."""
    if annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin is Union:
        return any(matches_type(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is not None:
        return isinstance(value, origin)
    return isinstance(value, annotation)


def coerce_type(value, annotation):
    """Ints given for float fields become floats so the config round-trips exactly."""
    if not isinstance(value, int) or isinstance(value, bool):
        return value
    if typing.get_origin(annotation) is Union:
        options = typing.get_args(annotation)
        if float in options and int not in options:
            return float(value)
    elif annotation is float:
        return float(value)
    return value


def _unknown_key_error(where, key, section, allowed, value):
    close = difflib.get_close_matches(key.split(".")[-1], allowed, n=1)
    hint = f" Did you mean `{close[0]}`?" if close else ""
    return ValueError(
        f"{where}: unknown key `{key}` in section `{section}`. Allowed keys: "
        f"{sorted(allowed)}.{hint} Received: {key}={value!r}"
    )


def _check_field(where, key, field, hints, value):
    annotation = hints[field.name]
    if not matches_type(value, annotation):
        raise ValueError(
            f"{where}: key `{key}` must be of type {type_name(annotation)}. "
            f"Received: {key}={value!r} ({type(value).__name__})"
        )
    choices = field.metadata.get("choices")
    if choices is not None and value not in choices:
        raise ValueError(
            f"{where}: key `{key}` must be one of {list(choices)}. Received: {key}={value!r}"
        )
    return coerce_type(value, annotation)


def _build_section(cls, raw, section, where):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(
            f"{where}: section `{section}` must be a mapping of keys to values. "
            f"Received: {section}={raw!r}"
        )
    fields = {field.name: field for field in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in raw.items():
        full_key = f"{section}.{key}"
        if key not in fields:
            raise _unknown_key_error(where, full_key, section, list(fields), value)
        values[key] = _check_field(where, full_key, fields[key], hints, value)
    return cls(**values)


def _build_recipe_section(raw, where):
    from kmedimg import recipes

    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(
            f"{where}: section `recipe` must be a mapping with `name` and the recipe's "
            f"options. Received: recipe={raw!r}"
        )
    options = dict(raw)
    name = options.pop("name", RecipeSection.name)
    if name not in recipes.list_recipes():
        raise ValueError(
            f"{where}: key `recipe.name` must be one of {recipes.list_recipes()}. "
            f"Received: recipe.name={name!r}"
        )
    try:
        recipes.get_recipe(name, **options)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{where}: in section `recipe`: {error}") from error
    return RecipeSection(name=name, options=options)


def _check_tune_section(raw, where):
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(
            f"{where}: section `tune` must be a mapping. Received: tune={raw!r}"
        )
    try:
        from kmedimg.tuning.search_space import TuneSettings
    except ImportError:  # keras-tuner is the optional [tune] extra; `kmedimg tune` checks
        return dict(raw)
    try:
        TuneSettings.from_dict(raw, source=where)
    except ValueError as error:
        message = str(error)
        raise ValueError(message if where in message else f"{where}: {message}") from error
    return dict(raw)


def config_from_dict(raw, where="<dict>"):
    """Builds and validates a `RecipeConfig` from plain data (a parsed YAML document).

    Args:
        raw: mapping with the optional sections `description`, `data`, `model`,
            `recipe`, `training`, `distribute`, `evaluation`, `tune`.
        where: name used in error messages (the file). Defaults to `"<dict>"`.

    Raises:
        ValueError: naming `where`, the key and the allowed keys or values.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(
            f"{where}: a recipe file must be a mapping of sections "
            f"{_section_order()}. Received: {type(raw).__name__}"
        )
    allowed = _section_order()
    for key, value in raw.items():
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" Did you mean `{close[0]}`?" if close else ""
            raise ValueError(
                f"{where}: unknown section `{key}`. Allowed sections: {allowed}.{hint} "
                f"Received: {key}={value!r}"
            )
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise ValueError(
            f"{where}: key `description` must be of type str. "
            f"Received: description={description!r}"
        )
    sections = {
        name: _build_section(cls, raw.get(name), name, where) for name, cls in _SECTIONS.items()
    }
    config = RecipeConfig(
        description=description,
        recipe=_build_recipe_section(raw.get("recipe"), where),
        tune=_check_tune_section(raw.get("tune"), where),
        **sections,
    )
    _check_cross_fields(config, where)
    return config


def _check_cross_fields(config, where):
    size = config.data.image_size
    if size is not None:
        sizes = size if isinstance(size, list) else [size]
        if len(sizes) not in (1, 2) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes
        ):
            raise ValueError(
                f"{where}: key `data.image_size` must be a positive int or [height, width]. "
                f"Received: data.image_size={size!r}"
            )
    positive = [
        ("data.batch_size", config.data.batch_size),
        ("training.steps_per_epoch", config.training.steps_per_epoch),
        ("training.validation_steps", config.training.validation_steps),
        ("training.steps_per_execution", config.training.steps_per_execution),
    ]
    for key, value in positive:
        if value is not None and value < 1:
            raise ValueError(f"{where}: key `{key}` must be >= 1. Received: {key}={value!r}")
    if not 0.0 <= config.training.label_smoothing < 1.0:
        raise ValueError(
            f"{where}: key `training.label_smoothing` must be in [0, 1). "
            f"Received: training.label_smoothing={config.training.label_smoothing!r}"
        )
    momentum = config.training.batchnorm_momentum
    if momentum is not None and not 0.0 <= momentum < 1.0:
        raise ValueError(
            f"{where}: key `training.batchnorm_momentum` must be in [0, 1). "
            f"Received: training.batchnorm_momentum={momentum!r}"
        )
    if not 0.0 <= config.model.dropout < 1.0:
        raise ValueError(
            f"{where}: key `model.dropout` must be in [0, 1). "
            f"Received: model.dropout={config.model.dropout!r}"
        )
    class_weight = config.training.class_weight
    if isinstance(class_weight, str) and class_weight not in ("auto", "balanced", "none"):
        raise ValueError(
            f"{where}: key `training.class_weight` must be one of ['auto', 'balanced', "
            f"'none'] or a list of per-class weights. "
            f"Received: training.class_weight={class_weight!r}"
        )
    if isinstance(config.training.jit_compile, str) and config.training.jit_compile != "auto":
        raise ValueError(
            f"{where}: key `training.jit_compile` must be one of ['auto', true, false]. "
            f"Received: training.jit_compile={config.training.jit_compile!r}"
        )


def parse_override(text):
    """Splits a `--set` override `section.key=value` into (["section", "key"], value).

    The value is parsed as a YAML scalar or flow collection, so `0.1`, `true`, `null`,
    `[64, 64]` and `{a: 1}` have their YAML types; anything else is a string.
    """
    if "=" not in text:
        raise ValueError(
            "An override must look like `section.key=value`, e.g. "
            f"`training.seed=3`. Received: --set {text!r}"
        )
    key, raw_value = text.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if not key or any(not part for part in parts):
        raise ValueError(
            f"An override key must be dotted, e.g. `training.seed`. Received: --set {text!r}"
        )
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else ""
    except yaml.YAMLError as error:
        raise ValueError(f"--set {text!r}: the value is not valid YAML ({error}).") from error
    return parts, value


def apply_overrides(raw, overrides):
    """Returns a copy of the parsed YAML `raw` with `section.key=value` overrides set."""
    import copy

    raw = copy.deepcopy(raw) if raw else {}
    for text in overrides or []:
        parts, value = parse_override(text)
        node = raw
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                prefix = ".".join(parts[: depth + 1])
                raise ValueError(
                    f"--set {text!r}: `{prefix}` is a value, not a section. "
                    f"Received: {prefix}={child!r}"
                )
            node = child
        node[parts[-1]] = value
    return raw


def read_yaml(path):
    """Reads one YAML file with `yaml.safe_load` (no Python object tags)."""
    path = os.fspath(path)
    try:
        import tensorflow as tf

        with tf.io.gfile.GFile(path, "r") as handle:
            text = handle.read()
    except ImportError:  # pragma: no cover - kmedimg always has TensorFlow
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except Exception as error:  # tf raises NotFoundError, an OpError
        if not os.path.exists(path) and "://" not in path:
            raise FileNotFoundError(f"Recipe file not found. Received: path={path!r}") from error
        raise
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({error}).") from error


def load_config(path, overrides=()):
    """Loads a recipe file into a validated `RecipeConfig`.

    Args:
        path: the YAML file (local or `gs://`).
        overrides: `section.key=value` strings applied after reading (the CLI's
            `--set`). Defaults to `()`.

    Returns:
        A `RecipeConfig`.

    Raises:
        FileNotFoundError: when `path` does not exist.
        ValueError: on invalid YAML, unknown keys, wrong types or values outside the
            allowed set; the message names the file, the key and the allowed values.

    Example:

    ```python
    config = load_config("recipes/quickstart.yaml", overrides=["training.seed=1"])
    ```
    """
    raw = read_yaml(path)
    where = os.fspath(path)
    if overrides:
        if raw is not None and not isinstance(raw, dict):
            raise ValueError(
                f"{where}: a recipe file must be a mapping of sections. "
                f"Received: {type(raw).__name__}"
            )
        raw = apply_overrides(raw, overrides)
        where = f"{where} (with --set {' '.join(overrides)})"
    return config_from_dict(raw, where)


def save_config(config, path):
    """Writes `config` as YAML to `path` (the run directory's `config.yaml`)."""
    import tensorflow as tf

    with tf.io.gfile.GFile(os.fspath(path), "w") as handle:
        handle.write(config.to_yaml())
