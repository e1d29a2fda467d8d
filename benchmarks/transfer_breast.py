"""Does transfer help on a small, different dataset? Every recipe vs from_scratch.

ImageNet weights cannot be downloaded here, so the source task is one we train:

1. pretrain a backbone `from_scratch` on PneumoniaMNIST train (chest X-ray, 4,708
   images) and report its PneumoniaMNIST val AUC;
2. on BreastMNIST train (breast ultrasound, 546 images: the review's §9 "small
   dataset, different domain" category) run every recipe starting from that
   backbone, and `from_scratch` as the baseline, with the same epoch budget;
3. print BreastMNIST val AUC and val ACC (mean ± sd over seeds, last-epoch weights:
   no checkpoint selection on the split that is reported), wall time, epochs until
   the validation AUC first reaches from_scratch's final mean, and trainable
   parameters per recipe.

The claim checked (review §6/§7): transfer is faster and at least as accurate as
training from scratch. MedMNIST v2 references (test AUC, ResNet-18 at 28 px):
PneumoniaMNIST 0.944, BreastMNIST 0.901; the test splits are not in the shared
`*_trainval.npz` files, so validation figures are reported.

    python benchmarks/transfer_breast.py                       # LeNet-5 (modern), 3 seeds
    python benchmarks/transfer_breast.py --backbone mobilenetv2 --image-size 32 --seeds 0 1 2
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from kmedimg import runs  # noqa: E402 (after the path)
from kmedimg.config import config_from_dict  # noqa: E402 (after the path)
from kmedimg.data.sources.npz import NpzSource  # noqa: E402 (after the path)
from kmedimg.data.writer import write_dataset  # noqa: E402 (after the path)

SHARED = os.environ.get(
    "KMEDIMG_SHARED_DATA",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data"),
)
RECIPE_ORDER = ["from_scratch", "feature_extractor", "partial_finetune", "two_stage",
                "full_finetune"]


def convert(npz_name, out_dir):
    if os.path.exists(os.path.join(out_dir, "dataset.json")):
        return out_dir
    path = os.path.join(SHARED, "medmnist", npz_name)
    if not os.path.exists(path):
        sys.exit(f"missing {path} (set KMEDIMG_SHARED_DATA to the shared data directory)")
    write_dataset(NpzSource(path), out_dir)
    return out_dir


def make_config(data, run_dir, args, recipe, options, seed, weights=None):
    return config_from_dict({
        "data": {"path": data, "image_size": args.image_size, "batch_size": args.batch_size},
        "model": {"backbone": args.backbone, "weights": weights, "dropout": 0.3,
                  "hidden_units": args.hidden_units},
        "recipe": {"name": recipe, **options},
        "training": {"seed": seed, "run_dir": run_dir, "restore_best": False,
                     "tensorboard": False, "verbose": 0},
        "evaluation": {"bootstrap": 0},
    }, where="transfer_breast")


def recipe_options(name, epochs, head_epochs):
    if name == "two_stage":
        return {"head_epochs": head_epochs, "finetune_epochs": epochs - head_epochs}
    return {"epochs": epochs}


def epochs_to_reach(history, target):
    for row in history:
        if row.get("val_auc") is not None and row["val_auc"] >= target:
            return row["global_epoch"] + 1
    return None


def mean_sd(values, digits=3):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="lenet5_modern")
    parser.add_argument("--image-size", type=int, default=32, help="28 px upsampled to this")
    parser.add_argument("--hidden-units", type=int, default=84, help="84 = LeNet-5's F6")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--pretrain-epochs", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=20, help="BreastMNIST budget per recipe")
    parser.add_argument("--head-epochs", type=int, default=5, help="two_stage warm-up epochs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", default=None, help="working directory (default: a temp dir)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)

    work = args.work or tempfile.mkdtemp(prefix="kmedimg-transfer-")
    pneumonia = convert("pneumoniamnist_trainval.npz", os.path.join(work, "pneumonia"))
    breast = convert("breastmnist_trainval.npz", os.path.join(work, "breast"))
    print(f"backbone {args.backbone} at {args.image_size}px, batch {args.batch_size}, "
          f"pretrain {args.pretrain_epochs} epochs, {args.epochs} epochs per recipe on "
          f"BreastMNIST, seeds {args.seeds}, work dir {work}", flush=True)

    started = time.time()
    pretrain = runs.train_and_evaluate(make_config(
        pneumonia, os.path.join(work, "runs", "pretrain"), args, "from_scratch",
        {"epochs": args.pretrain_epochs}, seed=0), progress=False)
    pretrain_seconds = time.time() - started
    pneumonia_auc = pretrain.metrics["val"]["metrics"]["roc_auc"]["value"]
    print(f"(1) PneumoniaMNIST from_scratch: val AUC {pneumonia_auc:.3f}, "
          f"{pretrain_seconds:.0f} s", flush=True)

    results = {name: [] for name in RECIPE_ORDER}
    for seed in args.seeds:
        for name in RECIPE_ORDER:
            weights = None if name == "from_scratch" else pretrain.model_path
            run_dir = os.path.join(work, "runs", f"breast-{name}-seed{seed}")
            started = time.time()
            result = runs.train_and_evaluate(make_config(
                breast, run_dir, args, name, recipe_options(name, args.epochs, args.head_epochs),
                seed, weights=weights), progress=False)
            seconds = time.time() - started
            val = result.metrics["val"]["metrics"]
            results[name].append({
                "seed": seed, "auc": val["roc_auc"]["value"], "acc": val["accuracy"]["value"],
                "seconds": seconds, "trainable_params": result.metrics["stages"][-1]["trainable_params"],
                "history": result.history,
            })
            print(f"  seed {seed} {name:18s} val AUC {val['roc_auc']['value']:.3f} "
                  f"ACC {val['accuracy']['value']:.3f} {seconds:5.0f} s", flush=True)

    target = statistics.mean(r["auc"] for r in results["from_scratch"])
    rows = []
    for name in RECIPE_ORDER:
        runs = results[name]
        reached = [epochs_to_reach(r["history"], target) for r in runs]
        rows.append({
            "recipe": name,
            "init": "random" if name == "from_scratch" else "PneumoniaMNIST",
            "val AUC": mean_sd([r["auc"] for r in runs]),
            "val ACC": mean_sd([r["acc"] for r in runs]),
            "time (s)": mean_sd([r["seconds"] for r in runs], 1),
            f"epochs to AUC {target:.3f}": (
                f"{statistics.mean([e for e in reached if e]):.1f} ({sum(1 for e in reached if e)}/"
                f"{len(reached)} runs)" if any(reached) else f"never (0/{len(reached)})"),
            "trainable params": f"{runs[0]['trainable_params']:,}",
        })
    print(f"\nPneumoniaMNIST val AUC of the pretrained backbone: {pneumonia_auc:.3f} "
          f"({pretrain_seconds:.0f} s; MedMNIST v2 ResNet-18 (28) test AUC 0.944)")
    print(f"BreastMNIST val, {len(args.seeds)} seeds, mean ± sd, last-epoch weights "
          f"(MedMNIST v2 ResNet-18 (28) test AUC 0.901):\n")
    print(runs.format_table(rows, list(rows[0].keys())))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "pneumonia_val_auc": pneumonia_auc,
                       "pretrain_seconds": pretrain_seconds, "rows": rows,
                       "runs": {k: [{kk: vv for kk, vv in r.items() if kk != "history"}
                                    for r in v] for k, v in results.items()}},
                      handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
