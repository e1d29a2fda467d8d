"""The learning-rate finder (Smith 2017, "Cyclical Learning Rates"; fastai's `lr_find`).

`LRFinder` is a Keras callback that raises the learning rate exponentially from
`min_lr` to `max_lr` over `steps` training steps, records each step's loss, and stops
once the smoothed loss diverges. `find_learning_rate(model, dataset)` runs it on a
compiled model and puts the weights back; `find_for_config(config)` runs it on a fresh
model for one stage of a recipe; `resolve_learning_rates(config)` replaces every
`*learning_rate: find` option of a recipe with the value found.

The suggestion rule (`SUGGESTION_RULE`): the learning rate where the smoothed loss
falls fastest (the most negative slope of smoothed loss against log10(lr), measured
over +-2.5% of the steps), looked for between the end of the smoothing's warm-up (the
first 10% of the steps) and the minimum of the smoothed loss; when the loss never
falls there, the learning rate of the minimum divided by 10.
"""

import dataclasses
import io
import logging
import math

import keras
import numpy as np
import tensorflow as tf

from kmedimg import recipes as recipes_lib
from kmedimg.core.progress import progress
from kmedimg.training.build import build_model
from kmedimg.training.datasets import (
    input_shape, num_outputs, read_training_manifest, steps_per_epoch, train_dataset,
)
from kmedimg.training.stage_loop import prepare_stage
from kmedimg.training.stages import class_weights

logger = logging.getLogger("kmedimg.training")

#: The value of a recipe's learning-rate option that asks for the finder.
FIND = "find"
DEFAULT_STEPS = 200
DEFAULT_MIN_LR = 1e-7
DEFAULT_MAX_LR = 1.0
#: Stop when the smoothed loss exceeds this many times its minimum (fastai uses 4).
DIVERGENCE_FACTOR = 4.0
#: Exponential smoothing of the loss curve (fastai's beta).
SMOOTHING = 0.98
SUGGESTION_RULE = (
    "steepest descent of the smoothed loss against log10(lr) before its minimum, "
    "skipping the first 10% of steps (else the minimum's lr / 10)"
)


@dataclasses.dataclass
class LRFindResult:
    """The sweep of one learning-rate search.

    Attributes:
        learning_rates: the learning rate of each step run.
        losses: each step's training loss.
        smoothed: the exponentially smoothed, bias-corrected losses.
        suggestion: the suggested learning rate (see `SUGGESTION_RULE`).
        minimum_lr: the learning rate at the smallest smoothed loss.
        diverged: whether the sweep stopped early because the loss diverged.
        min_lr: the start of the sweep.
        max_lr: the end of the sweep.
        rule: how `suggestion` was chosen.
    """

    learning_rates: list
    losses: list
    smoothed: list
    suggestion: float
    minimum_lr: float
    diverged: bool
    min_lr: float
    max_lr: float
    rule: str = SUGGESTION_RULE

    def to_dict(self):
        return dataclasses.asdict(self)


class LRFinder(keras.callbacks.Callback):
    """Raises the learning rate exponentially each batch and records the loss.

    Keras logs the running mean of the loss over the epoch; the callback recovers each
    batch's loss from consecutive means (the training batches have one size).

    Args:
        min_lr: the first learning rate, > 0. Defaults to `1e-7`.
        max_lr: the last learning rate, > `min_lr`. Defaults to `1.0`.
        steps: the steps of the sweep, >= 5. Defaults to `200`.
    """

    def __init__(self, min_lr=DEFAULT_MIN_LR, max_lr=DEFAULT_MAX_LR, steps=DEFAULT_STEPS):
        super().__init__()
        _check_sweep(min_lr, max_lr, steps)
        self.min_lr, self.max_lr, self.steps = float(min_lr), float(max_lr), int(steps)
        self.learning_rates, self.losses, self.smoothed = [], [], []
        self.diverged = False
        self._average = 0.0
        self._previous_mean = 0.0
        self._bar = None

    def learning_rate_at(self, step):
        """The learning rate of step `step` (0-based) of the sweep."""
        fraction = step / max(1, self.steps - 1)
        return self.min_lr * (self.max_lr / self.min_lr) ** fraction

    def on_train_begin(self, logs=None):
        self._bar = progress(total=self.steps, desc="lr sweep", unit="step")

    def on_train_end(self, logs=None):
        if self._bar is not None:
            self._bar.close()

    def on_train_batch_begin(self, batch, logs=None):
        self.model.optimizer.learning_rate = self.learning_rate_at(len(self.learning_rates))

    def on_train_batch_end(self, batch, logs=None):
        mean = float((logs or {}).get("loss", math.nan))
        count = len(self.losses)
        loss = (count + 1) * mean - count * self._previous_mean
        self._previous_mean = mean
        self.learning_rates.append(self.learning_rate_at(count))
        self.losses.append(loss)
        self._average = SMOOTHING * self._average + (1 - SMOOTHING) * loss
        self.smoothed.append(self._average / (1 - SMOOTHING ** (count + 1)))
        if self._bar is not None:
            self._bar.set_postfix(lr=f"{self.learning_rates[-1]:.2g}",
                                  loss=f"{self.smoothed[-1]:.3g}", refresh=False)
            self._bar.update(1)
        finite = [value for value in self.smoothed if math.isfinite(value)]
        if not math.isfinite(loss) or (
                count >= 5 and self.smoothed[-1] > DIVERGENCE_FACTOR * min(finite)):
            self.diverged = True
            self.model.stop_training = True

    def result(self):
        """The `LRFindResult` of the sweep run so far."""
        suggestion, minimum = suggest_learning_rate(self.learning_rates, self.smoothed)
        return LRFindResult(self.learning_rates, self.losses, self.smoothed, suggestion,
                            minimum, self.diverged, self.min_lr, self.max_lr)


def suggest_learning_rate(learning_rates, smoothed):
    """`(suggestion, lr at the minimum)` of a sweep by `SUGGESTION_RULE`.

    Raises:
        ValueError: when the sweep has fewer than 3 finite points.
    """
    points = [(lr, loss) for lr, loss in zip(learning_rates, smoothed) if math.isfinite(loss)]
    if len(points) < 3:
        raise ValueError(
            "The learning-rate sweep has fewer than 3 finite losses: the loss diverged at "
            "once. Lower `min_lr` or check the data. Received: "
            f"{len(points)} finite of {len(smoothed)} steps"
        )
    lrs = np.log10([lr for lr, _ in points])
    losses = np.array([loss for _, loss in points])
    # The first points are the smoothing's warm-up (fastai skips them too).
    skip = min(max(1, len(points) // 10), len(points) - 3)
    lowest = skip + int(np.argmin(losses[skip:]))
    minimum_lr = float(10 ** lrs[lowest])
    # The slope over +-width points: a per-step slope follows the loss's noise.
    width = max(1, len(points) // 40)
    best, best_slope = None, 0.0
    for index in range(skip + width, lowest - width + 1):
        slope = ((losses[index + width] - losses[index - width])
                 / (lrs[index + width] - lrs[index - width]))
        if slope < best_slope:
            best, best_slope = index, slope
    if best is not None:
        return float(10 ** lrs[best]), minimum_lr
    return max(float(10 ** lrs[0]), minimum_lr / 10), minimum_lr


def find_learning_rate(model, dataset, min_lr=DEFAULT_MIN_LR, max_lr=DEFAULT_MAX_LR,
                       steps=DEFAULT_STEPS):
    """Runs an exponential learning-rate sweep on a compiled `model`; weights restored.

    Args:
        model: a compiled Keras model (its optimizer's learning rate is a plain value).
        dataset: training batches, repeating (at least `steps` batches).
        min_lr: the first learning rate. Defaults to `1e-7`.
        max_lr: the last learning rate. Defaults to `1.0`.
        steps: steps of the sweep. Defaults to `200`.

    Returns:
        An `LRFindResult`. The model's weights are put back as they were; its
        optimizer has run (compile again before training).
    """
    finder = LRFinder(min_lr, max_lr, steps)
    if isinstance(getattr(model.optimizer, "_learning_rate", None),
                  keras.optimizers.schedules.LearningRateSchedule):
        raise ValueError(
            "The learning-rate finder sets the rate each step: compile `model` with a "
            "float learning rate (a stage with schedule='constant'), not a schedule. "
            f"Received: learning_rate={type(model.optimizer._learning_rate).__name__}"
        )
    weights = [keras.ops.convert_to_numpy(variable) for variable in model.weights]
    try:
        model.fit(dataset, epochs=1, steps_per_epoch=finder.steps, callbacks=[finder],
                  verbose=0, shuffle=False)
    finally:
        for variable, value in zip(model.weights, weights):
            variable.assign(value)
    return finder.result()


def find_for_config(config, stage_index=0, min_lr=DEFAULT_MIN_LR, max_lr=DEFAULT_MAX_LR,
                    steps=DEFAULT_STEPS, recipe=None):
    """Sweeps the learning rate of one stage of `config`'s recipe on a fresh model.

    The model is built as `Trainer` builds it, the stage's freezing is applied, and it is
    compiled with a constant learning rate; the sweep reads the train split.

    Args:
        config: a `RecipeConfig` (its `*learning_rate: find` options are allowed).
        stage_index: which stage of the recipe. Defaults to `0` (the first).
        min_lr: the first learning rate. Defaults to `1e-7`.
        max_lr: the last learning rate. Defaults to `1.0`.
        steps: steps of the sweep. Defaults to `200`.
        recipe: the built `Recipe`; `None` builds it (a found value is a placeholder).
            Defaults to `None`.

    Returns:
        An `LRFindResult`.
    """
    _check_sweep(min_lr, max_lr, steps)
    recipe = recipe or _recipe_with_placeholders(config)[0]
    if not 0 <= stage_index < len(recipe.stages):
        raise ValueError(
            f"`stage_index` must be in [0, {len(recipe.stages)}) for recipe "
            f"{recipe.name!r} (stages {[stage.name for stage in recipe.stages]}). "
            f"Received: stage_index={stage_index!r}"
        )
    manifest = read_training_manifest(config)
    keras.utils.set_random_seed(config.training.seed)
    model = build_model(config, num_outputs(manifest), input_shape(config, manifest),
                        manifest.task, recipe=recipe)
    stage = dataclasses.replace(recipe.stages[stage_index], schedule="constant",
                                warmup_epochs=0, learning_rate=min_lr)
    prepare_stage(model, stage, config, steps_per_epoch=steps_per_epoch(config, manifest),
                  task=manifest.task)
    weights, _ = class_weights(manifest, config.data.train_split, config.training)
    dataset = train_dataset(config, manifest, tf.distribute.get_strategy(),
                            config.training.seed, weights=weights)
    return find_learning_rate(model, dataset, min_lr, max_lr, steps)


def resolve_learning_rates(config, previous=None):
    """`config` with each recipe option `*learning_rate: find` replaced by a found value.

    Each such option runs the finder on the stage whose learning rate it sets (the
    first stage when that cannot be told).

    Args:
        config: a `RecipeConfig`.
        previous: the recipe section of an earlier run of this run directory (a dict);
            numbers stored there are reused, so a resumed run keeps its rates.
            Defaults to `None`.

    Returns:
        `(config, notes)`: the resolved config and one sentence per found value.
    """
    wanted = finder_options(config.recipe.options)
    if not wanted:
        return config, []
    recipe, sentinels = _recipe_with_placeholders(config)
    options, notes = dict(config.recipe.options), []
    for key in wanted:
        stored = (previous or {}).get(key)
        if isinstance(stored, (int, float)) and not isinstance(stored, bool):
            options[key] = float(stored)
            notes.append(f"recipe.{key}: find -> {stored:.3g} (kept from the earlier run)")
            continue
        index = next((i for i, stage in enumerate(recipe.stages)
                      if stage.learning_rate == sentinels[key]), 0)
        result = find_for_config(config, index, recipe=recipe)
        options[key] = float(f"{result.suggestion:.3g}")
        notes.append(
            f"recipe.{key}: find -> {options[key]:g} (learning-rate finder on stage "
            f"{recipe.stages[index].name!r}, {len(result.losses)} steps from "
            f"{result.min_lr:g} to {result.learning_rates[-1]:.3g}; {SUGGESTION_RULE})"
        )
    recipe_section = dataclasses.replace(config.recipe, options=options)
    return dataclasses.replace(config, recipe=recipe_section), notes


def finder_options(options):
    """The recipe options set to `find` (only learning-rate options may be)."""
    return [key for key, value in options.items()
            if value == FIND and key.endswith("learning_rate")]


def plot_sweep(result, path):
    """Writes the smoothed loss against the learning rate (log scale) to a PNG.

    Args:
        result: an `LRFindResult`.
        path: the PNG's path (local or `gs://`).

    Returns:
        `path`.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(6, 4), dpi=100)
    axes.plot(result.learning_rates, result.losses, color="0.8", linewidth=0.8, label="loss")
    axes.plot(result.learning_rates, result.smoothed, color="C0", label="smoothed loss")
    axes.axvline(result.suggestion, color="C3", linestyle="--",
                 label=f"suggested lr {result.suggestion:.2g}")
    axes.set_xscale("log")
    finite = [value for value in result.smoothed if math.isfinite(value)]
    if finite:
        low, high = min(finite), max(finite)
        axes.set_ylim(low - 0.05 * (high - low + 1e-9), min(high, DIVERGENCE_FACTOR * low)
                      + 0.05 * (high - low + 1e-9))
    axes.set_xlabel("learning rate (log scale)")
    axes.set_ylabel("training loss")
    axes.set_title("Learning-rate finder" + (" (stopped: loss diverged)"
                                             if result.diverged else ""))
    axes.legend(loc="best", fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    pyplot.close(figure)
    with tf.io.gfile.GFile(path, "wb") as handle:
        handle.write(buffer.getvalue())
    return path


def _recipe_with_placeholders(config):
    """`(recipe, {option: sentinel})`: the recipe with each `find` set to a distinct rate."""
    options = dict(config.recipe.options)
    sentinels = {}
    for position, key in enumerate(finder_options(options)):
        sentinels[key] = options[key] = 1e-3 * (1 + (position + 1) / 1024)
    return recipes_lib.get_recipe(config.recipe.name, **options), sentinels


def _check_sweep(min_lr, max_lr, steps):
    for name, value in (("min_lr", min_lr), ("max_lr", max_lr)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"`{name}` must be a number > 0. Received: {name}={value!r}")
    if not max_lr > min_lr:
        raise ValueError(
            f"`max_lr` must be greater than `min_lr`. Received: min_lr={min_lr!r}, "
            f"max_lr={max_lr!r}"
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 5:
        raise ValueError(f"`steps` must be an int >= 5. Received: steps={steps!r}")
