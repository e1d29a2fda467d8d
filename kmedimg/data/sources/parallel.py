"""An ordered, memory-bounded parallel map for importers that decode files in processes.

DICOM and NIfTI decoding is CPU-bound Python/C work, so the importers spread files
over worker processes. Results come back in input order (the dataset is the same for
any worker count) and at most `workers * prefetch` files are in flight, so memory
stays bounded however large the tree is and however slow the consumer (the writer).

Workers die with their parent: each polls its parent process id and exits when the
parent is gone (a SIGKILLed conversion must not leave decoders holding hundreds of
MB behind). `PR_SET_PDEATHSIG` is not used: it fires when the forking *thread*
exits, which need not be the parent's death.
"""

import collections
import multiprocessing
import os
import sys
import threading
import time

#: Seconds between a worker's checks that its parent is alive.
PARENT_POLL_SECONDS = 0.2


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


def _exit_with_parent(parent_pid):
    """Worker initializer: a daemon thread ends this process once `parent_pid` is gone."""

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)  # orphaned: no one will read our results

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _pool(workers, context):
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=workers, mp_context=context,
                               initializer=_exit_with_parent, initargs=(os.getpid(),))


def _isolated(function, value, context, on_crash):
    """Runs `function(value)` alone in a fresh process; `on_crash(value)` if it dies."""
    from concurrent.futures.process import BrokenProcessPool

    with _pool(1, context) as pool:
        try:
            return pool.submit(function, value).result()
        except BrokenProcessPool:
            if on_crash is None:
                raise
            return on_crash(value)


def ordered_map(function, inputs, workers=1, prefetch=2, on_crash=None):
    """Yields `function(x)` for each x of `inputs`, in order, using `workers` processes.

    A worker that dies (a decoder crashing on a malformed file) breaks the pool; the
    pool is restarted, the input at the head is re-run alone to find out whether it is
    the culprit (then `on_crash(x)` stands for its result), and the other pending
    inputs are resubmitted, so one bad file never stops a conversion.

    Args:
        function: a picklable module-level callable.
        inputs: an iterable of picklable arguments.
        workers: number of processes; 1 runs everything in this process (where a
            crash cannot be contained). Defaults to `1`.
        prefetch: inputs in flight per worker. Defaults to `2`.
        on_crash: callable(x) giving the result for an input whose worker died; None
            re-raises `BrokenProcessPool`. Defaults to `None`.
    """
    if workers <= 1:
        for value in inputs:
            yield function(value)
        return
    from concurrent.futures.process import BrokenProcessPool

    context = multiprocessing.get_context(_start_method())
    inputs = iter(inputs)
    pending = collections.deque()  # (value, future)
    limit = workers * prefetch
    pool = _pool(workers, context)
    exhausted = False
    try:
        while True:
            while not exhausted and len(pending) < limit:
                try:
                    value = next(inputs)
                except StopIteration:
                    exhausted = True
                    break
                pending.append((value, pool.submit(function, value)))
            if not pending:
                return
            value, future = pending.popleft()
            try:
                result = future.result()
            except BrokenProcessPool:
                pool.shutdown(wait=True, cancel_futures=True)
                result = _isolated(function, value, context, on_crash)
                pool = _pool(workers, context)
                pending = collections.deque(
                    (waiting, pool.submit(function, waiting)) for waiting, _ in pending
                )
            yield result
    finally:
        for _, future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
