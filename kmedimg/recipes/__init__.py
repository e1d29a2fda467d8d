"""The fine-tuning approaches of the review (§7, §9) as data, and the §9 advisor.

A `Recipe` is where the weights start (`init`: random or pretrained) and an ordered
list of `Stage`s. A stage says which backbone blocks train (`freeze_depth`, counted
in the backbone's own blocks, see `kmedimg.models.backbone_blocks`), whether the
BatchNormalization layers of the training blocks update, the optimizer, the learning
rate and its schedule, the epochs, and optionally discriminative per-block learning
rates. `kmedimg.training` runs any recipe with one code path; a new approach is a
new registered factory (`register_recipe`), not new training code.

Modules: `stage` (`Stage`), `recipe` (`Recipe`), `registry` (`get_recipe`,
`register_recipe`, ...), `approaches` (the five registered factories, see the table
there) and `advisor` (`advise`, the §9 categories).

Example:

```python
recipe = get_recipe("two_stage", freeze_depth=4, finetune_learning_rate=3e-5)
[stage.name for stage in recipe.stages]  # ['head_warmup', 'finetune']
advise(num_images=546, similarity="low").recipe  # 'two_stage'
```
"""

from kmedimg.core.vocabulary import OPTIMIZERS
from kmedimg.models.freezing import check_freeze_depth, resolve_freeze_depth
from kmedimg.recipes.advisor import LARGE_DATASET, SIMILARITIES, Advice, advise
from kmedimg.recipes.approaches import (
    feature_extractor,
    from_scratch,
    full_finetune,
    partial_finetune,
    two_stage,
)
from kmedimg.recipes.recipe import INITS, Recipe
from kmedimg.recipes.registry import (
    RECIPES,
    get_recipe,
    list_recipes,
    recipe_options,
    register_recipe,
)
from kmedimg.recipes.stage import SCHEDULES, Stage

__all__ = [
    "Advice",
    "INITS",
    "LARGE_DATASET",
    "OPTIMIZERS",
    "RECIPES",
    "Recipe",
    "SCHEDULES",
    "SIMILARITIES",
    "Stage",
    "advise",
    "check_freeze_depth",
    "feature_extractor",
    "from_scratch",
    "full_finetune",
    "get_recipe",
    "list_recipes",
    "partial_finetune",
    "recipe_options",
    "register_recipe",
    "resolve_freeze_depth",
    "two_stage",
]
