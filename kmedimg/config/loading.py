"""Loading a recipe file: YAML in, a validated `RecipeConfig` out (and back to YAML).

Loading is strict and happens once, at the edge: unknown keys, wrong types and values
outside a field's choices or range are `ValueError`s naming the file, the key and the
allowed values (`kmedimg.core.validation`); the `recipe:` section is checked against
the recipe's factory and the `tune:` section against `TuneSettings`. The YAML itself
is read strictly (`strict_yaml`: no duplicate keys, no alias bombs), NaN and infinite
numbers are refused anywhere, and the rules a field type cannot say (backbone,
augmentation, load options, ...) are checked by `checks.check_config`, so a bad recipe
fails here, naming the file and the key, before any run directory or data is touched.
"""

import dataclasses
import os
import typing

from kmedimg.config.checks import check_config, check_finite
from kmedimg.config.overrides import apply_overrides
from kmedimg.config.recipe_config import RecipeConfig
from kmedimg.config.sections import RecipeSection
from kmedimg.config.strict_yaml import load_yaml
from kmedimg.config.tune import TuneSettings
from kmedimg.core import run_directory
from kmedimg.core.validation import check_choice, check_keys, check_type, from_mapping
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
    check_finite(raw, where)
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
    check_config(config, where)
    return config


def read_yaml(path):
    """Reads one YAML file (local or `gs://`) strictly: no Python tags, no duplicate
    keys, no alias bombs (`kmedimg.config.strict_yaml`)."""
    path = os.fspath(path)
    try:
        text = run_directory.read_text(path)
    except UnicodeDecodeError as problem:
        raise ValueError(
            f"{path}: a recipe file must be UTF-8 text. Received: {problem.reason} at "
            f"byte {problem.start}"
        ) from problem
    if text is None:
        raise FileNotFoundError(f"Recipe file not found. Received: path={path!r}")
    return load_yaml(text, path)


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
        where = f"{where} (with --set {' '.join(overrides)})"
        try:
            raw = apply_overrides(raw, overrides)
        except ValueError as problem:
            raise ValueError(f"{where}: {problem}") from problem
    return config_from_dict(raw, where)


def save_config(config, path):
    """Writes `config` as YAML to `path` (the run directory's `config.yaml`), atomically."""
    run_directory.write_text(os.fspath(path), config.to_yaml())
