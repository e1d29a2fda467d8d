"""The ordered, bounded process map the DICOM/NIfTI importers decode with."""

import os

import pytest

from kmedimg.data.sources.parallel import check_workers, ordered_map


def _square_or_die(value):
    if value == 3:
        os._exit(13)  # a decoder segfault, as far as the pool can tell
    return value * value


def test_order_bounded_read_ahead_and_crash_isolation():
    pulled = []

    def inputs():
        for value in range(10):
            pulled.append(value)
            yield value

    results = ordered_map(_square_or_die, inputs(), workers=2, prefetch=2,
                          on_crash=lambda value: -value)
    assert next(results) == 0
    assert len(pulled) <= 2 * 2 + 1  # never more than workers * prefetch in flight
    assert list(results) == [1, 4, -3, 16, 25, 36, 49, 64, 81]
    assert list(ordered_map(_square_or_die, [0, 1, 2], workers=1)) == [0, 1, 4]


def test_workers_argument():
    assert check_workers(None) >= 1 and check_workers(3) == 3
    for bad in (-1, 1.5, "2", True):
        with pytest.raises(ValueError, match="Received: workers="):
            check_workers(bad)
