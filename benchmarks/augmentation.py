"""MedicalAugmentation vs the equivalent chain of Keras' built-in random layers.

Prints the median time per batch (32 x 128x128x1, values in [0, 1], CPU) of
`kmedimg.layers.MedicalAugmentation` and of the baseline Keras chain RandomFlip +
RandomRotation + RandomZoom + RandomTranslation + RandomContrast +
RandomBrightness + GaussianNoise with the same ranges, each inside a
`tf.function`, with and without `jit_compile=True`, in float32 and under the
`mixed_bfloat16` policy; a failure to run is printed as the error type.

    python benchmarks/augmentation.py [--runs 20]
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kmedimg.layers import MedicalAugmentation  # noqa: E402


def keras_chain():
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal"),
            keras.layers.RandomRotation(10 / 360, fill_mode="constant"),
            keras.layers.RandomZoom(0.1, fill_mode="constant"),
            keras.layers.RandomTranslation(0.05, 0.05, fill_mode="constant"),
            keras.layers.RandomContrast(0.1, value_range=(0, 1)),
            keras.layers.RandomBrightness(0.05, value_range=(0, 1)),
            keras.layers.GaussianNoise(0.01),
        ]
    )


def measure(make_layer, images, jit, policy, runs):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        layer = make_layer()
        step = tf.function(lambda x: layer(x, training=True), jit_compile=jit)
        step(images).numpy()
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            step(images).numpy()
            times.append((time.perf_counter() - start) * 1000)
        return f"{statistics.median(times):8.1f}"
    except Exception as error:  # the point is to report which setups fail
        return f"{type(error).__name__:>8s}"
    finally:
        keras.config.set_dtype_policy(previous)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    images = tf.constant(np.random.default_rng(0).uniform(0, 1, (args.batch, args.size, args.size, 1)), tf.float32)
    print(f"ms per batch of {args.batch} x {args.size}x{args.size}x1, median of {args.runs} runs")
    print(f"{'setup':28s} {'keras chain':>11s} {'kmedimg':>8s}")
    for policy in ("float32", "mixed_bfloat16"):
        for jit in (False, True):
            baseline = measure(keras_chain, images, jit, policy, args.runs)
            ours = measure(lambda: MedicalAugmentation(), images, jit, policy, args.runs)
            print(f"{policy + (' + XLA' if jit else ''):28s} {baseline:>11s} {ours:>8s}")


if __name__ == "__main__":
    main()
