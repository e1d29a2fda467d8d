"""Importer throughput and memory, against bare baselines measured in the same run.

1. FolderSource on the brain MRI tree (../shared/data/images/brain_tumor_mri_yes_no):
   items/s with `channels=1` and with `channels="auto"` (one extra reduced-size decoding
   pass), against a bare Pillow loop (`Image.open(path).convert("L")`).
2. NpzSource on a 20,000 x 64 x 64 uint8 MedMNIST-style archive: items/s and peak
   Python memory (tracemalloc) against `np.load` + iterating the loaded array.
3. PhantomSource: phantoms/s at 64 and 128 pixels.

Every figure is the median of 3 runs; phantoms also per CPU-second (robust on a busy
machine). Run: `python benchmarks/importers.py`.
"""

import os
import statistics
import tempfile
import time
import tracemalloc

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BRAIN = os.environ.get(
    "KMEDIMG_BRAIN_TREE",
    os.path.join(REPO, "..", "shared", "data", "images", "brain_tumor_mri_yes_no"),
)
RUNS = 3


def median_time(function):
    times = []
    result = None
    for _ in range(RUNS):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def count_items(source):
    return sum(1 for _ in source)


def bench_folder():
    from PIL import Image

    from kmedimg.data.sources import FolderSource

    paths = [os.path.join(d, f) for d, _, files in os.walk(BRAIN) for f in sorted(files)]

    def bare():
        for path in paths:
            with Image.open(path) as image:
                np.asarray(image.convert("L"))
        return len(paths)

    bare_s, n = median_time(bare)
    explicit_s, _ = median_time(lambda: count_items(FolderSource(BRAIN, channels=1)))
    auto_s, _ = median_time(lambda: count_items(FolderSource(BRAIN)))
    print(f"folder ({n} brain MRI files, mixed sizes up to 1920x1080):")
    print(f"  bare Pillow open+convert('L')   {n / bare_s:8.0f} img/s")
    print(f"  FolderSource(channels=1)        {n / explicit_s:8.0f} img/s  "
          f"ratio vs bare {bare_s / explicit_s:.2f}x")
    print(f"  FolderSource(channels='auto')   {n / auto_s:8.0f} img/s  "
          f"ratio vs bare {bare_s / auto_s:.2f}x (auto scan costs "
          f"{auto_s / explicit_s - 1:+.0%})")


def bench_npz():
    from kmedimg.data.sources import NpzSource

    count = 20000
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "big.npz")
        rng = np.random.default_rng(0)
        np.savez(
            path,
            train_images=rng.integers(0, 256, (count, 64, 64), dtype=np.uint8),
            train_labels=rng.integers(0, 2, (count, 1), dtype=np.uint8),
        )

        def whole():
            with np.load(path) as data:
                images = data["train_images"]
                labels = data["train_labels"]
            return sum(1 for image, label in zip(images, labels))

        def streamed():
            return count_items(NpzSource(path))

        def peak(function):
            tracemalloc.start()
            function()
            _, top = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            return top / 2**20

        whole_s, _ = median_time(whole)
        stream_s, _ = median_time(streamed)
        whole_mb, stream_mb = peak(whole), peak(streamed)
    print(f"npz ({count} x 64 x 64 uint8 = {count * 64 * 64 / 2**20:.0f} MB of pixels):")
    print(f"  np.load + iterate               {count / whole_s:8.0f} img/s  "
          f"peak {whole_mb:7.1f} MB")
    print(f"  NpzSource (streamed)            {count / stream_s:8.0f} img/s  "
          f"peak {stream_mb:7.1f} MB  (speed {whole_s / stream_s:.2f}x, memory "
          f"{stream_mb / whole_mb:.2f}x of np.load)")


def bench_phantoms():
    from kmedimg.data.synthetic import PhantomSource

    print("synthetic phantoms:")
    for size, count in ((64, 500), (128, 200)):
        seconds, _ = median_time(lambda: count_items(PhantomSource(count, image_size=size)))
        cpu = []
        for _ in range(RUNS):
            start = time.process_time()
            count_items(PhantomSource(count, image_size=size))
            cpu.append(time.process_time() - start)
        print(f"  PhantomSource({size}px)            {count / seconds:8.0f} img/s  "
              f"{count / statistics.median(cpu):8.0f} img/CPU-s")


if __name__ == "__main__":
    if os.path.isdir(BRAIN):
        bench_folder()
    else:
        print(f"folder: skipped, {BRAIN} not found")
    bench_npz()
    bench_phantoms()
