"""The `kmedimg` command's top-level error handling, through the real entry point.

Expected failures (bad argument, input or file) are one line on stderr with exit status
2 and no traceback; `kmedimg --debug COMMAND` adds the traceback; an unexpected error
shows its traceback and asks to report it (exit status 70).
"""

import argparse
import os
import shutil
import subprocess

import numpy as np
import pytest

from _evaluation_run import make_run
from kmedimg import cli

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# TensorFlow's C++ start-up lines, which no setting silences completely.
_NOISE = ("WARNING: All log messages before absl", "I0000", "W0000", "E0000")


def _kmedimg(*argv):
    """Runs the installed `kmedimg` entry point on this checkout: (status, stderr lines)."""
    executable = shutil.which("kmedimg")
    assert executable, "the kmedimg console script is not installed (pip install -e .)"
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([executable, *argv], capture_output=True, text=True, env=env,
                          timeout=300)
    lines = [line for line in done.stderr.splitlines() if not line.startswith(_NOISE)]
    return done.returncode, lines


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_errors")
    run_dir, data_dir, _ = make_run(str(root), num_images=160, epochs=2)
    return run_dir, data_dir


def test_expected_error_is_one_line_and_debug_shows_the_traceback(tmp_path):
    missing = str(tmp_path / "no_run")
    status, lines = _kmedimg("export", missing)
    assert status == 2
    assert lines == [f"kmedimg export: error: No model at {missing}: pass a run "
                     "directory holding model.keras or a .keras file."]
    status, lines = _kmedimg("--debug", "export", missing)
    assert status == 2 and lines[0] == "Traceback (most recent call last):"
    assert any(line.startswith("FileNotFoundError: No model at") for line in lines)
    assert lines[-1].startswith("kmedimg export: error: No model at")


def test_file_system_error_names_the_path_and_partial_predict_exits_1(run, tmp_path):
    from PIL import Image

    run_dir, _ = run
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(good)
    np.save(tmp_path / "object.npy", np.array([None], dtype=object), allow_pickle=True)
    status, lines = _kmedimg("predict", run_dir, str(good), "--out", str(good / "rows.csv"))
    assert status == 2 and not any("Traceback" in line for line in lines), lines
    assert lines[-1].startswith(f"kmedimg predict: error: {good}/rows.csv")
    assert "Not a directory" in lines[-1]
    out = tmp_path / "rows.csv"
    status, lines = _kmedimg("predict", run_dir, str(good), str(tmp_path / "object.npy"),
                             "--out", str(out))
    assert status == 1 and out.read_text().count("\n") == 2
    start = lines.index("kmedimg predict: 1 of 2 input files could not be read and were not "
                        "predicted:")
    assert lines[start + 1].startswith(f"  {tmp_path / 'object.npy'}: holds an object array")


def test_unexpected_error_shows_the_traceback_and_asks_to_report_it(capsys):
    args = argparse.Namespace(command="predict", debug=False)
    try:
        {}["missing key"]
    except KeyError as error:
        status = cli._report(args, error)
    errors = capsys.readouterr().err
    assert status == cli.UNEXPECTED_EXIT == 70
    assert "Traceback (most recent call last)" in errors and "KeyError: 'missing key'" in errors
    assert errors.strip().splitlines()[-1].startswith(
        "kmedimg predict: unexpected error KeyError: this is a bug; please report it")
    expected = {"bad value": ValueError("bad value"),
                "[Errno 28] No space left on device: '/out/x'": OSError(
                    28, "No space left on device", "/out/x"),
                "out of memory (MemoryError); try a smaller --batch-size": MemoryError()}
    for message, exception in expected.items():
        try:
            raise exception
        except Exception as error:  # noqa: BLE001 - any expected type
            assert cli._report(args, error) == 2
        line = capsys.readouterr().err
        assert line.startswith(f"kmedimg predict: error: {message}") and line.count("\n") == 1
