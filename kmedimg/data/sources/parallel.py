"""An ordered, memory-bounded parallel map for importers that decode files in processes.

DICOM and NIfTI decoding is CPU-bound Python/C work, so the importers spread files
over worker processes. Results come back in input order (the dataset is the same for
any worker count) and at most `workers * prefetch` files are in flight, so memory
stays bounded however large the tree is and however slow the consumer (the writer).
"""

import collections
import multiprocessing
import os
import sys


def default_workers():
    """All CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def check_workers(workers):
    """`None`/0 -> all CPUs; a positive int is kept; anything else raises ValueError."""
    if workers in (None, 0):
        return default_workers()
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
        raise ValueError(
            "`workers` must be a positive int (1 = decode in this process) or None/0 "
            f"for all CPUs. Received: workers={workers!r}"
        )
    return workers


def _start_method():
    # fork is cheap (no re-import of TensorFlow in every worker) and our workers only
    # run numpy/pydicom/nibabel code; elsewhere spawn is the only safe choice.
    return "fork" if sys.platform.startswith("linux") else "spawn"


def ordered_map(function, inputs, workers=1, prefetch=2):
    """Yields `function(x)` for each x of `inputs`, in order, using `workers` processes.

    Args:
        function: a picklable module-level callable.
        inputs: an iterable of picklable arguments.
        workers: number of processes; 1 runs everything in this process.
            Defaults to `1`.
        prefetch: files in flight per worker. Defaults to `2`.
    """
    if workers <= 1:
        for value in inputs:
            yield function(value)
        return
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context(_start_method())
    pending = collections.deque()
    limit = workers * prefetch
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        try:
            for value in inputs:
                pending.append(pool.submit(function, value))
                if len(pending) >= limit:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
