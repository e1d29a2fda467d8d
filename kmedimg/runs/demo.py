"""`kmedimg demo`: transfer learning end to end, offline, in a few minutes on a CPU.

ImageNet weights need a download, so the demo makes its own pretrained model. The
story is the commonest transfer in medical imaging: a model learned on many images
from one hospital, adapted to a few labelled images from another.

1. writes two synthetic datasets as TFRecords: 2000 chest-X-ray phantoms from
   "site A" (`kmedimg.data.synthetic`) and 400 from "site B"
   (`kmedimg.data.sources.synthetic_site`: the same finding, a focal opacity, through a
   foggier, noisier portable unit with an exposure gradient), of which only a quarter
   (100 images) is for training; the rest is for validation and a large test split;
2. pretrains a small backbone `from_scratch` on site A (the "pretrained model");
3. asks the §9 advisor what to do with site B (small, similar to the pretraining data
   -> Category 4 -> a `feature_extractor`: the site-A backbone frozen, a new head);
4. runs that recipe from the site-A backbone, and `from_scratch` on the same 100 site-B
   images as the baseline, then prints one summary table (validation/test AUC with
   bootstrap 95% intervals, wall time, trainable parameters);
5. evaluates the transfer run into its `report.html` (`kmedimg.runs.evaluate_run`).

Why this pairing and not a "different modality": an earlier demo used site-A phantoms
with inverted grey levels as the target. The source backbone's ReLU features are
bright-opacity-on-dark-lung detectors; inverting the image flips the sign of every
first-layer response, so the ReLUs that carried the opacity go silent (62% of the 120
output units never fire on the inverted images, against 43% on site A) and a linear
probe on the features scores AUC 0.63 instead of 0.95. `two_stage` kept those layers
frozen, so its head learnt noise (training AUC 0.40-0.54) and its test AUC landed
anywhere around 0.5, below chance on some seeds: negative transfer, not a recipe bug.

Every step is a public kmedimg call (`make_phantom_dataset`, `write_dataset`,
`recipes.advise`, `train_and_evaluate`, `evaluate_run`), so the demo doubles as a
usage example.
"""

import dataclasses
import importlib.util
import os
import time

from kmedimg import recipes
from kmedimg.config import config_from_dict
from kmedimg.data.pipeline import read_manifest
from kmedimg.data.sources.synthetic_site import SitePhantomSource
from kmedimg.data.synthetic import make_phantom_dataset
from kmedimg.data.writer import write_dataset
from kmedimg.runs.evaluate import evaluate_run
from kmedimg.runs.tables import metric_with_interval
from kmedimg.runs.train import train_and_evaluate

# Budgets: "full" is the README demo (about 2 minutes on 2 idle CPU cores), "quick" is for tests.
BUDGETS = {
    "full": dict(source_images=2000, target_images=400, image_size=32, source_batch_size=32,
                 target_batch_size=16, pretrain_epochs=6, epochs=12, head_epochs=3,
                 bootstrap=1000),
    "quick": dict(source_images=160, target_images=96, image_size=32, source_batch_size=16,
                  target_batch_size=8, pretrain_epochs=1, epochs=2, head_epochs=1, bootstrap=50),
}

DEFAULT_BACKBONE = "lenet5_modern"

DEMO_COLUMNS = ("run", "recipe", "trainable params", "time (s)", "val AUC",
                "test AUC [95% CI]", "test bal. acc.")
"""The columns of the rows `run_demo` returns, in print order."""

SOURCE_RUN = "source-from_scratch"
SCRATCH_RUN = "target-from_scratch"


@dataclasses.dataclass
class DemoResult:
    """What `run_demo` made.

    Attributes:
        rows: the summary table's rows (`DEMO_COLUMNS`).
        advice: the §9 advisor's `Advice` for the target set.
        runs: run directories by role: `"source"`, `"transfer"`, `"scratch"`.
        test_auc: test ROC AUC by role (`"transfer"`, `"scratch"`).
        report: path of the transfer run's report.html, or `None` (see `notes`).
        notes: what the demo wants the reader to know (the verdict, what to try next).
    """

    rows: list
    advice: object
    runs: dict
    test_auc: dict
    report: object
    notes: list


def _config(data, run_dir, backbone, recipe, options, batch_size, budget, seed, weights=None,
            augmentation=None):
    return config_from_dict({
        "description": "kmedimg demo",
        "data": {"path": data, "batch_size": batch_size},
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
    if name == "feature_extractor":
        # A 121-weight head on cached features: cheap epochs, and a rate that converges
        # in a few dozen steps (1e-3 leaves it under-fitted at this budget).
        return {"epochs": 3 * epochs, "learning_rate": 1e-2}
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
    source_dir = os.path.join(out_dir, "data", "site-a")
    target_dir = os.path.join(out_dir, "data", "site-b")
    say(f"== 1/5 writing {settings['source_images']} site-A and {settings['target_images']} "
        f"site-B phantoms ({size}x{size}) as TFRecords")
    if not os.path.exists(os.path.join(source_dir, "dataset.json")):
        make_phantom_dataset(source_dir, num_images=settings["source_images"], image_size=size,
                             seed=seed, val_fraction=0.2, test_fraction=0.0, progress=progress)
    if not os.path.exists(os.path.join(target_dir, "dataset.json")):
        # Few training images, a large test split: the comparison is the point.
        write_dataset(SitePhantomSource(settings["target_images"], size, seed=seed + 1),
                      target_dir, val_fraction=0.25, test_fraction=0.5, seed=seed,
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


def _test_auc(result):
    return result.metrics["test"]["metrics"]["roc_auc"]["value"]


def _verdict(test_auc, train_images, chosen):
    transfer, scratch = test_auc["transfer"], test_auc["scratch"]
    if transfer > scratch:
        return (f"Transfer helped: {chosen} from the site-A backbone scores test AUC "
                f"{transfer:.3f} on site B against {scratch:.3f} from scratch, both from the "
                f"same {train_images} site-B training images. The site-A features already "
                f"describe opacities; {train_images} images are too few to learn them anew.")
    return (f"Transfer did not help this time: {chosen} {transfer:.3f} vs from scratch "
            f"{scratch:.3f} on {train_images} site-B images; compare the intervals above "
            "before reading anything into it.")


def _next_steps(report, chosen, seed):
    """The closing line: where the report is and what to try next."""
    other = "feature_extractor" if chosen == "two_stage" else "two_stage"
    why = ("the frozen backbone alone" if other == "feature_extractor"
           else "fine-tune the upper blocks too")
    return (f"Next: open {report} (ROC, calibration, Grad-CAM of the transfer run); try "
            f"`kmedimg demo --recipe {other}` ({why}) or `--seed {seed + 1}` (another draw); "
            "then your own images: `kmedimg convert` + `kmedimg train recipes/quickstart.yaml`.")


def _report(run_dir, say):
    """Evaluates `run_dir` into report.html; `(path or None, note or None)`."""
    if importlib.util.find_spec("matplotlib") is None:
        return None, ("report.html was skipped: its figures need matplotlib "
                      "(pip install -e \".[cpu,report]\"), then `kmedimg evaluate "
                      f"{run_dir}`.")
    say(f"\n== 5/5 evaluating the transfer run into {os.path.join(run_dir, 'report.html')}")
    return evaluate_run(run_dir, cam_per_group=2)["report"], None


def run_demo(out_dir="kmedimg-demo", backbone=DEFAULT_BACKBONE, recipe="auto", similarity="high",
             budget="full", seed=0, progress=True):
    """Runs the demo (see the module docstring) and returns a `DemoResult`.

    Args:
        out_dir: where datasets and run directories go (for a seed other than 0, its
            `seed-<seed>` subdirectory). Defaults to `"kmedimg-demo"`.
        backbone: a registered backbone with a minimum input size <= 32 (LeNet-5
            with ReLU and max pooling trains in seconds; `"mobilenetv2"` works too,
            several times slower). Defaults to `"lenet5_modern"`.
        recipe: `"auto"` (the advisor's choice) or a registered recipe name.
            Defaults to `"auto"`.
        similarity: what to tell the advisor about site B vs site A. Defaults to `"high"`
            (same anatomy and finding, another machine).
        budget: `"full"` or `"quick"`. Defaults to `"full"`.
        seed: seed of data and training. Defaults to `0`.
        progress: progress bars. Defaults to `True`.

    Example:

    ```python
    result = run_demo("/tmp/demo", budget="quick", progress=False)
    result.test_auc  # {'transfer': ..., 'scratch': ...}
    ```
    """
    if budget not in BUDGETS:
        raise ValueError(
            f"`budget` must be one of {sorted(BUDGETS)}. Received: budget={budget!r}"
        )
    if recipe != "auto" and recipe not in recipes.list_recipes():
        raise ValueError(
            f"`recipe` must be 'auto' or one of {recipes.list_recipes()}. "
            f"Received: recipe={recipe!r}"
        )
    settings = BUDGETS[budget]
    say = print if progress else (lambda *args, **kwargs: None)
    # Each seed has its own data and runs (a run directory refuses another seed's config).
    out_dir = out_dir if seed == 0 else os.path.join(out_dir, f"seed-{seed}")
    source_dir, target_dir = _write_datasets(out_dir, settings, seed, say, progress)
    runs = {"source": os.path.join(out_dir, "runs", SOURCE_RUN),
            "scratch": os.path.join(out_dir, "runs", SCRATCH_RUN)}

    rows = []
    say(f"\n== 2/5 pretraining {backbone} from scratch on the site-A phantoms")
    started = time.time()
    source_run = train_and_evaluate(_config(
        source_dir, runs["source"], backbone, "from_scratch",
        {"epochs": settings["pretrain_epochs"]}, settings["source_batch_size"], settings, seed,
    ), progress=progress)
    rows.append(_row("site A: pretrain", source_run, time.time() - started))

    target_train = read_manifest(target_dir).splits["train"].count
    advice = recipes.advise(target_train, similarity)
    say(f"\n== 3/5 the advisor on {target_train} site-B images, similarity {similarity!r}:\n")
    say(str(advice))
    chosen, options, augmentation = _target_recipe(advice, recipe, settings)
    runs["transfer"] = os.path.join(out_dir, "runs", f"target-{chosen}")

    say(f"\n== 4/5 site B: {chosen} from the site-A backbone, and from_scratch as baseline")
    results = {}
    for role, label, name, run_options, weights in (
        ("transfer", f"site B: {chosen} (transfer)", chosen, options, source_run.model_path),
        ("scratch", "site B: from_scratch (baseline)", "from_scratch",
         {"epochs": settings["epochs"]}, None),
    ):
        started = time.time()
        results[role] = train_and_evaluate(_config(
            target_dir, runs[role], backbone, name, run_options, settings["target_batch_size"],
            settings, seed, weights=weights, augmentation=augmentation,
        ), progress=progress)
        rows.append(_row(label, results[role], time.time() - started))
    test_auc = {role: _test_auc(result) for role, result in results.items()}
    report, skipped = _report(runs["transfer"], say)
    notes = [_verdict(test_auc, target_train, chosen)] + ([skipped] if skipped else [])
    notes.append(_next_steps(report or os.path.join(runs["transfer"], "report.html"), chosen, seed))
    return DemoResult(rows=rows, advice=advice, runs=runs, test_auc=test_auc, report=report,
                      notes=notes)
