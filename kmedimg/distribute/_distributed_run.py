"""A few training steps of a kmedimg model under one strategy, as a separate process.

Used by the distribution tests and `benchmarks/strategy_overhead.py`: strategies
that need a fresh TensorFlow (logical CPU devices, a TF_CONFIG cluster) run here,
one process per worker, and report what they did as JSON.

    python -m kmedimg.distribute._distributed_run --mode multiworker --worker-index 0 \
        --ports 23451,23452 --data /tmp/phantoms --out /tmp/worker0.json

Modes: `single` (default strategy), `onedevice` (OneDeviceStrategy: the code path of
MirroredStrategy on one device), `mirrored` (MirroredStrategy over `--devices`
logical CPUs), `multiworker` (MultiWorkerMirroredStrategy over 127.0.0.1 ports).
The JSON holds the per-step training losses, steps/s after `--warmup` steps,
the replica count and a digest of the final weights; the weights themselves go to
`<out>.weights.npz`.
"""

import argparse
import hashlib
import json
import os
import sys
import time

# Importing Keras, TensorFlow and kmedimg does not initialise the runtime: logical
# devices and TF_CONFIG can still be set in `make_strategy`.
import keras
import numpy as np
import tensorflow as tf

from kmedimg.data.pipeline import load, read_manifest
from kmedimg.distribute.datasets import distribute_dataset, evaluation_dataset
from kmedimg.distribute.defaults import FIT_SHUFFLE
from kmedimg.distribute.platforms import platform_defaults
from kmedimg.distribute.strategy import get_strategy
from kmedimg.models import build_classifier

MODES = ("single", "onedevice", "mirrored", "multiworker")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--data", required=True, help="dataset directory (dataset.json)")
    parser.add_argument("--out", required=True, help="JSON result path")
    parser.add_argument("--split", default="train")
    parser.add_argument("--backbone", default="lenet5")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=0, help="steps excluded from steps/s")
    parser.add_argument("--learning-rate", type=float, default=0.05)
    parser.add_argument("--devices", type=int, default=2, help="logical CPUs for mirrored")
    parser.add_argument("--worker-index", type=int, default=0)
    parser.add_argument("--ports", default="", help="comma-separated ports, one per worker")
    parser.add_argument("--jit", action="store_true", help="jit_compile=True")
    parser.add_argument("--policy", default="float32")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def make_strategy(args):
    """Creates the strategy; must run before anything else initialises TensorFlow."""
    if args.mode == "multiworker":
        ports = [port for port in args.ports.split(",") if port]
        os.environ["TF_CONFIG"] = json.dumps(
            {
                "cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
                "task": {"type": "worker", "index": args.worker_index},
            }
        )
    if args.mode == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(args.devices)]
        )
        return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(args.devices)])

    if args.mode == "onedevice":
        # Same Keras code path as MirroredStrategy (a strategy is set, so fit builds
        # from a first batch and restarts the iterator), on one device.
        return tf.distribute.OneDeviceStrategy("/cpu:0")
    return get_strategy("multiworker" if args.mode == "multiworker" else "cpu")


def run(args):
    strategy = make_strategy(args)
    keras.utils.set_random_seed(args.seed)
    keras.mixed_precision.set_global_policy(args.policy)
    manifest = read_manifest(args.data)
    defaults = platform_defaults(strategy, jit_compile=args.jit)

    def dataset_fn(input_context):
        return load(
            manifest,
            args.split,
            image_size=args.image_size,
            batch_size=args.global_batch,
            training=True,
            deterministic=True,
            seed=args.seed,
            input_context=input_context,
        )

    dataset = distribute_dataset(strategy, dataset_fn)
    with strategy.scope():
        model = build_classifier(
            args.backbone,
            num_classes=1,
            input_shape=(args.image_size, args.image_size, manifest.channels),
            weights=None,
            dropout=0.0,
            task="binary",
        )
        model.compile(
            optimizer=keras.optimizers.SGD(args.learning_rate),
            loss="binary_crossentropy",
            steps_per_execution=defaults.steps_per_execution,
            jit_compile=defaults.jit_compile,
        )
    initial_digest = _digest(model.get_weights())
    steps = StepLog()
    model.fit(
        dataset,
        epochs=1,
        steps_per_epoch=args.steps,
        verbose=0,
        shuffle=FIT_SHUFFLE,
        callbacks=[steps],
    )
    val_loss = None
    if manifest.splits.get("val") is not None and manifest.splits["val"].count:
        # Keras distributes this one itself: DATA sharding keeps it working with
        # fewer validation files than workers.
        val = evaluation_dataset(
            load(manifest, "val", image_size=args.image_size, batch_size=args.global_batch,
                 training=False, deterministic=True)
        )
        val_loss = float(model.evaluate(val, verbose=0, return_dict=True)["loss"])
    weights = [np.asarray(weight) for weight in model.get_weights()]
    np.savez(args.out + ".weights.npz", *weights)
    timed = steps.times[args.warmup :]
    steps_per_second = (len(timed) - 1) / (timed[-1] - timed[0]) if len(timed) > 1 else None
    result = {
        "mode": args.mode,
        "worker_index": args.worker_index,
        "replicas": int(strategy.num_replicas_in_sync),
        "losses": steps.losses,
        "val_loss": val_loss,
        "strategy_cached": make_strategy_again_is_same(args, strategy),
        "steps_per_second": steps_per_second,
        "step_seconds": np.diff(steps.times).round(4).tolist(),
        # Process CPU time (all threads) per step: less sensitive to other load.
        "step_cpu_seconds": np.diff(steps.cpu_times).round(4).tolist(),
        "initial_weights_sha256": initial_digest,
        "weights_sha256": _digest(weights),
        "jit_compile": defaults.jit_compile,
        "policy": args.policy,
    }
    with open(args.out, "w") as handle:
        json.dump(result, handle)
    return result


def make_strategy_again_is_same(args, strategy):
    """Whether asking `get_strategy` again returns the same strategy (None: not asked)."""
    if args.mode != "multiworker":
        return None
    return get_strategy("multiworker") is strategy


def _digest(weights):
    return hashlib.sha256(b"".join(np.asarray(weight).tobytes() for weight in weights)).hexdigest()


class StepLog(keras.callbacks.Callback):
    """Records each step's logged loss and the time it finished."""

    def __init__(self):
        super().__init__()
        self.losses, self.times, self.cpu_times = [], [], []

    def on_train_batch_end(self, batch, logs=None):
        # float() waits for the step, so the time taken next is when it finished.
        self.losses.append(float(logs["loss"]))
        self.times.append(time.perf_counter())
        self.cpu_times.append(time.process_time())


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
