"""Recipe files: the configuration dataclasses, their YAML loading and the `tune:` section.

A recipe file is YAML with eight optional sections; every key is a field of one of
the dataclasses in `kmedimg.config.sections`, and every field has a default, so the
smallest recipe file is `recipe: {name: two_stage}` plus a data path:

```yaml
data: {path: data/pneumonia, image_size: 64, batch_size: 32}
model: {backbone: mobilenetv2, weights: imagenet}
recipe: {name: two_stage, freeze_depth: 0.5, head_epochs: 3, finetune_epochs: 10}
training: {seed: 0, weight_decay: 1.0e-4, label_smoothing: 0.05}
```

The `recipe` section is `name` plus the keyword arguments of that recipe's factory in
`kmedimg.recipes` (see `kmedimg.recipes.list_recipes()`), checked against the factory.
The `tune` section is the Keras Tuner search (`kmedimg.config.tune`), checked even
when Keras Tuner is not installed.

Loading is strict and happens once, at the edge: unknown or duplicate keys, wrong
types, NaN or infinite numbers and values outside a fixed set are `ValueError`s naming
the key, the file and the allowed values.
`load_config(path, overrides=["training.seed=3"])` applies `--set`-style overrides
(values parsed as YAML scalars) with the same checks.

Modules: `sections` (one dataclass per section), `recipe_config` (`RecipeConfig`),
`tune` (`TuneSettings`, `SearchSpace`, ranges), `loading` (`load_config`,
`config_from_dict`, `save_config`, `read_yaml`), `strict_yaml` (no duplicate keys, no
alias bombs), `checks` (NaN/inf, backbone, augmentation, load options), `overrides`
(`--set`).
"""

from kmedimg.config.loading import config_from_dict, load_config, read_yaml, save_config
from kmedimg.config.overrides import apply_overrides, parse_override
from kmedimg.config.recipe_config import RecipeConfig
from kmedimg.config.sections import (
    DataConfig,
    DistributeConfig,
    EvaluationConfig,
    ModelConfig,
    RecipeSection,
    TrainingConfig,
)
from kmedimg.config.tune import (
    DIRECTIONS,
    TUNER_NAMES,
    FloatRange,
    IntRange,
    SearchSpace,
    TuneSettings,
)

__all__ = [
    "DIRECTIONS",
    "DataConfig",
    "DistributeConfig",
    "EvaluationConfig",
    "FloatRange",
    "IntRange",
    "ModelConfig",
    "RecipeConfig",
    "RecipeSection",
    "SearchSpace",
    "TUNER_NAMES",
    "TrainingConfig",
    "TuneSettings",
    "apply_overrides",
    "config_from_dict",
    "load_config",
    "parse_override",
    "read_yaml",
    "save_config",
]
