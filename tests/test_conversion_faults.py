"""Faults during `kmedimg convert`: failed overwrites, kills, concurrent runs, disk full.

Real files and real processes. The CLI runs in a child process where a test kills or
stops it; the conversion that meets it runs in the test process (another process).
A full disk is RLIMIT_FSIZE: every write past the limit fails with EFBIG, a real
write error through tf.io.gfile, as ENOSPC does on a full disk.
"""

import contextlib
import glob
import hashlib
import os
import pathlib
import resource
import signal
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kmedimg.cli import main
from kmedimg.data import schema
from kmedimg.data.paths import (LOCK_NAME, TEMP_PREFIX, ConversionError, OutputLock,
                                check_not_inside)
from kmedimg.data.pipeline import verify
from kmedimg.data.writer import MAX_IMAGE_SIZE, write_dataset
from helpers import ListSource, binary_items

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "import sys; from kmedimg.cli import main; sys.exit(main())"]


def cli_env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_ENABLE_ONEDNN_OPTS="0")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    return env


def start_cli(*args):
    """`kmedimg convert ARGS` in a child process (stdout/stderr piped)."""
    return subprocess.Popen(CLI + ["convert", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=cli_env())


@contextlib.contextmanager
def file_size_limit(limit):
    """Writes past `limit` bytes fail (EFBIG) in this process: a full disk."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def finish(process, timeout=240):
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def error_line(err):
    """The CLI's one-line error; fails on a traceback or a second error line."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("kmedimg convert: error:")]
    assert len(lines) == 1, err
    assert err.rstrip().endswith(lines[0]), err
    return lines[0]


def snapshot(directory):
    """name -> sha256 of every file in `directory` (names starting with '.' included)."""
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(pathlib.Path(directory).iterdir()) if path.is_file()}


def leftovers(directory):
    return sorted(glob.glob(os.path.join(directory, TEMP_PREFIX + "*"))) + sorted(
        glob.glob(os.path.join(directory, LOCK_NAME)))


def wait_for(predicate, process, timeout=180):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


@pytest.fixture
def old_dataset(tmp_path):
    """A small converted dataset in tmp_path/out and the hashes of its files."""
    out = tmp_path / "out"
    assert main(["convert", "synthetic:8", str(out), "--image-size", "16",
                 "--no-progress"]) == 0
    return out, snapshot(out)


def test_overwrite_from_a_source_without_valid_images_keeps_the_old_dataset(
        old_dataset, tmp_path, capsys):
    out, before = old_dataset
    bad = tmp_path / "bad"
    for name in ("a", "b"):
        (bad / name).mkdir(parents=True)
        (bad / name / "x.png").write_bytes(b"not an image")
    capsys.readouterr()
    assert main(["convert", str(bad), str(out), "--overwrite", "--no-progress"]) == 2
    assert "no valid image" in capsys.readouterr().err
    assert snapshot(out) == before and verify(out).counts["written"] == 8


def test_disk_full_during_overwrite_keeps_the_old_dataset_and_says_so(old_dataset, capsys):
    out, before = old_dataset
    capsys.readouterr()
    with file_size_limit(64 * 1024):
        code = main(["convert", "synthetic:40", str(out), "--image-size", "64", "--shards",
                     "1", "--overwrite", "--no-progress"])
    line = error_line(capsys.readouterr().err)
    assert code == 2
    assert f"Could not write the dataset in {out}" in line and "File too large" in line
    assert "a previous dataset in the directory is kept" in line
    assert snapshot(out) == before and verify(out).counts["written"] == 8
    assert leftovers(out) == []


def test_disk_full_into_a_new_directory_leaves_no_directory(tmp_path, capsys):
    out = tmp_path / "new" / "out"
    with file_size_limit(64 * 1024):
        code = main(["convert", "synthetic:40", str(out), "--image-size", "64", "--shards",
                     "1", "--no-progress"])
    assert code == 2 and "File too large" in error_line(capsys.readouterr().err)
    assert not out.exists()


def test_failure_in_the_second_pass_keeps_the_old_dataset(tmp_path):
    write_dataset(ListSource(binary_items(10)), tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match="overwrite=True"):
        write_dataset(ListSource(binary_items(10)), tmp_path)
    with pytest.raises(RuntimeError, match="simulated failure"):
        write_dataset(ListSource(binary_items(20), fail_at=15), tmp_path, overwrite=True)
    assert snapshot(tmp_path) == before and verify(tmp_path).counts["written"] == 10


def test_second_conversion_into_a_busy_directory_fails_and_leaves_the_first_alone(
        tmp_path, capsys):
    out = tmp_path / "out"
    first = start_cli("synthetic:100", out, "--image-size", "48", "--no-progress")
    try:
        wait_for(lambda: glob.glob(str(out / (TEMP_PREFIX + "*"))), first)
        first.send_signal(signal.SIGSTOP)  # the first is mid-write: keep it there
        temp_dirs = glob.glob(str(out / (TEMP_PREFIX + "*")))
        written = sorted(os.listdir(temp_dirs[0]))
        capsys.readouterr()
        code = main(["convert", "synthetic:4", str(out), "--overwrite", "--no-progress"])
        line = error_line(capsys.readouterr().err)
        assert code == 2
        assert str(out / LOCK_NAME) in line and f"pid {first.pid} " in line
        assert "being written by another conversion" in line
        assert glob.glob(str(out / (TEMP_PREFIX + "*"))) == temp_dirs
        assert sorted(os.listdir(temp_dirs[0])) == written
    finally:
        first.send_signal(signal.SIGCONT)
    code, _, err = finish(first)
    assert code == 0, err
    assert verify(out).counts["written"] == 100 and leftovers(out) == []


def test_killed_conversion_leftovers_are_removed_by_the_next_one(tmp_path, capsys):
    out = tmp_path / "out"
    killed = start_cli("synthetic:100", out, "--image-size", "48", "--no-progress")
    wait_for(lambda: glob.glob(str(out / (TEMP_PREFIX + "*"))), killed)
    killed.kill()
    killed.communicate()
    stale = leftovers(out)
    assert len(stale) == 2 and not (out / schema.MANIFEST_NAME).exists()
    # Not "non-empty": the lock and temporary directory of a dead conversion are ours.
    assert main(["convert", "synthetic:6", str(out), "--image-size", "16",
                 "--no-progress"]) == 0
    assert leftovers(out) == [] and verify(out).counts["written"] == 6


def test_lock_on_a_remote_directory_names_the_holder_and_the_fix():
    import uuid

    import tensorflow as tf

    out = f"ram://kmedimg-lock-{uuid.uuid4().hex}/out"
    tf.io.gfile.makedirs(out)
    with OutputLock(out):
        with pytest.raises(ConversionError, match=f"held by pid {os.getpid()} on") as error:
            write_dataset(ListSource(binary_items(4)), out)
        assert f"If no conversion is running, delete {out}/{LOCK_NAME}" in str(error.value)
    manifest = write_dataset(ListSource(binary_items(4)), out)
    assert manifest.counts["written"] == 4
    assert tf.io.gfile.listdir(out).count(LOCK_NAME) == 0


def test_non_empty_output_needs_overwrite_and_keeps_other_files(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["convert", "synthetic:4", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{out} is not empty: it holds files (notes.txt)" in err and "--overwrite" in err
    assert sorted(os.listdir(out)) == ["notes.txt"]
    assert main(["convert", "synthetic:4", str(out), "--image-size", "16", "--overwrite",
                 "--no-progress"]) == 0
    assert (out / "notes.txt").read_text() == "mine" and verify(out).counts["written"] == 4


def test_output_that_is_a_file_or_inside_the_source_is_refused(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["convert", "synthetic:4", str(target), "--no-progress"]) == 2
    assert f"The output directory {target} is a file" in capsys.readouterr().err
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    for inside in (src, src / "out", src / "a" / "deeper"):
        assert main(["convert", str(src), str(inside), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert f"{inside} is inside the source folder {src}" in err
    link = tmp_path / "link"
    link.symlink_to(src / "a", target_is_directory=True)
    assert main(["convert", str(src), str(link), "--no-progress"]) == 2
    assert "is inside the source folder" in capsys.readouterr().err
    assert sorted(os.listdir(src)) == ["a", "b"] and os.listdir(src / "a") == []


_SEGMENT = st.text(alphabet="ab-_.x", min_size=1, max_size=4).filter(
    lambda name: name not in (".", ".."))


@settings(max_examples=60, deadline=None)
@given(inside=st.lists(_SEGMENT, max_size=3), suffix=st.text(alphabet="-_x.", min_size=1,
                                                                 max_size=3))
def test_inside_the_source_means_below_it_not_a_name_prefix(tmp_path_factory, inside, suffix):
    src = tmp_path_factory.getbasetemp() / "src"
    src.mkdir(exist_ok=True)
    with pytest.raises(ValueError, match="inside the source folder"):
        check_not_inside(str(src.joinpath(*inside)), str(src))
    # A sibling whose name starts like the source's is outside it.
    check_not_inside(str(src.parent / (src.name + suffix) / "out"), str(src))


def test_huge_image_size_is_refused_before_any_work(tmp_path, capsys):
    started = time.monotonic()
    assert main(["convert", "synthetic:2", str(tmp_path / "o"), "--image-size", "100000",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"must be at most {MAX_IMAGE_SIZE} pixels per side" in err
    assert "Received: image_size=100000" in err
    assert time.monotonic() - started < 5 and not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match="at most"):
        write_dataset(ListSource(binary_items(2)), tmp_path / "p", image_size=(16, 9000))
