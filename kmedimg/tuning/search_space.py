"""The `tune:` section of a recipe file: which hyper-parameters are searched, and how.

The search space is plain data, validated once when it is read. The recipe file says

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
"""

import dataclasses
import math

TUNER_NAMES = ("hyperband", "bayesian", "random", "grid")
DIRECTIONS = ("max", "min")


def _error(key, message, value, source):
    where = f" in {source}" if source else ""
    return ValueError(f"tune.{key}{where}: {message} Received: tune.{key}={value!r}")


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
        min: Smallest value.
        max: Largest value; `None` means "as many as the backbone has" (freeze
            depth). Defaults to `None`.
        step: Step between values. Defaults to `1`.
    """

    min: int = 0
    max: int = None
    step: int = 1

    def to_dict(self):
        return {"min": self.min, "max": self.max, "step": self.step}


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """Which hyper-parameters are searched and over what values.

    Args:
        learning_rate: Log-scale range of the first stage's learning rate (later
            stages keep their ratio to it), or `None` to keep the recipe's.
            Defaults to `1e-5..1e-2`.
        dropout: Range of the head's dropout rate, or `None`. Defaults to
            `0.0..0.5` in steps of `0.1`.
        freeze_depth: Integer range of frozen backbone blocks (stem = block 0),
            or `None`. `max=None` means all blocks. Defaults to `0..all`.
        weight_decay: Log-scale range of AdamW weight decay, or `None` (not
            searched). Defaults to `None`.
        hidden_units: Head widths to choose from (0 = no hidden layer), or
            `None`. Defaults to `None`.
        augmentation_strength: Range of augmentation strength in 0..1 (0 = off),
            or `None`. Defaults to `None`.
        backbone: Backbone names to choose from, or `None`. Defaults to `None`.
        recipe: Recipe names to choose from, or `None`. Defaults to `None`.
    """

    learning_rate: FloatRange = FloatRange(1e-5, 1e-2, log=True)
    dropout: FloatRange = FloatRange(0.0, 0.5, step=0.1)
    freeze_depth: IntRange = IntRange(0, None)
    weight_decay: FloatRange = None
    hidden_units: tuple = None
    augmentation_strength: FloatRange = None
    backbone: tuple = None
    recipe: tuple = None

    def to_dict(self):
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, (FloatRange, IntRange)):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[field.name] = value
        return out


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
        factor: Hyperband reduction factor. Defaults to `3`.
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

    tuner: str = "hyperband"
    objective: str = "val_auc"
    direction: str = None
    max_trials: int = 10
    max_epochs: int = None
    factor: int = 3
    hyperband_iterations: int = 1
    executions_per_trial: int = 1
    seed: int = 0
    directory: str = "runs/tune"
    project_name: str = None
    isolate_trials: bool = True
    search_space: SearchSpace = SearchSpace()

    def __post_init__(self):
        if self.directory is None:
            object.__setattr__(self, "directory", "runs/tune")
        if self.direction is None:
            lowered = self.objective.lower()
            inferred = "min" if ("loss" in lowered or "error" in lowered) else "max"
            object.__setattr__(self, "direction", inferred)
        if self.tuner not in TUNER_NAMES:
            raise _error("tuner", f"unknown tuner; allowed: {', '.join(TUNER_NAMES)}.",
                         self.tuner, None)
        if self.direction not in DIRECTIONS:
            raise _error("direction", "allowed: max, min.", self.direction, None)
        for key in ("max_trials", "factor", "hyperband_iterations", "executions_per_trial"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise _error(key, "must be an integer >= 1.", value, None)
        if self.tuner == "hyperband" and self.factor < 2:
            raise _error("factor", "Hyperband needs a factor >= 2.", self.factor, None)
        if not isinstance(self.isolate_trials, bool):
            raise _error("isolate_trials", "must be true or false.", self.isolate_trials, None)
        if self.max_epochs is not None and (
            not isinstance(self.max_epochs, int) or isinstance(self.max_epochs, bool)
            or self.max_epochs < 1
        ):
            raise _error("max_epochs", "must be an integer >= 1 or null.", self.max_epochs, None)

    @classmethod
    def from_dict(cls, mapping, source=None):
        """Validates a `tune:` mapping (as read from YAML) into `TuneSettings`.

        Args:
            mapping: The section as a dict, `None` (all defaults), a
                `TuneSettings`, or any dataclass with the same fields.
            source: File name used in error messages. Defaults to `None`.

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
            raise _error("", "the tune section must be a mapping.", mapping, source)
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(mapping) - set(allowed))
        if unknown:
            raise _error(unknown[0], f"unknown key; allowed: {', '.join(allowed)}.",
                         mapping[unknown[0]], source)
        values = {k: v for k, v in mapping.items() if k != "search_space"}
        values["search_space"] = _space_from_dict(mapping.get("search_space"), source)
        try:
            return cls(**values)
        except ValueError as error:
            if source:
                message = str(error).replace(":", f" in {source}:", 1)
                raise ValueError(message) from None
            raise

    def to_dict(self):
        out = dataclasses.asdict(self)
        out["search_space"] = self.search_space.to_dict()
        return out


def _float_range(key, value, source, log, default_step=None):
    if isinstance(value, FloatRange):
        return value
    if isinstance(value, (list, tuple)) and len(value) == 2:
        value = {"min": value[0], "max": value[1]}
    if not isinstance(value, dict):
        raise _error(f"search_space.{key}", "expected a mapping {min, max[, step]} or null.",
                     value, source)
    unknown = sorted(set(value) - {"min", "max", "step", "log"})
    if unknown:
        raise _error(f"search_space.{key}.{unknown[0]}", "unknown key; allowed: min, max, step.",
                     value[unknown[0]], source)
    try:
        low, high = float(value["min"]), float(value["max"])
    except (KeyError, TypeError, ValueError):
        raise _error(f"search_space.{key}", "needs numeric `min` and `max`.", value,
                     source) from None
    step = value.get("step", default_step)
    if step is not None:
        step = float(step)
        if step <= 0:
            raise _error(f"search_space.{key}.step", "must be > 0.", step, source)
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise _error(f"search_space.{key}", "needs finite min <= max.", value, source)
    if log:
        if low <= 0:
            raise _error(f"search_space.{key}.min", "a log-scale range needs min > 0.", low, source)
        step = None
    return FloatRange(low, high, step=step, log=log)


def _int_range(key, value, source):
    if isinstance(value, IntRange):
        return value
    if isinstance(value, (list, tuple)) and len(value) == 2:
        value = {"min": value[0], "max": value[1]}
    if not isinstance(value, dict):
        raise _error(f"search_space.{key}", "expected a mapping {min, max[, step]} or null.",
                     value, source)
    unknown = sorted(set(value) - {"min", "max", "step"})
    if unknown:
        raise _error(f"search_space.{key}.{unknown[0]}", "unknown key; allowed: min, max, step.",
                     value[unknown[0]], source)
    low, high, step = value.get("min", 0), value.get("max"), value.get("step", 1)
    for name, number in (("min", low), ("max", high), ("step", step)):
        if number is None and name == "max":
            continue
        if not isinstance(number, int) or isinstance(number, bool) or number < 0:
            raise _error(f"search_space.{key}.{name}", "must be an integer >= 0.", number, source)
    if step < 1 or (high is not None and high < low):
        raise _error(f"search_space.{key}", "needs step >= 1 and min <= max.", value, source)
    return IntRange(low, high, step)


def _choices(key, value, source, kind):
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise _error(f"search_space.{key}", "expected a non-empty list of choices or null.",
                     value, source)
    for item in value:
        if not isinstance(item, kind) or isinstance(item, bool):
            raise _error(f"search_space.{key}", f"every choice must be a {kind.__name__}.",
                         item, source)
    if len(set(value)) != len(value):
        raise _error(f"search_space.{key}", "choices repeat.", value, source)
    return tuple(value)


def _space_from_dict(mapping, source):
    if mapping is None:
        return SearchSpace()
    if isinstance(mapping, SearchSpace):
        return mapping
    if not isinstance(mapping, dict):
        raise _error("space", "must be a mapping of hyper-parameter -> range.", mapping, source)
    allowed = [f.name for f in dataclasses.fields(SearchSpace)]
    unknown = sorted(set(mapping) - set(allowed))
    if unknown:
        raise _error(f"search_space.{unknown[0]}", f"unknown hyper-parameter; allowed: "
                     f"{', '.join(allowed)}.", mapping[unknown[0]], source)
    defaults = SearchSpace()
    values = {}
    for key in allowed:
        if key not in mapping:
            values[key] = getattr(defaults, key)
            continue
        value = mapping[key]
        if value is None:
            values[key] = None
        elif key in ("learning_rate", "weight_decay"):
            values[key] = _float_range(key, value, source, log=True)
        elif key == "dropout":
            values[key] = _float_range(key, value, source, log=False)
            if not 0.0 <= values[key].min <= values[key].max < 1.0:
                raise _error("search_space.dropout", "must lie in [0, 1).", value, source)
        elif key == "augmentation_strength":
            values[key] = _float_range(key, value, source, log=False)
            if not 0.0 <= values[key].min <= values[key].max <= 1.0:
                raise _error("search_space.augmentation_strength", "must lie in [0, 1].", value,
                             source)
        elif key == "freeze_depth":
            values[key] = _int_range(key, value, source)
        elif key == "hidden_units":
            values[key] = _choices(key, value, source, int)
            if min(values[key]) < 0:
                raise _error("search_space.hidden_units", "widths must be >= 0.", value, source)
        else:
            values[key] = _choices(key, value, source, str)
    return SearchSpace(**values)
