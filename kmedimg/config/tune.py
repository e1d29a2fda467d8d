"""The `tune:` section of a recipe file: which hyper-parameters are searched, and how.

The search space is plain data, validated when the recipe file is read, with or
without the `[tune]` extra installed (Keras Tuner is needed to search, not to check).
The recipe file says

```yaml
tune:
  tuner: hyperband          # hyperband | bayesian | random | grid
  objective: val_auc        # any validation metric the model logs
  direction: max
  max_trials: 20            # bayesian / random / grid
  max_epochs: 6             # hyperband: epochs of the longest trial
  search_space:
    learning_rate: {min: 1.0e-5, max: 1.0e-2}     # always log scale
    dropout: {min: 0.0, max: 0.5, step: 0.1}
    freeze_depth: {min: 0, max: null}             # null: all the backbone's blocks
    weight_decay: {min: 1.0e-6, max: 1.0e-3}      # optional, log scale
    hidden_units: [0, 128, 256]                   # optional head width choices
    augmentation_strength: {min: 0.0, max: 1.0, step: 0.25}   # optional
    backbone: [mobilenetv2, resnet50]             # optional
    recipe: [two_stage, partial_finetune]         # optional
```

A hyper-parameter left out of `search_space` (or set to `null`) is not searched and keeps
the recipe's own value. The first three are searched unless switched off with `null`.

The four value classes are declared together (a reason to pass the one-class-per-file
rule): `FloatRange` and `IntRange` exist only as parts of a `SearchSpace`, which exists
only as part of `TuneSettings`.
"""

import dataclasses
import math
from typing import Optional

from kmedimg.core.validation import (
    Interval,
    check_choice,
    check_fields,
    check_keys,
    check_mapping,
    check_number,
    error,
    field,
)
from kmedimg.models.backbones import list_backbones
from kmedimg.recipes import list_recipes

TUNER_NAMES = ("hyperband", "bayesian", "random", "grid")
DIRECTIONS = ("max", "min")
_RANGE_KEYS = ("min", "max", "step")
_RANGE_FORM = "a mapping {min, max[, step]}, a [min, max] pair, or null"


@dataclasses.dataclass(frozen=True)
class FloatRange:
    """A float hyper-parameter range: `min`..`max`, linear with `step` or log scale.

    Args:
        min: Smallest value.
        max: Largest value.
        step: Grid step for a linear range; `None` for a continuous range.
            Defaults to `None`.
        log: Sample on a log scale (`min` must then be > 0). Defaults to `False`.
    """

    min: float
    max: float
    step: float = None
    log: bool = False

    def to_dict(self):
        return {"min": self.min, "max": self.max, "step": self.step}


@dataclasses.dataclass(frozen=True)
class IntRange:
    """An integer hyper-parameter range `min`..`max` (inclusive).

    Args:
        min: Smallest value. Defaults to `0`.
        max: Largest value; `None` means "as many as the backbone has" (freeze
            depth). Defaults to `None`.
        step: Step between values. Defaults to `1`.
    """

    min: int = 0
    max: int = None
    step: int = 1

    def to_dict(self):
        return {"min": self.min, "max": self.max, "step": self.step}


def _range_mapping(name, value, where):
    if isinstance(value, (FloatRange, IntRange)):
        value = value.to_dict()
    if isinstance(value, (list, tuple)) and len(value) == 2:
        value = {"min": value[0], "max": value[1]}
    if not isinstance(value, dict):
        raise error(name, _RANGE_FORM, value, where, kind="key")
    check_keys(value, _RANGE_KEYS, where, section=name)
    return value


def float_range(name, value, where=None, log=False, bounds=None):
    """Validates a float range given as YAML (or a `FloatRange`) into a `FloatRange`.

    Args:
        name: the key in errors (`"tune.search_space.dropout"`).
        value: `{min, max[, step]}`, `[min, max]` or a `FloatRange`.
        where: the file named in errors. Defaults to `None`.
        log: a log-scale range (needs min > 0; `step` is dropped). Defaults to `False`.
        bounds: an `Interval` both ends must lie in, or `None`. Defaults to `None`.
    """
    mapping = _range_mapping(name, value, where)
    if "min" not in mapping or "max" not in mapping:
        raise error(name, f"{_RANGE_FORM} with numeric `min` and `max`", value, where, "key")
    finite = Interval(-math.inf, math.inf, include_minimum=False, include_maximum=False)
    low = float(check_number(f"{name}.min", mapping["min"], finite, where=where, kind="key"))
    high = float(check_number(f"{name}.max", mapping["max"], finite, where=where, kind="key"))
    if low > high:
        raise error(name, "a range with min <= max", value, where, kind="key")
    step = mapping.get("step")
    if step is not None:
        positive = Interval(0, include_minimum=False)
        step = float(check_number(f"{name}.step", step, positive, where=where, kind="key"))
    if log:
        if low <= 0:
            raise error(f"{name}.min", "> 0 for a log-scale range", low, where, kind="key")
        step = None
    if bounds is not None and (low not in bounds or high not in bounds):
        raise error(name, f"a range {bounds}", value, where, kind="key")
    return FloatRange(low, high, step=step, log=log)


def int_range(name, value, where=None):
    """Validates an integer range given as YAML (or an `IntRange`) into an `IntRange`."""
    mapping = _range_mapping(name, value, where)
    low = check_number(f"{name}.min", mapping.get("min", 0), Interval(0), True, where, "key")
    high = mapping.get("max")
    if high is not None:
        check_number(f"{name}.max", high, Interval(low), True, where, "key")
    step = check_number(f"{name}.step", mapping.get("step", 1), Interval(1), True, where, "key")
    return IntRange(low, high, step)


def choices(name, value, kind, where=None, allowed=None, minimum=None):
    """Validates a list of choices (a single value is a one-item list) into a tuple."""
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise error(name, "a non-empty list of choices or null", value, where, kind="key")
    for item in value:
        if not isinstance(item, kind) or isinstance(item, bool):
            raise error(name, f"a list of {kind.__name__}s", item, where, kind="key")
        if allowed is not None:
            check_choice(name, item, allowed, where, kind="key")
        if minimum is not None:
            check_number(name, item, Interval(minimum), where=where, kind="key")
    if len(set(value)) != len(value):
        raise error(name, "a list of choices without repeats", value, where, kind="key")
    return tuple(value)


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """Which hyper-parameters are searched and over what values (validated on creation).

    Args:
        learning_rate: Log-scale range of the first stage's learning rate (later
            stages keep their ratio to it), or `None` to keep the recipe's.
            Defaults to `1e-5..1e-2`.
        dropout: Range of the head's dropout rate in [0, 1), or `None`. Defaults to
            `0.0..0.5` in steps of `0.1`.
        freeze_depth: Integer range of frozen backbone blocks (stem = block 0),
            or `None`. `max=None` means all blocks. Defaults to `0..all`.
        weight_decay: Log-scale range of AdamW weight decay, or `None` (not
            searched). Defaults to `None`.
        hidden_units: Head widths to choose from (0 = no hidden layer), or
            `None`. Defaults to `None`.
        augmentation_strength: Range of augmentation strength in [0, 1] (0 = off),
            or `None`. Defaults to `None`.
        backbone: Registered backbone names to choose from, or `None`. Defaults to `None`.
        recipe: Registered recipe names to choose from, or `None`. Defaults to `None`.
    """

    learning_rate: FloatRange = FloatRange(1e-5, 1e-2, log=True)
    dropout: FloatRange = FloatRange(0.0, 0.5, step=0.1)
    freeze_depth: IntRange = IntRange(0, None)
    weight_decay: FloatRange = None
    hidden_units: tuple = None
    augmentation_strength: FloatRange = None
    backbone: tuple = None
    recipe: tuple = None

    def __post_init__(self):
        for key in _field_names(self):
            value = getattr(self, key)
            if value is not None:
                object.__setattr__(self, key, _parse_entry(key, value, None))

    @classmethod
    def from_dict(cls, mapping, where=None):
        """Validates a `search_space:` mapping (`None` for the defaults)."""
        if mapping is None:
            return cls()
        if isinstance(mapping, cls):
            return mapping
        if not isinstance(mapping, dict):
            raise error("tune.search_space", "a mapping of hyper-parameter -> range", mapping,
                        where, kind="key")
        check_keys(mapping, _field_names(cls), where, section="tune.search_space",
                   kind="hyper-parameter")
        values = {
            key: None if value is None else _parse_entry(key, value, where)
            for key, value in mapping.items()
        }
        return cls(**values)

    def to_dict(self):
        out = {}
        for key in _field_names(self):
            value = getattr(self, key)
            if isinstance(value, (FloatRange, IntRange)):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[key] = value
        return out


def _field_names(cls):
    return [item.name for item in dataclasses.fields(cls)]


def _parse_entry(key, value, where):
    name = f"tune.search_space.{key}"
    if key in ("learning_rate", "weight_decay"):
        return float_range(name, value, where, log=True)
    if key == "dropout":
        return float_range(name, value, where, bounds=Interval(0, 1, include_maximum=False))
    if key == "augmentation_strength":
        return float_range(name, value, where, bounds=Interval(0, 1))
    if key == "freeze_depth":
        return int_range(name, value, where)
    if key == "hidden_units":
        return choices(name, value, int, where, minimum=0)
    if key == "backbone":
        return choices(name, value, str, where, allowed=list_backbones())
    return choices(name, value, str, where, allowed=list_recipes())


@dataclasses.dataclass(frozen=True)
class TuneSettings:
    """The whole `tune:` section: the search space and the tuner running it.

    Args:
        tuner: One of `"hyperband"`, `"bayesian"`, `"random"`, `"grid"`.
            Defaults to `"hyperband"`.
        objective: Metric to optimise, as logged by Keras. Defaults to `"val_auc"`.
        direction: `"max"` or `"min"`; `None` infers it from the objective's name
            (`min` for losses and errors, else `max`). Defaults to `None`.
        max_trials: Trial budget of bayesian/random/grid search. Defaults to `10`.
        max_epochs: Epochs of the longest trial; the recipe's stage epochs are
            scaled to sum to it. `None` keeps the recipe's total. Defaults to `None`.
        factor: Hyperband reduction factor (>= 2 for Hyperband). Defaults to `3`.
        hyperband_iterations: Hyperband iterations. Defaults to `1`.
        executions_per_trial: Trainings per trial (averaged). Defaults to `1`.
        seed: Seed of the oracle and of every trial's training. Defaults to `0`.
        directory: Parent directory of tuning projects. Defaults to `"runs/tune"`.
        project_name: Project directory name; `None` uses the recipe file's stem.
            Defaults to `None`.
        isolate_trials: Train each trial in a child process (flat memory over a
            long search; a crash fails one trial, not the search). Defaults to `True`.
        search_space: The `SearchSpace`. Defaults to `SearchSpace()`.
    """

    tuner: str = field("hyperband", choices=TUNER_NAMES)
    objective: str = "val_auc"
    direction: Optional[str] = field(None, choices=(None,) + DIRECTIONS)
    max_trials: int = field(10, minimum=1)
    max_epochs: Optional[int] = field(None, minimum=1)
    factor: int = field(3, minimum=1)
    hyperband_iterations: int = field(1, minimum=1)
    executions_per_trial: int = field(1, minimum=1)
    seed: int = 0
    directory: Optional[str] = "runs/tune"
    project_name: Optional[str] = None
    isolate_trials: bool = True
    search_space: SearchSpace = SearchSpace()

    def __post_init__(self):
        check_fields(self, kind="key", prefix="tune.")
        if self.directory is None:
            object.__setattr__(self, "directory", "runs/tune")
        if self.direction is None:
            lowered = self.objective.lower()
            inferred = "min" if ("loss" in lowered or "error" in lowered) else "max"
            object.__setattr__(self, "direction", inferred)
        _check_factor(self.tuner, self.factor, None)

    @classmethod
    def from_dict(cls, mapping, source=None):
        """Validates a `tune:` mapping (as read from YAML) into `TuneSettings`.

        Args:
            mapping: The section as a dict, `None` (all defaults), a
                `TuneSettings`, or any dataclass with the same fields.
            source: The file named in error messages. Defaults to `None`.

        Example:

        >>> settings = TuneSettings.from_dict({"tuner": "random", "max_trials": 4})
        >>> settings.search_space.learning_rate.log
        True
        """
        if mapping is None:
            return cls()
        if isinstance(mapping, cls):
            return mapping
        if dataclasses.is_dataclass(mapping):
            mapping = dataclasses.asdict(mapping)
        if not isinstance(mapping, dict):
            raise error("tune", "a mapping", mapping, source, kind="section")
        check_keys(mapping, _field_names(cls), source, section="tune")
        plain = {key: value for key, value in mapping.items() if key != "search_space"}
        values = check_mapping(cls, plain, source, section="tune")
        _check_factor(values.get("tuner", cls.tuner), values.get("factor", cls.factor), source)
        values["search_space"] = SearchSpace.from_dict(mapping.get("search_space"), source)
        return cls(**values)

    def to_dict(self):
        out = dataclasses.asdict(self)
        out["search_space"] = self.search_space.to_dict()
        return out


def _check_factor(tuner, factor, where):
    if tuner == "hyperband" and factor < 2:
        raise error("tune.factor", ">= 2 for Hyperband", factor, where, kind="key")
