"""The recipe registry: named factories whose keyword arguments a YAML `recipe:` sets."""

import inspect
import typing

from kmedimg.core.registry import Registry
from kmedimg.core.validation import check_keys, check_type

RECIPES = Registry("recipe", "name")


def register_recipe(name):
    """Decorator registering a recipe factory under `name` (duplicates are an error).

    The factory takes keyword arguments with defaults and type annotations (these
    are what a YAML `recipe:` section may set) and returns a `Recipe`.
    """
    return RECIPES.register(name)


def list_recipes():
    """Names of the registered recipes, sorted."""
    return RECIPES.names()


def recipe_options(name):
    """The options of recipe `name`: {argument: (annotation, default)}."""
    factory = RECIPES.get(name)
    hints = typing.get_type_hints(factory)
    return {
        parameter.name: (hints.get(parameter.name, typing.Any), parameter.default)
        for parameter in inspect.signature(factory).parameters.values()
    }


def get_recipe(name, **overrides):
    """Builds the registered recipe `name`, with factory arguments overridden.

    Args:
        name: one of `list_recipes()`.
        **overrides: arguments of that recipe's factory (see `recipe_options(name)`).

    Returns:
        A `Recipe`.

    Raises:
        ValueError: for an unknown recipe, an unknown option (listing the allowed ones)
            or a value of the wrong type.

    Example:

    >>> [stage.name for stage in get_recipe("two_stage", freeze_depth=4).stages]
    ['head_warmup', 'finetune']
    """
    factory = RECIPES.get(name)
    options = recipe_options(name)
    where = f"Recipe {name!r}"
    check_keys(overrides, options, where, kind="option")
    arguments = {
        key: check_type(key, value, options[key][0], where, kind="option")
        for key, value in overrides.items()
    }
    return factory(**arguments)
