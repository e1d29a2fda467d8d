"""`kmedimg demo`: transfer learning end to end, offline, in a few minutes on a CPU.

ImageNet weights need a download, so the demo makes its own source task:

1. writes two synthetic datasets as TFRecords: a large *source* set of chest-X-ray
   phantoms and a small, imbalanced *target* set drawn with inverted intensities (a
   different-looking modality);
2. trains a small backbone `from_scratch` on the source set (the "pretrained model");
3. asks the §9 advisor what to do with the target set (small, low similarity ->
   Category 3 -> `two_stage` with augmentation) and runs that recipe from the source
   backbone, plus `from_scratch` on the target set as the baseline;
4. prints one summary table (validation/test AUC with bootstrap 95% intervals, wall
   time, trainable parameters).

Every step is a public kmedimg call (`make_phantom_dataset`, `write_dataset`,
`recipes.advise`, `kmedimg.runs.train_and_evaluate`), so the demo doubles as a usage example.
"""

import os
import time

from kmedimg import recipes
from kmedimg.config import config_from_dict
from kmedimg.data.pipeline import read_manifest
from kmedimg.data.synthetic import make_phantom_dataset
from kmedimg.data.writer import write_dataset
from kmedimg.runs.inverted_phantoms import InvertedPhantoms
from kmedimg.runs.tables import metric_with_interval
from kmedimg.runs.train import train_and_evaluate

# Budgets: "full" is the README demo (< 5 minutes on 2 CPU cores), "quick" is for tests.
BUDGETS = {
    "full": dict(source_images=2000, target_images=400, image_size=32, batch_size=32,
                 pretrain_epochs=6, epochs=12, head_epochs=3, bootstrap=1000),
    "quick": dict(source_images=160, target_images=120, image_size=32, batch_size=16,
                  pretrain_epochs=1, epochs=2, head_epochs=1, bootstrap=50),
}


def _config(data, run_dir, backbone, recipe, options, budget, seed, weights=None,
            augmentation=None):
    return config_from_dict({
        "description": "kmedimg demo",
        "data": {"path": data, "batch_size": budget["batch_size"]},
        "model": {"backbone": backbone, "weights": weights, "augmentation": augmentation,
                  "dropout": 0.2},
        "recipe": {"name": recipe, **options},
        "training": {"seed": seed, "run_dir": run_dir, "tensorboard": True, "verbose": 1},
        "evaluation": {"bootstrap": budget["bootstrap"]},
    }, where="kmedimg demo")


def _recipe_options(name, budget):
    epochs = budget["epochs"]
    if name == "two_stage":
        return {"head_epochs": budget["head_epochs"],
                "finetune_epochs": max(1, epochs - budget["head_epochs"]),
                "finetune_learning_rate": 3e-4}
    return {"epochs": epochs}


def _row(label, result, seconds):
    metrics = result.metrics
    return {
        "run": label,
        "recipe": metrics["recipe"],
        "trainable params": f"{metrics['trainable_params']:,}",
        "time (s)": f"{seconds:.0f}",
        "val AUC": metric_with_interval(metrics["val"], "roc_auc"),
        "test AUC [95% CI]": metric_with_interval(metrics["test"], "roc_auc"),
        "test bal. acc.": metric_with_interval(metrics["test"], "balanced_accuracy"),
    }


def _write_datasets(out_dir, settings, seed, say, progress):
    """Writes the source and target phantom datasets (once); returns their directories."""
    size = settings["image_size"]
    source_dir = os.path.join(out_dir, "data", "source-phantoms")
    target_dir = os.path.join(out_dir, "data", "target-inverted")
    say(f"== 1/4 writing {settings['source_images']} source and {settings['target_images']} "
        f"target phantoms ({size}x{size}) as TFRecords")
    if not os.path.exists(os.path.join(source_dir, "dataset.json")):
        make_phantom_dataset(source_dir, num_images=settings["source_images"], image_size=size,
                             seed=seed, val_fraction=0.2, test_fraction=0.0, progress=progress)
    if not os.path.exists(os.path.join(target_dir, "dataset.json")):
        write_dataset(InvertedPhantoms(settings["target_images"], size, seed=seed + 1),
                      target_dir, val_fraction=0.25, test_fraction=0.25, seed=seed,
                      progress=progress)
    return source_dir, target_dir


def _target_recipe(advice, recipe, settings):
    """`(recipe name, options, augmentation)` of the transfer run on the target set."""
    chosen = advice.recipe if recipe == "auto" else recipe
    options = dict(advice.options) if chosen == advice.recipe else {}
    options.update(_recipe_options(chosen, settings))
    if "cache_features" in recipes.recipe_options(chosen) and advice.augmentation:
        options["cache_features"] = False
    augmentation = True if advice.augmentation else None
    return chosen, options, augmentation


DEFAULT_BACKBONE = "lenet5_modern"

DEMO_COLUMNS = ("run", "recipe", "trainable params", "time (s)", "val AUC",
                "test AUC [95% CI]", "test bal. acc.")
"""The columns of the rows `run_demo` returns, in print order."""


def run_demo(out_dir="kmedimg-demo", backbone=DEFAULT_BACKBONE, recipe="auto", similarity="low",
             budget="full", seed=0, progress=True):
    """Runs the demo and returns `(rows, advice)`; see the module docstring.

    `rows` are the summary table's rows (`DEMO_COLUMNS`), `advice` the §9 advisor's.

    Args:
        out_dir: where datasets and run directories go. Defaults to `"kmedimg-demo"`.
        backbone: a registered backbone with a minimum input size <= 32 (LeNet-5
            with ReLU and max pooling trains in seconds; `"mobilenetv2"` works too,
            several times slower). Defaults to `"lenet5_modern"`.
        recipe: `"auto"` (the advisor's choice) or a registered recipe name.
            Defaults to `"auto"`.
        similarity: what to tell the advisor about target vs source. Defaults to `"low"`.
        budget: `"full"` or `"quick"`. Defaults to `"full"`.
        seed: seed of data and training. Defaults to `0`.
        progress: progress bars. Defaults to `True`.
    """
    if budget not in BUDGETS:
        raise ValueError(f"`budget` must be one of {sorted(BUDGETS)}. Received: budget={budget!r}")
    if recipe != "auto" and recipe not in recipes.list_recipes():
        raise ValueError(
            f"`recipe` must be 'auto' or one of {recipes.list_recipes()}. Received: recipe={recipe!r}"
        )
    settings = BUDGETS[budget]
    say = print if progress else (lambda *args, **kwargs: None)
    source_dir, target_dir = _write_datasets(out_dir, settings, seed, say, progress)

    rows = []
    say(f"\n== 2/4 pretraining {backbone} from scratch on the source phantoms")
    started = time.time()
    source_run = train_and_evaluate(_config(
        source_dir, os.path.join(out_dir, "runs", "source-from_scratch"), backbone,
        "from_scratch", {"epochs": settings["pretrain_epochs"]}, settings, seed,
    ), progress=progress)
    rows.append(_row("source: pretrain", source_run, time.time() - started))

    target_train = read_manifest(target_dir).splits["train"].count
    advice = recipes.advise(target_train, similarity)
    say(f"\n== 3/4 the advisor on {target_train} target images, similarity {similarity!r}:\n")
    say(str(advice))
    chosen, options, augmentation = _target_recipe(advice, recipe, settings)

    say(f"\n== 4/4 target: {chosen} from the source backbone, and from_scratch as baseline")
    started = time.time()
    transfer = train_and_evaluate(_config(
        target_dir, os.path.join(out_dir, "runs", f"target-{chosen}"), backbone, chosen,
        options, settings, seed, weights=source_run.model_path, augmentation=augmentation,
    ), progress=progress)
    rows.append(_row(f"target: {chosen} (transfer)", transfer, time.time() - started))
    started = time.time()
    scratch = train_and_evaluate(_config(
        target_dir, os.path.join(out_dir, "runs", "target-from_scratch"), backbone,
        "from_scratch", {"epochs": settings["epochs"]}, settings, seed,
        augmentation=augmentation,
    ), progress=progress)
    rows.append(_row("target: from_scratch (baseline)", scratch, time.time() - started))
    return rows, advice
