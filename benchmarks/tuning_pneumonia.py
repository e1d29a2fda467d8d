"""Hyperband over a recipe's hyper-parameters vs the recipe's defaults, same epochs.

Data: PneumoniaMNIST train (4708) / val (524) from ../shared/data/medmnist, 28x28
grey, resized to 32x32, batch 64. Recipe: `from_scratch` on `lenet5_modern` (ImageNet
weights cannot be downloaded here; LeNet keeps a whole search within minutes on two
CPU cores). Fixed budget: Hyperband, max_epochs 9 (`--max-epochs`), factor 3, one
iteration, seed 0, trials in-process (`isolate_trials: false`),
searching learning rate (1e-4..3e-2, log), dropout (0..0.5), weight decay (1e-6..1e-2,
log) and head width (0, 64, 128). Baseline: the recipe's default hyper-parameters
(lr 1e-3, dropout 0.2, weight decay 1e-4, no hidden layer) trained once for as many
epochs as the whole search trained (summed over its trials), so both spend the same
number of epochs. Then both configurations are retrained at max_epochs with three other
seeds, so the comparison is not only the search's pick on one seed.

Prints: best val AUC and wall time of each, and the seed medians.

    python benchmarks/tuning_pneumonia.py [--work /tmp/kmedimg-bench] [--max-epochs 9]
"""

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NPZ = os.path.join(REPO, "..", "shared", "data", "medmnist", "pneumoniamnist_trainval.npz")


def convert(npz, out_dir):
    from kmedimg.data.sources.npz import NpzSource
    from kmedimg.data.writer import write_dataset

    if not os.path.exists(os.path.join(out_dir, "dataset.json")):
        write_dataset(NpzSource(npz, splits=["train", "val"]), out_dir)
    return out_dir


def base_recipe(data_dir, work, max_epochs):
    return {
        "description": "tuning benchmark: from_scratch LeNet-5 (modern) on PneumoniaMNIST",
        "data": {"path": data_dir, "image_size": 32, "batch_size": 64},
        "model": {"backbone": "lenet5_modern", "dropout": 0.2, "hidden_units": 0},
        "recipe": {"name": "from_scratch", "epochs": max_epochs},
        "training": {"seed": 0, "tensorboard": False, "verbose": 0, "weight_decay": 1e-4},
        "evaluation": {"bootstrap": 0},
        "tune": {
            "tuner": "hyperband", "max_epochs": max_epochs, "factor": 3, "seed": 0,
            "isolate_trials": False,  # in-process: faster start, fine for one search
            "directory": os.path.join(work, "tune"), "project_name": "pneumonia",
            "search_space": {
                "learning_rate": {"min": 1e-4, "max": 3e-2},
                "dropout": {"min": 0.0, "max": 0.5, "step": 0.1},
                "freeze_depth": None,  # from_scratch trains every block
                "weight_decay": {"min": 1e-6, "max": 1e-2},
                "hidden_units": [0, 64, 128],
            },
        },
    }


def train(config, run_dir, seed=None, epochs=None):
    """One `kmedimg train` run; returns (best val AUC, wall seconds, epochs run)."""
    from kmedimg import training

    config = dataclasses.replace(
        config,
        training=dataclasses.replace(config.training, run_dir=run_dir,
                                     seed=config.training.seed if seed is None else seed),
    )
    if epochs is not None:
        config.recipe.options = dict(config.recipe.options, epochs=epochs)
    started = time.time()
    result = training.run(config, progress=False)
    return result.metrics["best"]["value"], time.time() - started, len(result.history)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--npz", default=NPZ)
    parser.add_argument("--work", default=None, help="working directory (default: a temp dir)")
    parser.add_argument("--max-epochs", type=int, default=9)
    parser.add_argument("--seeds", type=int, nargs="*", default=[1, 2, 3])
    args = parser.parse_args(argv)
    sys.path.insert(0, REPO)
    from kmedimg.config import config_from_dict, load_config
    from kmedimg.tuning import run_search, settings_for

    if not os.path.exists(args.npz):
        sys.exit(f"missing {args.npz}")
    work = args.work or tempfile.mkdtemp(prefix="kmedimg-tuning-bench-")
    data_dir = convert(args.npz, os.path.join(work, "pneumoniamnist"))
    if os.path.exists(os.path.join(work, "tune")):
        shutil.rmtree(os.path.join(work, "tune"))
    raw = base_recipe(data_dir, work, args.max_epochs)
    config = config_from_dict(raw, "benchmark")

    started = time.time()
    result = run_search(config, settings=settings_for(config), recipe_path="pneumonia.yaml")
    search_seconds = time.time() - started
    trial_epochs = 0
    trials = 0
    for name in sorted(os.listdir(result.project_dir)):
        history = os.path.join(result.project_dir, name, "run0", "history.csv")
        if name.startswith("trial_") and os.path.exists(history):
            with open(history) as handle:
                trial_epochs += sum(1 for _ in handle) - 1
            trials += 1

    default_auc, default_seconds, default_epochs = train(
        config, os.path.join(work, "default_same_epochs"), epochs=trial_epochs)

    best = load_config(result.best_recipe)
    seed_rows = []
    for seed in args.seeds:
        tuned = train(best, os.path.join(work, f"tuned_seed{seed}"), seed=seed)[0]
        default = train(config, os.path.join(work, f"default_seed{seed}"), seed=seed)[0]
        seed_rows.append((seed, tuned, default))

    print("\n== Hyperband vs recipe defaults on PneumoniaMNIST (val), lenet5_modern 32x32 ==")
    print(f"budget: Hyperband max_epochs={args.max_epochs}, factor=3, 1 iteration, seed 0: "
          f"{trials} trials, {trial_epochs} epochs in all")
    print(f"{'run':<44}{'best val AUC':>14}{'wall s':>10}{'epochs':>8}")
    print(f"{'Hyperband search (best trial)':<44}{result.best_score:>14.4f}"
          f"{search_seconds:>10.0f}{trial_epochs:>8}")
    print(f"{'defaults, one run of the same epochs':<44}{default_auc:>14.4f}"
          f"{default_seconds:>10.0f}{default_epochs:>8}")
    print(f"best values: {json.dumps(result.best_values)}")
    print(f"\nretrained at {args.max_epochs} epochs with other seeds (val AUC):")
    for seed, tuned, default in seed_rows:
        print(f"  seed {seed}: tuned {tuned:.4f}   defaults {default:.4f}")
    tuned_median = statistics.median(row[1] for row in seed_rows)
    default_median = statistics.median(row[2] for row in seed_rows)
    print(f"  median: tuned {tuned_median:.4f}   defaults {default_median:.4f}   "
          f"difference {tuned_median - default_median:+.4f}")
    print(f"work directory: {work}")


if __name__ == "__main__":
    main()
