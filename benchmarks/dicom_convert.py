"""DICOM conversion throughput: one process vs the DicomSource process pool.

Copies the files of the `pydicom-data` package (68 files: CT, MR, CR, US, secondary
capture; uncompressed, JPEG baseline/lossless, JPEG-LS, JPEG 2000, RLE, deflate)
round-robin into two class folders until there are `--files` files (~500), then
measures, for `workers=1` (decoding in the converting process) and `workers=N`
(the ordered, bounded process pool inside `DicomSource`):

* decode: iterating the source alone (read + decode + pixel transforms + privacy);
* convert: `write_dataset(source, out, channels=3)` end to end with
  `DicomSource(dtype="uint16")`, so every decodable image of the mixed grey/colour,
  8/16-bit folder is written (two passes over the source, sharded raw TFRecords,
  manifest, rejected.csv), i.e. `kmedimg convert --dtype uint16 --channels 3`.

Figures are files/s and input MB/s (bytes of the DICOM files read), median of
`--runs` runs, the CPU seconds of the converting process and of the pool workers,
and the ratio pool / single process, both measured (wall time) and by CPU critical
path (max(main CPU, worker CPU / workers, total CPU / cores): a lower bound of the
wall time on an otherwise idle machine, assuming perfect overlap). The 1-minute load
average is printed with each figure: when other sessions saturate the CPUs, Linux's
autogroup scheduling (`/proc/sys/kernel/sched_autogroup_enabled`) gives this whole
session one share however many processes it runs, so the measured wall-clock ratio
says little and the critical-path ratio is the figure to read. Usage:

    python benchmarks/dicom_convert.py [--files 500] [--runs 3] [--workers 2]
"""

import argparse
import os
import resource
import shutil
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from kmedimg.data.sources.dicom import DicomSource  # noqa: E402
from kmedimg.data.sources.parallel import default_workers  # noqa: E402
from kmedimg.data.writer import write_dataset  # noqa: E402


def pydicom_data_files():
    from pydicom.data import get_testdata_files

    files = sorted(f for f in get_testdata_files() if os.path.isfile(f)
                   and f"{os.sep}data_store{os.sep}" in f)
    if not files:
        raise SystemExit("pydicom-data is not installed: pip install 'kmedimg[test]'")
    return files


def build_tree(root, count):
    """`count` copies of the pydicom-data files, alternating between two class folders."""
    files = pydicom_data_files()
    total = 0
    for index in range(count):
        path = files[index % len(files)]
        folder = os.path.join(root, "class_a" if index % 2 == 0 else "class_b")
        os.makedirs(folder, exist_ok=True)
        target = os.path.join(folder, f"{index:04d}_{os.path.basename(path)}")
        shutil.copyfile(path, target)
        total += os.path.getsize(target)
    return len(files), total


def _cpu_seconds():
    """(this process, reaped pool workers) CPU seconds so far."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def timed(function, runs):
    """Median wall time, all wall times, median (main, workers) CPU seconds, result."""
    times, main_cpu, worker_cpu = [], [], []
    result = None
    for _ in range(runs):
        start, (main_start, worker_start) = time.perf_counter(), _cpu_seconds()
        result = function()
        times.append(time.perf_counter() - start)
        main_end, worker_end = _cpu_seconds()
        main_cpu.append(main_end - main_start)
        worker_cpu.append(worker_end - worker_start)
    cpu = (statistics.median(main_cpu), statistics.median(worker_cpu))
    return statistics.median(times), times, cpu, result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--frames", default="first", choices=("first", "middle", "all"))
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="kmedimg_dicom_bench_")
    try:
        root = os.path.join(work, "dicom")
        distinct, total_bytes = build_tree(root, args.files)
        megabytes = total_bytes / 1e6
        print(f"{args.files} files ({distinct} distinct pydicom-data files), {megabytes:.0f} MB, "
              f"frames={args.frames}, {os.cpu_count()} CPUs, median of {args.runs} runs")

        def make_source(workers):
            # dtype="uint16" (+ channels=3 below) keeps every decodable image, so the
            # mixed grey/colour, 8/16-bit folder is converted whole.
            return DicomSource(root, salt="benchmark", frames=args.frames, dtype="uint16",
                               workers=workers)

        def decode(workers):
            items = 0
            for entry in make_source(workers):
                items += hasattr(entry, "pixels")
            return items

        def convert(workers):
            out = os.path.join(work, f"out_{workers}")
            manifest = write_dataset(make_source(workers), out, channels=3, overwrite=True)
            written = manifest.counts["written"]
            shutil.rmtree(out, ignore_errors=True)
            return written

        results, bounds = {}, {}
        cores = default_workers()
        for stage, function in (("decode", decode), ("convert", convert)):
            for workers in (1, args.workers):
                median, times, (main_cpu, worker_cpu), produced = timed(
                    lambda: function(workers), args.runs)
                results[(stage, workers)] = median
                # CPU critical path: a lower bound of the wall time on an otherwise idle
                # machine (main process and pool fully overlapped on `cores` CPUs).
                bounds[(stage, workers)] = max(main_cpu, worker_cpu / workers,
                                               (main_cpu + worker_cpu) / cores)
                print(f"{stage:8s} workers={workers}: {median:7.2f} s  "
                      f"{args.files / median:7.1f} files/s  {megabytes / median:7.1f} MB/s  "
                      f"cpu main {main_cpu:5.1f} s + workers {worker_cpu:5.1f} s  "
                      f"({produced} images; runs {', '.join(f'{t:.1f}' for t in times)} s; "
                      f"load average {os.getloadavg()[0]:.1f})")
        for stage in ("decode", "convert"):
            ratio = results[(stage, 1)] / results[(stage, args.workers)]
            bound = bounds[(stage, 1)] / bounds[(stage, args.workers)]
            print(f"{stage}: workers={args.workers} vs 1 process: {ratio:.2f}x measured wall "
                  f"time; {bound:.2f}x by CPU critical path "
                  f"({args.files / bounds[(stage, args.workers)]:.0f} vs "
                  f"{args.files / bounds[(stage, 1)]:.0f} files/s at best on an idle machine)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
