"""Grey input with 3-channel weights: folded first convolution vs channel replication.

Prints, per backbone, the median forward time (batch 32, 128x128 grey, float32,
CPU) of the classifier built with grey_weights="replicate" (GreyToRGB in front of
the RGB network: the baseline) and with "fold" (one-channel first convolution),
and the ratio replicate/fold. Weights come from a file of random 3-channel
weights, which takes the same code path as ImageNet weights without a download.

    python benchmarks/grey_fold.py [--backbones mobilenetv2 resnet50] [--runs 7]
"""

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kmedimg.models import build_classifier, get_backbone  # noqa: E402


def _median_ms(model, images, runs):
    forward = tf.function(lambda x: model(x, training=False))
    forward(images)  # trace
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        forward(images).numpy()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["mobilenetv2", "resnet50", "densenet121"])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    images = tf.constant(
        np.random.default_rng(0).integers(0, 256, (args.batch, args.size, args.size, 1)), tf.float32
    )
    print(f"batch {args.batch}, {args.size}x{args.size} grey, best of 3 alternating medians of {args.runs} runs")
    print(f"{'backbone':14s} {'replicate ms':>13s} {'fold ms':>9s} {'replicate/fold':>15s} {'max |diff|':>11s}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.backbones:
            source = get_backbone(name).build((args.size, args.size, 3))
            path = os.path.join(tmp, f"{name}.weights.h5")
            source.save_weights(path)
            replicate = build_classifier(name, 1, (args.size, args.size, 1), weights=path, grey_weights="replicate")
            fold = build_classifier(name, 1, (args.size, args.size, 1), weights=path, grey_weights="fold")
            fold.get_layer("predictions").set_weights(replicate.get_layer("predictions").get_weights())
            diff = float(np.max(np.abs(fold.predict(images, verbose=0) - replicate.predict(images, verbose=0))))
            # Alternate the two so background load hits both alike.
            replicate_times, fold_times = [], []
            for _ in range(3):
                fold_times.append(_median_ms(fold, images, args.runs))
                replicate_times.append(_median_ms(replicate, images, args.runs))
            replicate_ms, fold_ms = min(replicate_times), min(fold_times)
            print(f"{name:14s} {replicate_ms:13.1f} {fold_ms:9.1f} {replicate_ms / fold_ms:15.3f} {diff:11.2e}")


if __name__ == "__main__":
    main()
