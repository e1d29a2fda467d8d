"""One typed validator for everything a user configures: types, choices, ranges, keys.

Recipe-file sections (`kmedimg.config`), recipe factories and their `Stage`s
(`kmedimg.recipes`) and the `tune:` search space all check their values here, so an
error reads the same wherever it is raised: it names the argument, says what is
allowed (with the nearest name when one is close), and ends with
`Received: name=value`.

A dataclass declares its rules next to its fields with `field(...)`, as Model
Garden's `official/core/config_definitions.py` declares typed defaults;
`check_fields` then checks an instance, and `from_mapping` builds one from parsed
YAML with unknown keys refused.

Example:

```python
@dataclasses.dataclass
class Section:
    batch_size: int = field(32, minimum=1)
    optimizer: str = field("adamw", choices=("adamw", "adam", "sgd"))

from_mapping(Section, {"optimizr": "adam"}, where="recipe.yaml", section="training")
# ValueError: recipe.yaml: unknown key `training.optimizr` in section `training`.
# Allowed keys: ['batch_size', 'optimizer']. Did you mean `optimizer`?
# Received: training.optimizr='adam'
```
"""

import dataclasses
import difflib
import math
import typing
from typing import Any, Union

CHOICES = "choices"
INTERVAL = "interval"


@dataclasses.dataclass(frozen=True)
class Interval:
    """A numeric range with open or closed ends; `None` leaves an end unbounded.

    Args:
        minimum: smallest allowed value, or `None`. Defaults to `None`.
        maximum: largest allowed value, or `None`. Defaults to `None`.
        include_minimum: whether `minimum` itself is allowed. Defaults to `True`.
        include_maximum: whether `maximum` itself is allowed. Defaults to `True`.
    """

    minimum: Any = None
    maximum: Any = None
    include_minimum: bool = True
    include_maximum: bool = True

    def __contains__(self, value):
        if isinstance(value, float) and math.isnan(value):
            return False
        if self.minimum is not None and (
            value < self.minimum or (value == self.minimum and not self.include_minimum)
        ):
            return False
        if self.maximum is not None and (
            value > self.maximum or (value == self.maximum and not self.include_maximum)
        ):
            return False
        return True

    def __str__(self):
        if self.minimum is not None and self.maximum is not None:
            left = "[" if self.include_minimum else "("
            right = "]" if self.include_maximum else ")"
            return f"in {left}{self.minimum}, {self.maximum}{right}"
        if self.minimum is not None:
            return f"{'>=' if self.include_minimum else '>'} {self.minimum}"
        if self.maximum is not None:
            return f"{'<=' if self.include_maximum else '<'} {self.maximum}"
        return "any number"


def field(default=dataclasses.MISSING, *, choices=None, minimum=None, maximum=None,
          include_minimum=True, include_maximum=True, default_factory=dataclasses.MISSING):
    """A `dataclasses.field` carrying its allowed values for `check_fields`.

    Args:
        default: the default value; leave out for a required field.
        choices: the allowed values (a tuple), or `None` for any. Defaults to `None`.
        minimum: smallest allowed number, or `None`. Defaults to `None`.
        maximum: largest allowed number, or `None`. Defaults to `None`.
        include_minimum: whether `minimum` is allowed. Defaults to `True`.
        include_maximum: whether `maximum` is allowed. Defaults to `True`.
        default_factory: builds the default (for lists and dicts). Defaults to none.
    """
    metadata = {}
    if choices is not None:
        metadata[CHOICES] = tuple(choices)
    if minimum is not None or maximum is not None:
        metadata[INTERVAL] = Interval(minimum, maximum, include_minimum, include_maximum)
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


# -- types ---------------------------------------------------------------------------


def type_name(annotation):
    """A readable name of a type annotation, for error messages (`int or null`)."""
    if annotation is Any:
        return "any"
    if typing.get_origin(annotation) is Union:
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
    """Ints given for float fields become floats so a config round-trips exactly."""
    if not isinstance(value, int) or isinstance(value, bool):
        return value
    if typing.get_origin(annotation) is Union:
        options = typing.get_args(annotation)
        if float in options and int not in options:
            return float(value)
    elif annotation is float:
        return float(value)
    return value


# -- messages ------------------------------------------------------------------------


def did_you_mean(name, allowed, quote="'"):
    """` Did you mean 'x'?` for the allowed name nearest to `name`, or `""`."""
    words = [str(item) for item in allowed]
    close = difflib.get_close_matches(str(name), words, n=1)
    if not close:
        return ""
    nearest = close[0] if quote == "`" else allowed[words.index(close[0])]
    return f" Did you mean `{nearest}`?" if quote == "`" else f" Did you mean {nearest!r}?"


def _subject(name, where, kind):
    subject = f"{kind} `{name}`" if kind else f"`{name}`"
    return f"{where}: {subject}" if where else subject[0].upper() + subject[1:]


def error(name, requirement, value, where=None, kind="argument", hint=""):
    """The one error shape: `where: kind `name` must be ... hint Received: name=value`."""
    return ValueError(
        f"{_subject(name, where, kind)} must be {requirement}.{hint} Received: {name}={value!r}"
    )


# -- checks --------------------------------------------------------------------------


def is_non_finite(value):
    """Whether `value` is a float NaN or infinity (never a valid setting)."""
    return isinstance(value, float) and not math.isfinite(value)


def check_type(name, value, annotation, where=None, kind="argument"):
    """Returns `value` (ints made floats for float fields) or raises naming the type.

    A NaN or infinite float is refused for every type: no setting means "not a number".
    """
    if not matches_type(value, annotation):
        raise ValueError(
            f"{_subject(name, where, kind)} must be of type {type_name(annotation)}. "
            f"Received: {name}={value!r} ({type(value).__name__})"
        )
    if is_non_finite(value):
        raise error(name, "a finite number", value, where, kind)
    return coerce_type(value, annotation)


def check_choice(name, value, choices, where=None, kind="argument"):
    """Raises unless `value` is one of `choices`, suggesting the nearest one."""
    choices = list(choices)
    try:
        allowed = value in choices
    except TypeError:  # an unhashable value in a list of hashables
        allowed = False
    if not allowed:
        hint = did_you_mean(value, choices) if isinstance(value, str) else ""
        raise error(name, f"one of {choices}", value, where, kind, hint)
    return value


def check_number(name, value, interval=Interval(), integer=False, where=None, kind="argument"):
    """Raises unless `value` is a number (an int when `integer`) inside `interval`."""
    number = isinstance(value, int) if integer else isinstance(value, (int, float))
    if is_non_finite(value):
        raise error(name, f"a finite number {interval}", value, where, kind)
    if isinstance(value, bool) or not number or value not in interval:
        noun = "an int" if integer else "a number"
        raise error(name, f"{noun} {interval}", value, where, kind)
    return value


def check_keys(mapping, allowed, where=None, section=None, kind="key"):
    """Raises on the first key of `mapping` outside `allowed`, suggesting the nearest."""
    allowed = list(allowed)
    for key, value in mapping.items():
        if key in allowed:
            continue
        name = f"{section}.{key}" if section else str(key)
        in_section = f" in section `{section}`" if section else ""
        prefix = f"{where}: unknown" if where else "Unknown"
        raise ValueError(
            f"{prefix} {kind} `{name}`{in_section}. Allowed {kind}s: {sorted(allowed)}."
            f"{did_you_mean(key, allowed, quote='`')} Received: {name}={value!r}"
        )


def check_field(field_, value, annotation, name=None, where=None, kind="key"):
    """Checks one value against a dataclass field's type, choices and interval."""
    name = name or field_.name
    value = check_type(name, value, annotation, where, kind)
    choices = field_.metadata.get(CHOICES)
    if choices is not None:
        check_choice(name, value, choices, where, kind)
    interval = field_.metadata.get(INTERVAL)
    if interval is not None and value is not None and value not in interval:
        raise error(name, str(interval), value, where, kind)
    return value


def check_fields(instance, where=None, kind="argument", prefix=""):
    """Checks every field of a dataclass instance, storing coerced values back."""
    hints = typing.get_type_hints(type(instance))
    for field_ in dataclasses.fields(instance):
        value = getattr(instance, field_.name)
        checked = check_field(field_, value, hints[field_.name], f"{prefix}{field_.name}",
                              where, kind)
        if checked is not value:
            object.__setattr__(instance, field_.name, checked)
    return instance


def check_mapping(cls, raw, where=None, section=None):
    """Checks a parsed YAML mapping against dataclass `cls`; returns the coerced values.

    Args:
        cls: a dataclass declaring the allowed keys, their types and rules.
        raw: the mapping, or `None` for no values.
        where: the file (or other origin) named in errors. Defaults to `None`.
        section: the section name, prefixed to keys in errors. Defaults to `None`.

    Raises:
        ValueError: for a non-mapping, an unknown key, a wrong type or a value
            outside the field's choices or interval.
    """
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        prefix = f"{where}: section" if where else "Section"
        raise ValueError(
            f"{prefix} `{section}` must be a mapping of keys to values. "
            f"Received: {section}={raw!r}"
        )
    fields = {field_.name: field_ for field_ in dataclasses.fields(cls)}
    check_keys(raw, fields, where, section)
    hints = typing.get_type_hints(cls)
    return {
        key: check_field(fields[key], value, hints[key],
                         f"{section}.{key}" if section else key, where)
        for key, value in raw.items()
    }


def from_mapping(cls, raw, where=None, section=None):
    """Builds dataclass `cls` from a parsed YAML mapping, every key checked.

    Args:
        cls: a dataclass whose fields all have defaults.
        raw: the mapping, or `None` for all defaults.
        where: the file (or other origin) named in errors. Defaults to `None`.
        section: the section name, prefixed to keys in errors. Defaults to `None`.

    Raises:
        ValueError: as `check_mapping`.
    """
    return cls(**check_mapping(cls, raw, where, section))
