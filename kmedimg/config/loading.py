"""Loading a recipe file: YAML in, a validated `RecipeConfig` out (and back to YAML).

Loading is strict and happens once, at the edge: unknown keys, wrong types and values
outside a field's choices or range are `ValueError`s naming the file, the key and the
allowed values (`kmedimg.core.validation`); the `recipe:` section is checked against
the recipe's factory and the `tune:` section against `TuneSettings`.
"""

import dataclasses
import os
import typing

import yaml

from kmedimg.config.overrides import apply_overrides
from kmedimg.config.recipe_config import RecipeConfig
from kmedimg.config.sections import CLASS_WEIGHTS, RecipeSection
from kmedimg.config.tune import TuneSettings
from kmedimg.core import run_directory
from kmedimg.core.validation import check_choice, check_keys, check_type, error, from_mapping
from kmedimg.recipes import get_recipe, list_recipes

# The sections that are plain dataclasses (`recipe` and `tune` have their own checks).
_SECTIONS = {
    name: section for name, section in typing.get_type_hints(RecipeConfig).items()
    if dataclasses.is_dataclass(section) and name != "recipe"
}


def _recipe_section(raw, where):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(
            f"{where}: section `recipe` must be a mapping with `name` and the recipe's "
            f"options. Received: recipe={raw!r}"
        )
    options = dict(raw)
    name = options.pop("name", RecipeSection.name)
    check_choice("recipe.name", name, list_recipes(), where, kind="key")
    try:
        # `*learning_rate: find`: kmedimg.training.lr_finder sets the value at train time.
        get_recipe(name, **{key: 1e-3 if value == "find" and key.endswith("learning_rate")
                            else value for key, value in options.items()})
    except (ValueError, TypeError) as problem:
        raise ValueError(f"{where}: in section `recipe`: {problem}") from problem
    return RecipeSection(name=name, options=options)


def _tune_section(raw, where):
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: section `tune` must be a mapping. Received: tune={raw!r}")
    TuneSettings.from_dict(raw, source=where)
    return dict(raw)


def config_from_dict(raw, where="<dict>"):
    """Builds and validates a `RecipeConfig` from plain data (a parsed YAML document).

    Args:
        raw: mapping with the optional sections `description`, `data`, `model`,
            `recipe`, `training`, `distribute`, `evaluation`, `tune`.
        where: name used in error messages (the file). Defaults to `"<dict>"`.

    Raises:
        ValueError: naming `where`, the key and the allowed keys or values.

    Example:

    >>> config_from_dict({"recipe": {"name": "two_stage", "freeze_depth": 3}}).training.seed
    0
    """
    if raw is None:
        raw = {}
    allowed = RecipeConfig.section_names()
    if not isinstance(raw, dict):
        raise ValueError(
            f"{where}: a recipe file must be a mapping of sections {allowed}. "
            f"Received: {type(raw).__name__}"
        )
    check_keys(raw, allowed, where, kind="section")
    description = check_type("description", raw.get("description", ""), str, where, "key")
    sections = {
        name: from_mapping(cls, raw.get(name), where, section=name)
        for name, cls in _SECTIONS.items()
    }
    config = RecipeConfig(
        description=description,
        recipe=_recipe_section(raw.get("recipe"), where),
        tune=_tune_section(raw.get("tune"), where),
        **sections,
    )
    _check_cross_fields(config, where)
    return config


def _check_cross_fields(config, where):
    """The rules a field type cannot say: image sizes, class weights, `jit_compile`."""
    size = config.data.image_size
    if size is not None:
        sizes = size if isinstance(size, list) else [size]
        if len(sizes) not in (1, 2) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes
        ):
            raise error("data.image_size", "a positive int or [height, width]", size, where,
                        kind="key")
    class_weight = config.training.class_weight
    if isinstance(class_weight, str) and class_weight not in CLASS_WEIGHTS:
        raise error("training.class_weight",
                    f"one of {list(CLASS_WEIGHTS)} or a list of per-class weights",
                    class_weight, where, kind="key")
    if isinstance(config.training.jit_compile, str) and config.training.jit_compile != "auto":
        raise error("training.jit_compile", "one of ['auto', true, false]",
                    config.training.jit_compile, where, kind="key")


def read_yaml(path):
    """Reads one YAML file (local or `gs://`) with `yaml.safe_load` (no Python tags)."""
    path = os.fspath(path)
    text = run_directory.read_text(path)
    if text is None:
        raise FileNotFoundError(f"Recipe file not found. Received: path={path!r}")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as problem:
        raise ValueError(f"{path}: not valid YAML ({problem}).") from problem


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
    """Writes `config` as YAML to `path` (the run directory's `config.yaml`), atomically."""
    run_directory.write_text(os.fspath(path), config.to_yaml())
