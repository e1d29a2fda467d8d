"""`progress`: one progress-bar style (tqdm on stderr, with elapsed time and ETA).

Every loop that can take more than a few seconds (prediction over a split, TFLite
calibration and conversion checks, occlusion maps, tuning trials) wraps its iterable in
`progress(...)`, the same bar `kmedimg convert` draws. A bar appears only after
`DELAY_SECONDS`, so quick loops print nothing.

The environment variable `KMEDIMG_PROGRESS` decides where bars are drawn: unset, on an
interactive terminal only; `1`/`on`, always (from the first step, also into a log
file); `0`/`off`, never.
"""

import os
import sys

#: Seconds a loop runs before its bar appears (quick loops stay silent).
DELAY_SECONDS = 2.0
_ON = ("1", "on", "true", "yes")
_OFF = ("0", "off", "false", "no")


def progress_setting():
    """`(enabled or None for "on a terminal", delay in seconds)` from `KMEDIMG_PROGRESS`."""
    value = os.environ.get("KMEDIMG_PROGRESS", "").strip().lower()
    if value in _ON:
        return True, 0.0
    if value in _OFF:
        return False, DELAY_SECONDS
    if value:
        raise ValueError(
            f"KMEDIMG_PROGRESS must be one of {_ON + _OFF} or unset (bars on a terminal "
            f"only). Received: KMEDIMG_PROGRESS={value!r}"
        )
    return None, DELAY_SECONDS


def format_duration(seconds):
    """`seconds` as tqdm prints durations: `"05:07"` or `"1:02:03"`."""
    from tqdm import tqdm

    return tqdm.format_interval(max(0, int(round(seconds))))


def progress(iterable=None, total=None, desc=None, unit="it", enabled=None):
    """Wraps `iterable` in a tqdm bar on stderr with elapsed time and ETA.

    Args:
        iterable: what to iterate; `None` returns a bar to `update(n)` by hand.
            Defaults to `None`.
        total: the number of steps (for the ETA); `None` takes `len(iterable)` when it
            has one. Defaults to `None`.
        desc: the bar's label, e.g. `"predict test"`. Defaults to `None`.
        unit: the step's unit, e.g. `"batch"`, `"image"`, `"trial"`. Defaults to `"it"`.
        enabled: `False` draws nothing; `None` follows `KMEDIMG_PROGRESS`.
            Defaults to `None`.

    Returns:
        A `tqdm` object (iterable, and a context manager).
    """
    from tqdm.auto import tqdm

    setting, delay = progress_setting()
    if enabled is None:
        enabled = setting
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    # tqdm's `disable=None` means "only on a terminal".
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr,
                disable=None if enabled is None else not enabled, delay=delay,
                dynamic_ncols=True, leave=False)
