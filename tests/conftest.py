"""Shared pytest setup: the slow marker, quiet TensorFlow, and the real data in ../shared."""

import os
import pathlib

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(
    os.environ.get("KMEDIMG_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")
)


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


def shared_data(relative):
    """Path of a file in ../shared/data; under CI a missing file fails, never skips."""
    path = SHARED_DATA / relative
    if not path.exists():
        message = f"real test data missing: {path} (set KMEDIMG_SHARED_DATA to ../shared/data)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return path
