"""Input pipeline throughput: `kmedimg.data.pipeline.load` vs two baselines.

Generates ~5,000 grey 128x128 uint8 images in a temporary directory, writes them
(a) as PNG files in class folders and (b) as kmedimg TFRecords (raw and PNG
encodings), then measures images/s of:

* `load(..., image_size=128, batch_size=64, training=True, channels=3)`: read,
  decode, resize to 128x128x3, shuffle, batch, prefetch;
* baseline (a) `keras.utils.image_dataset_from_directory` on the PNG files (same
  output: 128x128x3 float32 batches of 64);
* baseline (b) a bare `TFRecordDataset` read + `parse_example` with no decode (the
  I/O floor; it reads the same raw-encoded shards).

Each figure is the median of `--repeats` runs over `--batches` batches after one
warm-up batch. Usage:

    python benchmarks/input_pipeline.py [--images 5000] [--batches 200] [--repeats 3]
        [--output-size 128]
"""

import argparse
import os
import shutil
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kmedimg.data import schema  # noqa: E402
from kmedimg.data.pipeline import load  # noqa: E402
from kmedimg.data.sources.base import Item  # noqa: E402
from kmedimg.data.writer import write_dataset  # noqa: E402

IMAGE_SIDE = 128
BATCH = 64
CLASS_NAMES = ["normal", "abnormal"]


def make_image(index, side=IMAGE_SIDE):
    """A grey radiograph-like image: smooth anatomy-like field plus sensor noise."""
    rng = np.random.default_rng(index)
    axis = np.linspace(-1, 1, side, dtype=np.float32)
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    field = np.zeros_like(yy)
    for _ in range(5):
        fy, fx = rng.uniform(-3, 3, size=2)
        field += np.cos(np.pi * (fy * yy + fx * xx) + rng.uniform(0, 2 * np.pi))
    body = np.exp(-((yy / 0.9) ** 2 + (xx / 0.7) ** 2))
    image = 0.55 * body + 0.12 * field / np.sqrt(5) + rng.normal(0, 0.04, yy.shape)
    return np.clip(image * 255, 0, 255).astype(np.uint8)


class BenchmarkSource:
    """The generated images as a kmedimg Source (two classes by index parity)."""

    task = "binary"
    class_names = CLASS_NAMES

    def __init__(self, num_images):
        self.num_images = num_images

    def __iter__(self):
        for index in range(self.num_images):
            yield Item(f"{CLASS_NAMES[index % 2]}/{index:05d}.png", make_image(index),
                       (CLASS_NAMES[index % 2],))

    def describe(self):
        return {"format": "benchmark", "images": self.num_images}


def write_png_tree(root, num_images):
    from PIL import Image

    for name in CLASS_NAMES:
        os.makedirs(os.path.join(root, name), exist_ok=True)
    for index in range(num_images):
        path = os.path.join(root, CLASS_NAMES[index % 2], f"{index:05d}.png")
        Image.fromarray(make_image(index)).save(path, format="PNG", compress_level=6)


def images_per_second(make_dataset, batches):
    """Builds a fresh dataset, skips one warm-up batch, times `batches` batches.

    Returns:
        (images per wall-clock second, images per CPU-second of this process). The
        second figure is the cost per image, robust to other jobs on a shared machine.
    """
    iterator = iter(make_dataset())
    next(iterator)
    images = 0
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        batch = next(iterator)
        images += int(batch[0].shape[0])
    return (images / (time.perf_counter() - start),
            images / (time.process_time() - start_cpu))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output-size", type=int, default=IMAGE_SIDE,
                        help="side of the output images (resized when != 128)")
    parser.add_argument("--keep", help="write the data here and keep it")
    args = parser.parse_args(argv)

    import keras

    root = args.keep or tempfile.mkdtemp(prefix="kmedimg-bench-")
    size = args.output_size
    try:
        started = time.perf_counter()
        png_dir = os.path.join(root, "png")
        write_png_tree(png_dir, args.images)
        datasets = {}
        for encoding in ("raw", "png"):
            out_dir = os.path.join(root, f"records-{encoding}")
            datasets[encoding] = write_dataset(
                BenchmarkSource(args.images), out_dir, encoding=encoding, overwrite=True
            )
        print(f"data: {args.images} grey {IMAGE_SIDE}x{IMAGE_SIDE} uint8 images in {root} "
              f"(prepared in {time.perf_counter() - started:.0f} s); "
              f"{len(datasets['raw'].splits['train'].shards)} shards per encoding")
        print(f"measure: batch {BATCH}, {args.batches} batches after 1 warm-up, median of "
              f"{args.repeats}; output {size}x{size}x3 float32\n")

        def baseline_directory():
            dataset = keras.utils.image_dataset_from_directory(
                png_dir, labels="inferred", label_mode="binary", color_mode="rgb",
                batch_size=BATCH, image_size=(size, size), shuffle=True,
                seed=0, verbose=False,
            )
            return dataset.repeat()

        raw_files = [os.path.join(root, "records-raw", shard.path)
                     for shard in datasets["raw"].splits["train"].shards]
        spec = {key: value for key, value in schema.feature_spec().items()
                if key in (schema.IMAGE_KEY, schema.LABEL_KEY)}

        def baseline_floor():
            dataset = tf.data.TFRecordDataset(raw_files, num_parallel_reads=tf.data.AUTOTUNE)
            dataset = dataset.repeat().batch(BATCH, drop_remainder=True)
            dataset = dataset.map(lambda records: tf.io.parse_example(records, spec),
                                  num_parallel_calls=tf.data.AUTOTUNE)
            dataset = dataset.map(lambda parsed: (parsed[schema.IMAGE_KEY],
                                                  parsed[schema.LABEL_KEY].values))
            return dataset.prefetch(tf.data.AUTOTUNE)

        def kmedimg_load(encoding):
            return lambda: load(datasets[encoding], "train", image_size=size,
                                batch_size=BATCH, training=True, channels=3)

        candidates = [
            ("image_dataset_from_directory (a)", baseline_directory),
            ("TFRecord read+parse, no decode (b)", baseline_floor),
            ("kmedimg load, raw (default)", kmedimg_load("raw")),
            ("kmedimg load, png", kmedimg_load("png")),
        ]
        # Round-robin over the candidates in every repeat, so a change in background
        # load (a shared machine) hits all of them alike instead of one.
        rates = {name: [] for name, _ in candidates}
        cpu_rates = {name: [] for name, _ in candidates}
        for _ in range(args.repeats):
            for name, factory in candidates:
                wall, cpu = images_per_second(factory, args.batches)
                rates[name].append(wall)
                cpu_rates[name].append(cpu)
        results = {}
        print(f"{'':<38} {'img/s':>10}   {'img/CPU-s':>10}   runs (img/s)")
        for name, _ in candidates:
            results[name] = statistics.median(rates[name])
            runs = ", ".join(f"{rate:,.0f}" for rate in rates[name])
            print(f"{name:<38} {results[name]:>10,.0f}   "
                  f"{statistics.median(cpu_rates[name]):>10,.0f}   ({runs})")
        directory = "image_dataset_from_directory (a)"
        floor = "TFRecord read+parse, no decode (b)"

        def paired(name, baseline):
            # Median of the per-round ratios: both rates of a round share the load.
            return statistics.median(a / b for a, b in zip(rates[name], rates[baseline]))

        print("\nratios (median of per-round ratios; ratio of medians in brackets)")
        target = None
        for encoding in ("raw", "png"):
            name = f"kmedimg load, {encoding}{' (default)' if encoding == 'raw' else ''}"
            to_directory = paired(name, directory)
            target = to_directory if target is None else target
            print(f"{encoding:>4}: {to_directory:5.2f}x image_dataset_from_directory (a) "
                  f"[{results[name] / results[directory]:.2f}x], "
                  f"{paired(name, floor):5.2f}x the read+parse floor (b) "
                  f"[{results[name] / results[floor]:.2f}x]")
        print(f"\ntarget >= 3x (a) with the default encoding (raw): "
              f"{'MET' if target >= 3 else 'NOT MET'} ({target:.2f}x)")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
