"""The recipe checks a field's type and range cannot say, run once when a file is loaded.

`config_from_dict` calls `check_finite` on the raw document first (a NaN or an
infinity is refused wherever a number is written, under the key's full name), then
builds the sections, then `check_config`: the backbone against the registry, the
`model.augmentation` preset or mapping, the `data.load_options` keys, image sizes,
class weights and `jit_compile`. Everything fails with a `ValueError` naming the file
and the key, before any run directory exists or any data is read.
"""

import dataclasses
import math

from kmedimg.config.sections import (
    AUGMENTATION_PRESETS,
    CLASS_WEIGHTS,
    AugmentationConfig,
    LoadOptions,
)
from kmedimg.core.validation import check_choice, check_mapping, check_type, error
from kmedimg.models.backbones import list_backbones


def check_finite(value, where, name=""):
    """Raises on the first NaN or infinite float anywhere in `value`, naming its key.

    Args:
        value: parsed YAML (mappings, lists, scalars).
        where: the file named in errors.
        name: the dotted key of `value`. Defaults to `""` (the document).
    """
    if isinstance(value, float) and not math.isfinite(value):
        raise error(name or "document", "a finite number", value, where, kind="key")
    if isinstance(value, dict):
        for key, item in value.items():
            check_finite(item, where, f"{name}.{key}" if name else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_finite(item, where, f"{name}[{index}]")


def check_augmentation(augmentation, where):
    """Checks `model.augmentation`: a preset or a mapping of `AugmentationConfig` keys."""
    name = "model.augmentation"
    if isinstance(augmentation, dict):
        values = check_mapping(AugmentationConfig, augmentation, where, name)
        value_range = values.get("value_range")
        if value_range is not None and not (
            len(value_range) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value_range)
            and value_range[0] < value_range[1]
        ):
            raise error(f"{name}.value_range", "null or [low, high] with low < high",
                        value_range, where, kind="key")
        return
    if augmentation is None or isinstance(augmentation, bool) or (
        isinstance(augmentation, str) and augmentation in AUGMENTATION_PRESETS
    ):
        return
    settings = [item.name for item in dataclasses.fields(AugmentationConfig)]
    raise error(name, f"one of {list(AUGMENTATION_PRESETS)} or a mapping of the settings "
                f"{settings}", augmentation, where, kind="key")


def check_config(config, where):
    """The rules a field type cannot say: backbone, augmentation, load options, sizes,
    class weights, `jit_compile`."""
    check_choice("model.backbone", config.model.backbone, list_backbones(), where, kind="key")
    check_augmentation(config.model.augmentation, where)
    check_mapping(LoadOptions, config.data.load_options, where, "data.load_options")
    _check_image_size(config.data.image_size, where)
    class_weight = config.training.class_weight
    if isinstance(class_weight, str) and class_weight not in CLASS_WEIGHTS:
        raise error("training.class_weight",
                    f"one of {list(CLASS_WEIGHTS)} or a list of per-class weights",
                    class_weight, where, kind="key")
    if isinstance(class_weight, list):
        for index, weight in enumerate(class_weight):
            check_type(f"training.class_weight[{index}]", weight, float, where, kind="key")
            if weight < 0:
                raise error(f"training.class_weight[{index}]", ">= 0", weight, where, "key")
    if isinstance(config.training.jit_compile, str) and config.training.jit_compile != "auto":
        raise error("training.jit_compile", "one of ['auto', true, false]",
                    config.training.jit_compile, where, kind="key")


def _check_image_size(size, where):
    if size is None:
        return
    sizes = size if isinstance(size, list) else [size]
    if len(sizes) not in (1, 2) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes
    ):
        raise error("data.image_size", "a positive int or [height, width]", size, where,
                    kind="key")
