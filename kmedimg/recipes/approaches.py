"""The fine-tuning approaches of the review (§7, §9), one registered factory each.

| recipe | review (§7 / §9) | init | stages |
| --- | --- | --- | --- |
| `from_scratch` | the baseline (LeNet-5, AlexNet, ...) | random | everything trains |
| `full_finetune` | "training the entire model", Strategy 1 | pretrained | everything trains, low LR |
| `partial_finetune` | "freezing some / fine-tuning some layers", Strategy 2 | pretrained | first `freeze_depth` blocks frozen |
| `feature_extractor` | "freezing the convolutional base", Strategy 3 | pretrained | backbone frozen, head trains |
| `two_stage` | Strategy 2 as practitioners run it | pretrained | head warm-up, then unfreeze to `freeze_depth` at a lower LR |

`kmedimg.recipes` imports this module, so the five are registered whenever recipes
are used; a new approach is one more decorated factory here (or in user code).
"""

from typing import Optional, Union

from kmedimg.recipes.recipe import Recipe
from kmedimg.recipes.registry import register_recipe
from kmedimg.recipes.stage import Stage


def _warmup(warmup_epochs, epochs, schedule):
    """Warm-up epochs for a factory default: only with cosine, at most `epochs - 1`."""
    return min(warmup_epochs, epochs - 1) if schedule == "cosine" else 0


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
        description=(
            "Random init, everything trains (the baseline; LeNet-5, AlexNet or any backbone)."
        ),
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
