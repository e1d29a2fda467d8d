"""Resident memory of the search process over 20 tuning trials.

Each trial of `kmedimg tune` is a full `kmedimg.training.run` (model, tf.data pipeline,
two compiled stages, evaluation). Three modes, each in its own fresh process, on a
20-trial random search on synthetic phantoms (LeNet-5, 32x32, two_stage 1+1 epochs):

- `isolated` (the default, `tune.isolate_trials: true`): every trial trains in a
  child process; the search process measures itself.
- `inprocess` (`isolate_trials: false`): trials train in the search process, which
  calls `keras.backend.clear_session()` and `gc.collect()` after each.
- `plain` (baseline): the same trial configurations run back to back with
  `training.run` in one process, no release at all.

Prints VmRSS of the search process after trials 1, 5, 10, 20, the growth from trial 5
to 20 and the least-squares slope over trials 5..20 (MB per trial).

    python benchmarks/tuning_memory.py [--trials 20]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss_mb():
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS in /proc/self/status")


def recipe(data, work):
    return {
        "data": {"path": data, "batch_size": 16},
        "model": {"backbone": "lenet5_modern"},
        "recipe": {"name": "two_stage", "head_epochs": 1, "finetune_epochs": 1},
        "training": {"tensorboard": False, "verbose": 0},
        "evaluation": {"bootstrap": 0},
        "tune": {"tuner": "random", "seed": 0, "directory": os.path.join(work, "tune"),
                 "project_name": "memory",
                 "search_space": {"hidden_units": [0, 16, 32, 64]}},
    }


def run_mode(mode, data, work, trials):
    sys.path.insert(0, REPO)
    from kmedimg.config import config_from_dict

    raw = recipe(data, work)
    raw["tune"]["isolate_trials"] = mode == "isolated"
    config = config_from_dict(raw, "benchmark")
    readings = []
    if mode in ("isolated", "inprocess"):
        from kmedimg.tuning import run_search, settings_for, tuners

        release = tuners.release_memory

        def release_and_measure():
            release()
            readings.append(rss_mb())

        tuners.release_memory = release_and_measure
        run_search(config, settings=settings_for(config, max_trials=trials),
                   stream=open(os.devnull, "w"))
        readings = readings[:trials]  # on_search_end releases once more
    else:
        import keras_tuner

        from kmedimg import training
        from kmedimg.tuning import ClassifierHyperModel

        hypermodel = ClassifierHyperModel(config)
        space = keras_tuner.HyperParameters()
        hypermodel.declare_hyperparameters(space)
        for index in range(trials):
            hp = space.copy()
            hp.values = {p.name: p.random_sample(index) for p in space.space}
            trial = hypermodel.trial_config(hypermodel.values(hp))
            trial.training.run_dir = os.path.join(work, "plain", f"run{index}")
            training.run(trial, progress=False)
            readings.append(rss_mb())
    print(json.dumps(readings))


def slope(values):
    xs = list(range(len(values)))
    mean_x, mean_y = sum(xs) / len(xs), sum(values) / len(values)
    numerator = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, values))
    return numerator / sum((x - mean_x) ** 2 for x in xs)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--mode", choices=["isolated", "inprocess", "plain"], default=None)
    parser.add_argument("--data", default=None)
    parser.add_argument("--work", default=None)
    args = parser.parse_args(argv)
    if args.mode:
        return run_mode(args.mode, args.data, args.work, args.trials)

    sys.path.insert(0, REPO)
    from kmedimg.data.synthetic import make_phantom_dataset

    work = args.work or tempfile.mkdtemp(prefix="kmedimg-tuning-memory-")
    data = os.path.join(work, "phantoms")
    if not os.path.exists(os.path.join(data, "dataset.json")):
        make_phantom_dataset(data, num_images=128, image_size=32, seed=0,
                             val_fraction=0.25, test_fraction=0.0)
    results = {}
    for mode in ("isolated", "inprocess", "plain"):
        output = subprocess.run(
            [sys.executable, __file__, "--mode", mode, "--data", data,
             "--work", os.path.join(work, mode), "--trials", str(args.trials)],
            check=True, capture_output=True, text=True,
            env=dict(os.environ, PYTHONPATH=REPO),
        ).stdout
        results[mode] = json.loads(output.strip().splitlines()[-1])

    print(f"\n== resident memory over {args.trials} trials (MB, VmRSS after each trial) ==")
    print(f"{'mode':<36}{'t1':>8}{'t5':>8}{'t10':>8}{'t20':>8}{'5->20':>9}{'MB/trial':>10}")
    slopes = {}
    for mode, label in (("isolated", "kmedimg tune, trials in children"),
                        ("inprocess", "kmedimg tune, in-process + release"),
                        ("plain", "same runs, no release (baseline)")):
        values = results[mode]
        picks = [values[i - 1] for i in (1, 5, 10, args.trials)]
        slopes[mode] = slope(values[4:])
        print(f"{label:<36}" + "".join(f"{v:>8.0f}" for v in picks)
              + f"{values[-1] - values[4]:>9.1f}{slopes[mode]:>10.2f}")
    if slopes["plain"] > 0:
        for mode in ("isolated", "inprocess"):
            print(f"slope ratio ({mode} / baseline): {slopes[mode] / slopes['plain']:.2f}")
    print(f"work directory: {work}")


if __name__ == "__main__":
    main()
