"""The fine-tuning approaches of the review (§7, §9) as data, and the §9 advisor.

A `Recipe` is where the weights start (`init`: random or pretrained) and an ordered
list of `Stage`s. A stage says which backbone blocks train (`freeze_depth`, counted
in the backbone's own blocks, see `kmedimg.models.backbone_blocks`), whether the
BatchNormalization layers of the training blocks update, the optimizer, the learning
rate and its schedule, the epochs, and optionally discriminative per-block learning
rates. `kmedimg.training` runs any recipe with one code path; a new approach is a
new registered factory, not new training code.

| recipe | review (§7 / §9) | init | stages |
| --- | --- | --- | --- |
| `from_scratch` | the baseline (LeNet-5, AlexNet, ...) | random | everything trains |
| `full_finetune` | "training the entire model", Strategy 1 | pretrained | everything trains, low LR |
| `partial_finetune` | "freezing some / fine-tuning some layers", Strategy 2 | pretrained | first `freeze_depth` blocks frozen |
| `feature_extractor` | "freezing the convolutional base", Strategy 3 | pretrained | backbone frozen, head trains |
| `two_stage` | Strategy 2 as practitioners run it | pretrained | head warm-up, then unfreeze to `freeze_depth` at a lower LR |

Example:

```python
recipe = get_recipe("two_stage", freeze_depth=4, finetune_learning_rate=3e-5)
[stage.name for stage in recipe.stages]  # ['head_warmup', 'finetune']
advise(num_images=546, similarity="low").recipe  # 'two_stage'
```
"""

import dataclasses
import inspect
import math
import typing
from typing import Optional, Union

from kmedimg.config import coerce_type, matches_type, type_name

SCHEDULES = ("constant", "cosine", "plateau")
OPTIMIZERS = ("adamw", "adam", "sgd")
INITS = ("random", "pretrained")
SIMILARITIES = ("high", "low")


@dataclasses.dataclass
class Stage:
    """One `fit` of a recipe: what trains, how fast, for how long.

    Attributes:
        name: label used in `history.csv` and the logs.
        epochs: epochs of this stage.
        learning_rate: peak learning rate (after warm-up).
        freeze_depth: how many backbone blocks, counted from the stem, are frozen: an
            int, a fraction in (0, 1] of the blocks, or `"all"` for the whole backbone.
            `0` trains everything. The head always trains. Defaults to `0`.
        schedule: `"constant"`, `"cosine"` (cosine decay to 0 over the stage, after
            `warmup_epochs` of linear warm-up) or `"plateau"` (divide by 10 when the
            monitored metric stalls for 2 epochs). Defaults to `"constant"`.
        warmup_epochs: linear warm-up epochs of the cosine schedule. Defaults to `0`.
        optimizer: one of `"adamw"`, `"adam"`, `"sgd"`; `None` takes
            `training.optimizer`. Defaults to `None`.
        train_batchnorm: whether BatchNormalization layers inside the *training*
            blocks train (update moving statistics, scale and offset). `False` keeps
            them frozen in inference mode, the usual advice when fine-tuning on a small
            dataset. Frozen blocks always keep BatchNormalization frozen.
            Defaults to `True`.
        block_lr_decay: discriminative learning rates: the top training block gets
            `learning_rate`, each block below it `block_lr_decay` times the one above
            (the head gets `learning_rate`). `None` is one rate for all.
            Defaults to `None`.
        cache_features: compute the frozen backbone's features once and train only the
            head on them. Applies only when the whole backbone is frozen (`freeze_depth=
            "all"`) and the model has no augmentation (the features of an image must
            not change between epochs); otherwise the stage trains normally and the run
            says why. Defaults to `False`.
    """

    name: str
    epochs: int
    learning_rate: float
    freeze_depth: Union[int, float, str] = 0
    schedule: str = "constant"
    warmup_epochs: int = 0
    optimizer: Optional[str] = None
    train_batchnorm: bool = True
    block_lr_decay: Optional[float] = None
    cache_features: bool = False

    def __post_init__(self):
        self.validate()

    def validate(self):
        """Raises ValueError naming the field when the stage is inconsistent."""
        where = f"Stage {self.name!r}"
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"{where}: `epochs` must be an int >= 1. Received: epochs={self.epochs!r}")
        if not isinstance(self.learning_rate, (int, float)) or self.learning_rate <= 0:
            raise ValueError(
                f"{where}: `learning_rate` must be > 0. Received: learning_rate={self.learning_rate!r}"
            )
        check_freeze_depth(self.freeze_depth, where)
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"{where}: `schedule` must be one of {SCHEDULES}. Received: schedule={self.schedule!r}"
            )
        if not isinstance(self.warmup_epochs, int) or not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(
                f"{where}: `warmup_epochs` must be an int in [0, epochs={self.epochs}). "
                f"Received: warmup_epochs={self.warmup_epochs!r}"
            )
        if self.warmup_epochs and self.schedule != "cosine":
            raise ValueError(
                f"{where}: `warmup_epochs` needs schedule='cosine'. "
                f"Received: schedule={self.schedule!r}, warmup_epochs={self.warmup_epochs!r}"
            )
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"{where}: `optimizer` must be one of {OPTIMIZERS} or None. "
                f"Received: optimizer={self.optimizer!r}"
            )
        if self.block_lr_decay is not None and not 0 < self.block_lr_decay <= 1:
            raise ValueError(
                f"{where}: `block_lr_decay` must be in (0, 1] or None. "
                f"Received: block_lr_decay={self.block_lr_decay!r}"
            )

    @property
    def backbone_frozen(self):
        """True when no backbone block trains in this stage."""
        return self.freeze_depth == "all" or (
            isinstance(self.freeze_depth, float) and self.freeze_depth >= 1.0
        )


def check_freeze_depth(freeze_depth, where="freeze_depth"):
    """Validates a freeze depth: an int >= 0, a fraction in (0, 1], or `"all"`."""
    ok = (
        freeze_depth == "all"
        or (isinstance(freeze_depth, int) and not isinstance(freeze_depth, bool) and freeze_depth >= 0)
        or (isinstance(freeze_depth, float) and 0.0 < freeze_depth <= 1.0)
    )
    if not ok:
        raise ValueError(
            f"{where}: `freeze_depth` must be an int >= 0 (blocks from the stem), a "
            f"fraction in (0, 1] of the blocks, or 'all'. Received: freeze_depth={freeze_depth!r}"
        )


def resolve_freeze_depth(freeze_depth, num_blocks):
    """The number of frozen blocks out of `num_blocks` for a freeze depth.

    Same rule as `kmedimg.models.freeze_backbone`: fractions round half up and a
    positive fraction freezes at least the stem; ints larger than `num_blocks` are
    an error (the recipe was written for a deeper backbone).
    """
    check_freeze_depth(freeze_depth)
    if freeze_depth == "all":
        return num_blocks
    if isinstance(freeze_depth, float):
        return max(1, min(num_blocks, math.floor(freeze_depth * num_blocks + 0.5)))
    if freeze_depth > num_blocks:
        raise ValueError(
            f"`freeze_depth` is larger than the backbone's {num_blocks} blocks. Use an int "
            f"in [0, {num_blocks}], a fraction or 'all'. Received: freeze_depth={freeze_depth}"
        )
    return freeze_depth


@dataclasses.dataclass
class Recipe:
    """A fine-tuning approach: where the weights start and the stages that train them.

    Attributes:
        name: the registered name.
        init: `"random"` (ignore `model.weights`) or `"pretrained"` (start from
            `model.weights`: ImageNet or a kmedimg backbone).
        stages: the `Stage`s, run in order; each recompiles the model.
        description: one line on what it does and when the review recommends it.
    """

    name: str
    init: str
    stages: list
    description: str = ""

    def __post_init__(self):
        if self.init not in INITS:
            raise ValueError(
                f"Recipe {self.name!r}: `init` must be one of {INITS}. Received: init={self.init!r}"
            )
        if not self.stages:
            raise ValueError(f"Recipe {self.name!r}: needs at least one stage. Received: stages=[]")
        names = [stage.name for stage in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"Recipe {self.name!r}: stage names must be unique. Received: {names}")

    @property
    def total_epochs(self):
        return sum(stage.epochs for stage in self.stages)


_RECIPES = {}


def _warmup(warmup_epochs, epochs, schedule):
    """Warm-up epochs for a factory default: only with cosine, at most `epochs - 1`."""
    return min(warmup_epochs, epochs - 1) if schedule == "cosine" else 0


def register_recipe(name):
    """Decorator registering a recipe factory under `name` (duplicates are an error).

    The factory takes keyword arguments with defaults and type annotations (these
    are what a YAML `recipe:` section may set) and returns a `Recipe`.
    """

    def decorator(factory):
        if name in _RECIPES:
            raise ValueError(
                f"A recipe named {name!r} is already registered ({_RECIPES[name].__module__}."
                f"{_RECIPES[name].__name__}). Received: {factory.__module__}.{factory.__name__}"
            )
        _RECIPES[name] = factory
        return factory

    return decorator


def list_recipes():
    """Names of the registered recipes, sorted."""
    return sorted(_RECIPES)


def recipe_options(name):
    """The options of recipe `name`: {argument: (annotation, default)}."""
    factory = _lookup(name)
    hints = typing.get_type_hints(factory)
    return {
        parameter.name: (hints.get(parameter.name, typing.Any), parameter.default)
        for parameter in inspect.signature(factory).parameters.values()
    }


def _lookup(name):
    if name not in _RECIPES:
        raise ValueError(f"Unknown recipe. Expected one of {list_recipes()}. Received: name={name!r}")
    return _RECIPES[name]


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
    """
    factory = _lookup(name)
    options = recipe_options(name)
    arguments = {}
    for key, value in overrides.items():
        if key not in options:
            raise ValueError(
                f"Recipe {name!r} has no option `{key}`. Allowed options: "
                f"{sorted(options)}. Received: {key}={value!r}"
            )
        annotation = options[key][0]
        if not matches_type(value, annotation):
            raise ValueError(
                f"Recipe {name!r}: option `{key}` must be of type {type_name(annotation)}. "
                f"Received: {key}={value!r} ({type(value).__name__})"
            )
        arguments[key] = coerce_type(value, annotation)
    return factory(**arguments)


@register_recipe("from_scratch")
def from_scratch(
    epochs: int = 20,
    learning_rate: float = 1e-3,
    schedule: str = "cosine",
    warmup_epochs: int = 1,
) -> Recipe:
    """Random initialisation, every layer trains: the baseline the review compares to."""
    return Recipe(
        name="from_scratch",
        init="random",
        description="Random init, everything trains (the baseline; LeNet-5, AlexNet or any backbone).",
        stages=[
            Stage(
                name="train",
                epochs=epochs,
                learning_rate=learning_rate,
                freeze_depth=0,
                schedule=schedule,
                warmup_epochs=_warmup(warmup_epochs, epochs, schedule),
            )
        ],
    )


@register_recipe("full_finetune")
def full_finetune(
    epochs: int = 10,
    learning_rate: float = 1e-4,
    schedule: str = "cosine",
    warmup_epochs: int = 1,
    train_batchnorm: bool = True,
) -> Recipe:
    """Pretrained init, the entire model trains at a low rate (§7 'training the entire model')."""
    return Recipe(
        name="full_finetune",
        init="pretrained",
        description=(
            "Pretrained init, the entire model trains (§7; §9 Strategy 1: large dataset "
            "different from the pretraining data)."
        ),
        stages=[
            Stage(
                name="finetune",
                epochs=epochs,
                learning_rate=learning_rate,
                freeze_depth=0,
                schedule=schedule,
                warmup_epochs=_warmup(warmup_epochs, epochs, schedule),
                train_batchnorm=train_batchnorm,
            )
        ],
    )


@register_recipe("partial_finetune")
def partial_finetune(
    freeze_depth: Union[int, float, str] = 0.5,
    epochs: int = 10,
    learning_rate: float = 1e-4,
    schedule: str = "cosine",
    warmup_epochs: int = 0,
    train_batchnorm: bool = False,
    block_lr_decay: Optional[float] = None,
) -> Recipe:
    """The first `freeze_depth` blocks stay frozen, the upper blocks and the head train."""
    return Recipe(
        name="partial_finetune",
        init="pretrained",
        description=(
            "Pretrained init, lower blocks frozen (generic edges and textures), upper blocks "
            "and head fine-tuned (§7 'freezing some layers'; §9 Strategy 2)."
        ),
        stages=[
            Stage(
                name="finetune",
                epochs=epochs,
                learning_rate=learning_rate,
                freeze_depth=freeze_depth,
                schedule=schedule,
                warmup_epochs=warmup_epochs,
                train_batchnorm=train_batchnorm,
                block_lr_decay=block_lr_decay,
            )
        ],
    )


@register_recipe("feature_extractor")
def feature_extractor(
    epochs: int = 10,
    learning_rate: float = 1e-3,
    schedule: str = "constant",
    cache_features: bool = True,
) -> Recipe:
    """The convolutional base is frozen; only a new head trains (cached features when possible)."""
    return Recipe(
        name="feature_extractor",
        init="pretrained",
        description=(
            "Pretrained backbone frozen as a fixed feature extractor, new head trains "
            "(§7 'freezing the convolutional base'; §9 Strategy 3)."
        ),
        stages=[
            Stage(
                name="head",
                epochs=epochs,
                learning_rate=learning_rate,
                freeze_depth="all",
                schedule=schedule,
                cache_features=cache_features,
            )
        ],
    )


@register_recipe("two_stage")
def two_stage(
    freeze_depth: Union[int, float, str] = 0.5,
    head_epochs: int = 3,
    finetune_epochs: int = 10,
    head_learning_rate: float = 1e-3,
    finetune_learning_rate: float = 1e-4,
    schedule: str = "cosine",
    warmup_epochs: int = 0,
    train_batchnorm: bool = False,
    block_lr_decay: Optional[float] = None,
    cache_features: bool = False,
) -> Recipe:
    """Head warm-up on a frozen base, then unfreeze down to `freeze_depth` at a lower rate.

    Warming the new head up first keeps its large random-init gradients from wrecking
    the pretrained blocks when they are unfrozen.
    """
    if freeze_depth == "all":
        raise ValueError(
            "two_stage: the fine-tuning stage must unfreeze something; use "
            "`feature_extractor` for a frozen backbone. Received: freeze_depth='all'"
        )
    return Recipe(
        name="two_stage",
        init="pretrained",
        description=(
            "Head warm-up with the backbone frozen, then the upper blocks unfrozen at a "
            "lower learning rate (§9 Strategy 2 as practitioners run it)."
        ),
        stages=[
            Stage(
                name="head_warmup",
                epochs=head_epochs,
                learning_rate=head_learning_rate,
                freeze_depth="all",
                schedule="constant",
                cache_features=cache_features,
            ),
            Stage(
                name="finetune",
                epochs=finetune_epochs,
                learning_rate=finetune_learning_rate,
                freeze_depth=freeze_depth,
                schedule=schedule,
                warmup_epochs=warmup_epochs,
                train_batchnorm=train_batchnorm,
                block_lr_decay=block_lr_decay,
            ),
        ],
    )


# --- the §9 advisor -----------------------------------------------------------------

LARGE_DATASET = 10_000


@dataclasses.dataclass
class Advice:
    """What `advise` recommends, and why.

    Attributes:
        category: the review's §9 category, 1 to 4.
        dataset_size: `"large"` or `"small"`.
        similarity: `"high"` or `"low"` (to the pretraining data).
        strategy: the review's strategy in words.
        recipe: the registered recipe name to run.
        options: arguments for `get_recipe(recipe, **options)`.
        augmentation: whether to turn data augmentation on.
        explanation: the review's reasoning plus how kmedimg applies it.
    """

    category: int
    dataset_size: str
    similarity: str
    strategy: str
    recipe: str
    options: dict
    augmentation: bool
    explanation: str

    def to_recipe(self):
        """The recommended `Recipe`."""
        return get_recipe(self.recipe, **self.options)

    def overrides(self):
        """The advice as `--set` overrides for `kmedimg train` (on any recipe file)."""
        items = [f"recipe.name={self.recipe}"]
        items += [f"recipe.{key}={value}" for key, value in self.options.items()]
        if self.augmentation:
            items.append("model.augmentation=default")
        return items

    def __str__(self):
        options = ", ".join(f"{key}={value!r}" for key, value in self.options.items())
        return (
            f"Category {self.category}: {self.dataset_size} dataset, {self.similarity} "
            f"similarity to the pretraining data.\n"
            f"Strategy: {self.strategy}\n"
            f"Recipe: {self.recipe}({options})"
            f"{'  + data augmentation' if self.augmentation else ''}\n\n{self.explanation}"
        )


_CATEGORIES = {
    ("large", "low"): dict(
        category=1,
        strategy="train the entire model, initialised from the pretrained weights (Strategy 1)",
        recipe="full_finetune",
        options={},
        augmentation=False,
        explanation=(
            "Review §9, Category 1 (large dataset, different from the pretraining data): "
            "train the model from scratch but use the pre-trained architecture and weights "
            "to initialise it. With enough images every layer can adapt to the new domain "
            "without overfitting, and the pretrained weights are still a better start "
            "than random ones. kmedimg: `full_finetune` (everything trains, low learning "
            "rate with warm-up and cosine decay)."
        ),
    ),
    ("large", "high"): dict(
        category=2,
        strategy="train the classifier and the top layers of the convolutional base (Strategy 2)",
        recipe="partial_finetune",
        options={"freeze_depth": 0.5},
        augmentation=False,
        explanation=(
            "Review §9, Category 2 (large dataset, similar to the pretraining data): any "
            "option can work, but training the classifier and the top layers of the "
            "convolutional base is the most efficient, because the lower layers' generic "
            "features already fit and need no retraining (§7: lower layers capture edges "
            "and corners, higher layers task-specific structure). kmedimg: "
            "`partial_finetune` with the lower half of the blocks frozen."
        ),
    ),
    ("small", "low"): dict(
        category=3,
        strategy="train some layers and freeze the others (Strategy 2), with data augmentation",
        recipe="two_stage",
        options={"freeze_depth": 0.5},
        augmentation=True,
        explanation=(
            "Review §9, Category 3 (small dataset, different from the pretraining data): "
            "Strategy 2 is recommended, but the balance between layers to train and to "
            "freeze is hard to find: too many trainable layers overfit the few images, "
            "too few cannot adapt to the new domain; data augmentation may be necessary "
            "(§8.1). kmedimg: `two_stage` (warm the new head up on the frozen base, then "
            "unfreeze the upper half of the blocks at a 10x lower rate with "
            "BatchNormalization frozen) plus augmentation; tune `freeze_depth` "
            "(`kmedimg tune`) when validation allows."
        ),
    ),
    ("small", "high"): dict(
        category=4,
        strategy="use the pretrained model as a fixed feature extractor (Strategy 3)",
        recipe="feature_extractor",
        options={"cache_features": True},
        augmentation=False,
        explanation=(
            "Review §9, Category 4 (small dataset, similar to the pretraining data): use "
            "the pre-trained model as a fixed feature extractor, remove the last fully "
            "connected layer and train a new classifier on the features. The features "
            "already describe this kind of image and a small dataset cannot retrain the "
            "base without overfitting. kmedimg: `feature_extractor` with cached backbone "
            "features (each epoch after the first costs only the head)."
        ),
    ),
}


def advise(num_images, similarity, large_threshold=LARGE_DATASET):
    """Maps dataset size and similarity to the review's §9 category and a recipe.

    The review does not put a number on "large"; kmedimg calls a training set large
    from `large_threshold` images.

    Args:
        num_images: number of labelled training images.
        similarity: `"high"` or `"low"`: how much the images resemble the pretraining
            data (ImageNet photographs are "low" for most medical modalities; a backbone
            pretrained on chest X-rays is "high" for other chest X-rays).
        large_threshold: training-set size from which a dataset counts as large.
            Defaults to `10000`.

    Returns:
        An `Advice`.

    Example:

    >>> advise(546, "low").recipe
    'two_stage'
    """
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
        raise ValueError(f"`num_images` must be an int >= 1. Received: num_images={num_images!r}")
    if similarity not in SIMILARITIES:
        raise ValueError(
            f"`similarity` must be one of {SIMILARITIES}. Received: similarity={similarity!r}"
        )
    if isinstance(large_threshold, bool) or not isinstance(large_threshold, int) or large_threshold < 1:
        raise ValueError(
            f"`large_threshold` must be an int >= 1. Received: large_threshold={large_threshold!r}"
        )
    size = "large" if num_images >= large_threshold else "small"
    entry = dict(_CATEGORIES[(size, similarity)])
    entry["explanation"] += (
        f" ({num_images} training images; 'large' here means >= {large_threshold}.)"
    )
    return Advice(dataset_size=size, similarity=similarity, **entry)


def add_advise_command(subparsers):
    """`kmedimg advise --num-images N --similarity high|low`."""
    parser = subparsers.add_parser(
        "advise",
        help="recommend a fine-tuning recipe from dataset size and similarity (review §9)",
        description=advise.__doc__.split("\n\n")[0],
    )
    parser.add_argument("--num-images", type=int, required=True, help="training images")
    parser.add_argument(
        "--similarity", choices=SIMILARITIES, required=True,
        help="similarity of the images to the pretraining data",
    )
    parser.add_argument(
        "--large-threshold", type=int, default=LARGE_DATASET,
        help=f"images from which a dataset counts as large (default {LARGE_DATASET})",
    )

    def handler(args):
        advice = advise(args.num_images, args.similarity, args.large_threshold)
        print(advice)
        # The shipped file of the recipe, with the advised options on top.
        extra = [item for item in advice.overrides() if not item.startswith("recipe.name=")]
        print(f"\nRun it with:\n  kmedimg train recipes/{advice.recipe}.yaml --data DIR "
              + " ".join(f"--set {item}" for item in extra))
        return 0

    parser.set_defaults(handler=handler)
