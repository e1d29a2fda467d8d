"""`ClassifierHyperModel`: a recipe file's classifier and stages, with searched values."""

import contextlib
import copy
import tempfile

import keras
import keras_tuner

from kmedimg import models, training
from kmedimg.config import RecipeConfig, RecipeSection, SearchSpace, TuneSettings
from kmedimg.data import pipeline
from kmedimg.recipes import get_recipe, recipe_options, resolve_freeze_depth
from kmedimg.tuning.trial_values import (
    augmentation_for_strength,
    clip,
    input_shape_for,
    is_learning_rate_option,
    scale_epochs,
    tidy,
)
from kmedimg.tuning.trials import train_trial


class ClassifierHyperModel(keras_tuner.HyperModel):
    """A recipe file's classifier and fine-tuning stages as a Keras Tuner search space.

    A trial is a real `kmedimg.training.run` of the recipe file with the trial's
    values filled in (see `trial_config`): the same model builder, stages, seeds,
    strategy and checkpointing as `kmedimg train`, so a two-stage recipe is tuned as
    a whole and the best recipe, trained again, gives the best trial's score.
    `build(hp)` builds that trial's model and prepares its first stage (freezing,
    optimizer with the searched learning rate and weight decay), for inspection and
    for Keras Tuner's API. An empty `HyperParameters` gives every searched value its
    default: the recipe file's own value (clipped into the range).

    The searched values map onto the recipe file as follows:

    | hyper-parameter | recipe file |
    | --- | --- |
    | `learning_rate` | first stage's rate; every `*learning_rate` option keeps its ratio |
    | `dropout` | `model.dropout` |
    | `freeze_depth` | `recipe.freeze_depth` (int, blocks from the stem) |
    | `weight_decay` | `training.weight_decay` |
    | `hidden_units` | `model.hidden_units` |
    | `augmentation_strength` | `model.augmentation`: magnitudes x strength (0 = off) |
    | `backbone` | `model.backbone` |
    | `recipe` | `recipe.name` (its own defaults, the file's shared options kept) |

    Args:
        config: The `kmedimg.config.RecipeConfig` of the recipe file (with `data.path`).
        search_space: A `SearchSpace`, a `search_space:` dict, or `None` for the
            recipe file's `tune.search_space`. Defaults to `None`.
        total_epochs: Epochs of one complete trial; the recipe's stage epochs are
            scaled to sum to it (Hyperband gives each trial its own budget the same
            way). `None` keeps the recipe's total. Defaults to `None`.
        objective: The metric trials are scored and checkpointed by.
            Defaults to `"val_auc"`.
        manifest: The dataset's `Manifest`; `None` reads `config.data.path`.
            Defaults to `None`.
        isolate_trials: Train each trial in a child process, so the search's memory
            stays flat (TensorFlow keeps every traced graph of a process) and a
            crashing trial cannot take the search down. `False` trains in this
            process (faster start for tiny trials). Defaults to `True`.
        **kwargs: `name` and `tunable` of `keras_tuner.HyperModel`.

    Example:

    >>> config = load_config("recipes/quickstart.yaml", ["data.path=/tmp/phantoms"])
    >>> hypermodel = ClassifierHyperModel(config)
    >>> model = hypermodel.build(keras_tuner.HyperParameters())  # the recipe's defaults
    """

    def __init__(self, config, search_space=None, total_epochs=None, objective="val_auc",
                 manifest=None, isolate_trials=True, **kwargs):
        if not isinstance(config, RecipeConfig):
            raise ValueError(
                "`config` must be a kmedimg.config.RecipeConfig (use "
                f"kmedimg.config.load_config). Received: config={type(config).__name__}"
            )
        if manifest is None:
            if not config.data.path:
                raise ValueError(
                    "No dataset: set `data.path` in the recipe or pass --data DIR. "
                    "Received: data.path=None"
                )
            manifest = pipeline.read_manifest(config.data.path)
        for split in (config.data.train_split, config.data.val_split):
            if split not in manifest.splits:
                raise ValueError(
                    f"{config.data.path}: tuning needs the split {split!r}; available: "
                    f"{sorted(manifest.splits)}. Received: {split!r}"
                )
        if search_space is None:
            search_space = TuneSettings.from_dict(config.tune).search_space
        elif not isinstance(search_space, SearchSpace):
            search_space = SearchSpace.from_dict(search_space)
        if not isinstance(objective, str) or not objective:
            raise ValueError(
                f"`objective` must be a metric name. Received: objective={objective!r}"
            )
        self.config = config
        self.manifest = manifest
        self.search_space = search_space
        self.objective = objective
        self.isolate_trials = bool(isolate_trials)
        self.task = manifest.task
        # Model outputs: 1 for binary, the class count otherwise.
        self.num_classes = 1 if manifest.task == "binary" else manifest.num_classes
        self.input_shape = input_shape_for(config, manifest)
        base = self._recipe_for(config.recipe.name, config.recipe.options)
        if total_epochs is not None and (
            isinstance(total_epochs, bool) or not isinstance(total_epochs, int)
            or total_epochs < len(base.stages)
        ):
            raise ValueError(
                f"`total_epochs` must be an int >= the recipe's {len(base.stages)} stages. "
                f"Received: total_epochs={total_epochs!r}"
            )
        self.total_epochs = total_epochs or base.total_epochs
        self._block_counts = {}
        super().__init__(**kwargs)

    # -- the search space ------------------------------------------------------------

    def backbone_choices(self):
        return list(self.search_space.backbone or [self.config.model.backbone])

    def recipe_choices(self):
        return list(self.search_space.recipe or [self.config.recipe.name])

    def num_blocks(self, backbone):
        """Number of blocks of `backbone` (stem = block 0), counted on a built model."""
        if backbone not in self._block_counts:
            model = models.build_classifier(
                backbone, self.num_classes, self.input_shape, weights=None, task=self.task,
                input_dtype=self.config.model.input_dtype,
            )
            self._block_counts[backbone] = len(models.backbone_blocks(model))
            del model
            keras.backend.clear_session()
        return self._block_counts[backbone]

    def _options_for(self, recipe_name):
        """The recipe file's options that `recipe_name`'s factory accepts."""
        accepted = recipe_options(recipe_name)
        return {k: v for k, v in self.config.recipe.options.items() if k in accepted}

    def _recipe_for(self, recipe_name, options):
        return get_recipe(recipe_name, **options)

    def declare_hyperparameters(self, hp):
        self._declare(hp)

    def _declare(self, hp):
        """Declares the searched values on `hp` and returns them (with defaults)."""
        space, model, training = self.search_space, self.config.model, self.config.training
        values = {}
        backbones, recipes = self.backbone_choices(), self.recipe_choices()
        values["backbone"] = (
            hp.Choice("backbone", backbones,
                      default=model.backbone if model.backbone in backbones else backbones[0])
            if len(backbones) > 1 else backbones[0]
        )
        values["recipe"] = (
            hp.Choice("recipe", recipes, default=self.config.recipe.name
                      if self.config.recipe.name in recipes else recipes[0])
            if len(recipes) > 1 else recipes[0]
        )
        if space.learning_rate is not None:
            default = self._recipe_for(
                values["recipe"], self._options_for(values["recipe"])
            ).stages[0].learning_rate
            values["learning_rate"] = hp.Float(
                "learning_rate", space.learning_rate.min, space.learning_rate.max,
                sampling="log", default=clip(default, space.learning_rate),
            )
        if space.dropout is not None:
            values["dropout"] = tidy(hp.Float(
                "dropout", space.dropout.min, space.dropout.max, step=space.dropout.step,
                default=clip(model.dropout, space.dropout),
            ))
        if space.freeze_depth is not None:
            self._declare_freeze_depth(hp, values, backbones, recipes)
        if space.weight_decay is not None:
            values["weight_decay"] = hp.Float(
                "weight_decay", space.weight_decay.min, space.weight_decay.max, sampling="log",
                default=clip(training.weight_decay or space.weight_decay.min, space.weight_decay),
            )
        if space.hidden_units is not None:
            choices = list(space.hidden_units)
            values["hidden_units"] = hp.Choice(
                "hidden_units", choices,
                default=model.hidden_units if model.hidden_units in choices else choices[0],
            )
        if space.augmentation_strength is not None:
            current = 1.0 if model.augmentation not in (None, False) else 0.0
            values["augmentation_strength"] = tidy(hp.Float(
                "augmentation_strength", space.augmentation_strength.min,
                space.augmentation_strength.max, step=space.augmentation_strength.step,
                default=clip(float(current), space.augmentation_strength),
            ))
        return values

    def _declare_freeze_depth(self, hp, values, backbones, recipes):
        # Freeze depth counts the chosen backbone's blocks, so with several backbones
        # it is declared once per backbone, conditional on it. With one backbone it is
        # conditional on the recipes that have the option instead (Keras Tuner cannot
        # nest conditions on two parents); with both, recipes without the option
        # simply ignore the value.
        with_depth = [r for r in recipes if "freeze_depth" in recipe_options(r)]
        if not with_depth:
            return
        for backbone in backbones:
            if len(backbones) > 1:
                scope = hp.conditional_scope("backbone", [backbone])
            elif len(with_depth) < len(recipes):
                scope = hp.conditional_scope("recipe", with_depth)
            else:
                scope = contextlib.nullcontext()
            with scope:
                value = self._freeze_depth_for(hp, backbone, values, with_depth)
            if backbone == values["backbone"] and values["recipe"] in with_depth:
                values["freeze_depth"] = value

    def _freeze_depth_for(self, hp, backbone, values, with_depth):
        blocks = self.num_blocks(backbone)
        space = self.search_space.freeze_depth
        high = blocks if space.max is None else min(space.max, blocks)
        low = min(space.min, high)
        recipe = values["recipe"] if values["recipe"] in with_depth else with_depth[0]
        configured = self._options_for(recipe).get(
            "freeze_depth", recipe_options(recipe)["freeze_depth"][1]
        )
        default = resolve_freeze_depth(configured, blocks)
        return hp.Int("freeze_depth", low, high, step=space.step,
                      default=min(max(default, low), high))

    def search_space_config(self):
        """The declared search space as plain data (recorded in the tuning project)."""
        hp = keras_tuner.HyperParameters()
        self._declare(hp)
        return [
            {"class": type(p).__name__, "config": p.get_config()} for p in hp.space
        ]

    def describe(self):
        """What the models are, beyond the search space (recorded in the project)."""
        return {
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "task": self.task,
            "backbone": self.config.model.backbone,
            "recipe": self.config.recipe.name,
            "recipe_options": self.config.recipe.options,
            "weights": self.config.model.weights,
            "seed": self.config.training.seed,
            "data": self.config.data.path,
        }

    # -- searched values -> recipe file ----------------------------------------------

    def trial_config(self, values, epochs=None):
        """The recipe file with a trial's values filled in (a new `RecipeConfig`).

        This is also the best recipe `kmedimg tune` writes, ready for `kmedimg train`.

        Args:
            values: the searched values (`values(hp)`).
            epochs: the trial's epoch budget; the stages are scaled to it (each keeps
                at least one epoch). `None` is `total_epochs`. Defaults to `None`.
        """
        config = copy.deepcopy(self.config)
        total = max(int(epochs or self.total_epochs), 1)
        backbone = values.get("backbone", self.backbone_choices()[0])
        recipe = values.get("recipe", self.recipe_choices()[0])
        options = self._options_for(recipe)
        defaults = {k: d for k, (_, d) in recipe_options(recipe).items()}
        full = dict(defaults, **options)
        if "learning_rate" in values:
            first = self._recipe_for(recipe, options).stages[0].learning_rate
            factor = values["learning_rate"] / first
            for name in full:
                if is_learning_rate_option(name):
                    options[name] = float(full[name] * factor)
        if "freeze_depth" in values and "freeze_depth" in full:
            options["freeze_depth"] = int(values["freeze_depth"])
        full = dict(defaults, **options)
        stages = len(self._recipe_for(recipe, options).stages)
        total = max(total, stages)
        if total != self._recipe_for(recipe, options).total_epochs:
            scaled = scale_epochs(full, total)
            options.update({k: v for k, v in scaled.items() if v != full.get(k)})
        config.recipe = RecipeSection(name=recipe, options=options)
        config.model.backbone = backbone
        if "dropout" in values:
            config.model.dropout = float(values["dropout"])
        if "hidden_units" in values:
            config.model.hidden_units = int(values["hidden_units"])
        if "augmentation_strength" in values:
            config.model.augmentation = augmentation_for_strength(
                values["augmentation_strength"], self.config.model.augmentation
            )
        if "weight_decay" in values:
            config.training.weight_decay = float(values["weight_decay"])
        # The best checkpoint of a trial is the one the search scores it by.
        config.training.monitor = self.objective
        config.training.run_dir = None
        return config

    def values(self, hp):
        """The searched values of `hp` (a trial's or the best), defaults filled in."""
        return self._declare(hp.copy())

    def resolved_config(self, hp):
        """The recipe file with `hp`'s values filled in (a new `RecipeConfig`)."""
        return self.trial_config(self.values(hp))

    # -- Keras Tuner ---------------------------------------------------------------

    def build(self, hp):
        """The trial's classifier, with its first stage's freezing and optimizer."""
        config = self.trial_config(self._declare(hp))
        recipe = self._recipe_for(config.recipe.name, config.recipe.options)
        keras.utils.set_random_seed(config.training.seed)
        model = training.build_model(
            config, self.num_classes, self.input_shape, task=self.task, recipe=recipe
        )
        steps = max(1, self.manifest.splits[config.data.train_split].count
                    // config.data.batch_size)
        training.prepare_stage(model, recipe.stages[0], config, steps_per_epoch=steps,
                               task=self.task)
        return model

    def fit(self, hp, model=None, *args, run_dir=None, epochs=None, execution=0, **kwargs):
        """Trains the trial: `kmedimg.training.run` of `trial_config` into `run_dir`.

        `model` is not used: the run builds the trial's model itself, inside the
        strategy of the recipe file, exactly as `kmedimg train` would. Running again
        with the same `run_dir` resumes an interrupted trial.

        Args:
            hp: the trial's `HyperParameters`.
            model: ignored (Keras Tuner's API passes the built model).
            run_dir: the trial's run directory; `None` makes a temporary one.
            epochs: the trial's epoch budget (Hyperband's `tuner/epochs`).
            execution: index of a repeated execution; its seed is `seed + execution`.

        Returns:
            A `keras.callbacks.History` with one entry per epoch over all stages.
        """
        if args or kwargs:
            raise ValueError(
                "ClassifierHyperModel trains on its recipe file's data with "
                "kmedimg.training.run; it takes no data, callbacks or fit arguments. Use "
                "kmedimg.tuning.make_tuner(...).search() (or `kmedimg tune`). Received: "
                f"{len(args)} positional and keyword arguments {sorted(kwargs)}"
            )
        config = self.trial_config(self._declare(hp), epochs=epochs)
        config.training.seed += execution
        config.training.run_dir = run_dir or tempfile.mkdtemp(prefix="kmedimg-trial-")
        config.training.verbose = 0
        # Trials are scored on the validation objective; intervals are for the final run.
        config.evaluation.bootstrap = 0
        return train_trial(config, isolate=self.isolate_trials)


