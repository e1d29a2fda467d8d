"""The §9 advisor: dataset size and similarity -> the review's category and a recipe.

Example:

```python
advice = advise(num_images=546, similarity="low")
advice.recipe       # 'two_stage'
advice.overrides()  # ['recipe.name=two_stage', 'recipe.freeze_depth=0.5', ...]
```
"""

import dataclasses

from kmedimg.core.validation import Interval, check_choice, check_number
from kmedimg.recipes.registry import get_recipe

SIMILARITIES = ("high", "low")

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
    check_number("num_images", num_images, Interval(minimum=1), integer=True)
    check_choice("similarity", similarity, SIMILARITIES)
    check_number("large_threshold", large_threshold, Interval(minimum=1), integer=True)
    size = "large" if num_images >= large_threshold else "small"
    entry = dict(_CATEGORIES[(size, similarity)])
    entry["explanation"] += (
        f" ({num_images} training images; 'large' here means >= {large_threshold}.)"
    )
    return Advice(dataset_size=size, similarity=similarity, **entry)
