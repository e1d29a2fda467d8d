"""Training under faults: kills in any stage, disk full, damaged backups, moved runs."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from kmedimg import training
from kmedimg.config import config_from_dict
from kmedimg.core.run_directory import RunDirectory

from helpers import h5_arrays, history_rows

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZE = 32


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from kmedimg.data.synthetic import make_phantom_dataset

    path = tmp_path_factory.mktemp("phantoms")
    make_phantom_dataset(path, num_images=64, image_size=SIZE, seed=0,
                         val_fraction=0.25, test_fraction=0.25)
    return str(path)


def _config(data, run_dir, head_epochs=2, finetune_epochs=2, **training_kw):
    training_section = {"run_dir": str(run_dir), "steps_per_epoch": 2, "tensorboard": False,
                        "verbose": 0, "seed": 5}
    training_section.update(training_kw)
    return config_from_dict({
        "data": {"path": data, "batch_size": 8},
        "model": {"backbone": "lenet5", "dropout": 0.3},
        "recipe": {"name": "two_stage", "head_epochs": head_epochs,
                   "finetune_epochs": finetune_epochs, "freeze_depth": 1},
        "training": training_section,
        "evaluation": {"bootstrap": 0},
    })


def _assert_same_weights(expected_path, actual_path):
    expected, actual = h5_arrays(expected_path), h5_arrays(actual_path)
    assert [name for name, _ in expected] == [name for name, _ in actual]
    for (name, want), (_, got) in zip(expected, actual):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)


def _environment():
    return dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep
                + os.environ.get("PYTHONPATH", ""))


def _stage_epochs(rows):
    return [(row["stage"], row["epoch"], row["global_epoch"]) for row in rows]


def test_kill_in_the_first_stage_resumes_every_epoch_of_the_second(phantoms, tmp_path):
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(
        f"data: {{path: {phantoms}, batch_size: 8}}\n"
        "model: {backbone: lenet5, dropout: 0.3, augmentation: true}\n"
        "recipe: {name: two_stage, head_epochs: 4, finetune_epochs: 3, freeze_depth: 1}\n"
        "training: {steps_per_epoch: 6, seed: 4, tensorboard: false, verbose: 0}\n"
        "evaluation: {bootstrap: 0}\n"
    )

    def command(run_dir):
        return [sys.executable, "-m", "kmedimg", "train", str(recipe_file), "--out",
                str(run_dir), "--quiet"]

    reference_dir, victim_dir = tmp_path / "reference", tmp_path / "victim"
    reference = subprocess.Popen(command(reference_dir), env=_environment(),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    victim = subprocess.Popen(command(victim_dir), env=_environment(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    backup = victim_dir / "backup" / "head_warmup" / "training_metadata.json"
    deadline = time.time() + 240
    while time.time() < deadline and victim.poll() is None:
        if backup.exists():  # the first stage has a backup of at least one epoch
            break
        time.sleep(0.01)
    assert victim.poll() is None, "the run finished before it could be killed"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert not (victim_dir / "backup" / "finetune").exists()

    resumed = subprocess.run(command(victim_dir), env=_environment(), capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert reference.wait() == 0, reference.stderr.read().decode()[-3000:]

    expected = [("head_warmup", str(e), str(e)) for e in range(4)]
    expected += [("finetune", str(e), str(4 + e)) for e in range(3)]
    assert _stage_epochs(history_rows(reference_dir / "history.csv")) == expected
    assert _stage_epochs(history_rows(victim_dir / "history.csv")) == expected
    metrics = json.loads((victim_dir / "metrics.json").read_text())
    assert [stage["epochs_run"] for stage in metrics["stages"]] == [4, 3]
    assert metrics["stages"][0]["resumed_after_epoch"] >= 1
    assert metrics["stages"][1]["resumed_after_epoch"] == 0
    _assert_same_weights(reference_dir / "backup/finetune.end.weights.h5",
                         victim_dir / "backup/finetune.end.weights.h5")


def _train(config):
    return training.Trainer(config, progress=False).fit()


def _interrupted_copy(source_dir, target_dir, keep_stages):
    """A copy of a finished run as a kill after `keep_stages` completed stages leaves it."""
    shutil.copytree(source_dir, target_dir)
    directory = RunDirectory(str(target_dir))
    state = training.ResumeState.load(directory)
    names = list(state.completed)
    state.drop_from(names[keep_stages])
    state.save(directory)
    for name in ("model.keras", "metrics.json"):
        (target_dir / name).unlink()
    rows = [row for row in directory.read_history() if row["stage"] in state.completed]
    directory.write_history(rows)
    return directory


@pytest.fixture(scope="module")
def finished_run(phantoms, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    result = _train(_config(phantoms, run_dir))
    return run_dir, result


def test_lost_best_checkpoint_is_detected_and_named(phantoms, finished_run, tmp_path):
    run_dir, _ = finished_run
    victim = _interrupted_copy(run_dir, tmp_path / "victim", keep_stages=1)
    # The best epoch so far is in stage 1, but the crash came before its checkpoint was
    # written (disk full): the file is missing.
    rows = victim.read_history()
    rows[0]["val_auc"] = 1.0
    victim.write_history(rows)
    (tmp_path / "victim" / "checkpoints" / "best.weights.h5").unlink()

    metrics = _train(_config(phantoms, victim.path)).metrics

    assert metrics["best"]["stage"] == "head_warmup" and metrics["best"]["value"] == 1.0
    assert metrics["evaluated_weights"] == "best_saved"
    assert metrics["weights_epoch"]["stage"] == "finetune"
    (lost,) = [note for note in metrics["notes"] if "cannot be restored" in note]
    (holds,) = [note for note in metrics["notes"] if note.startswith("model.keras holds")]
    assert "best.weights.h5: missing" in lost and "'head_warmup' epoch 0" in lost
    assert "model.keras holds the best saved epoch (stage 'finetune'" in holds
    assert "not the best epoch by val_auc (stage 'head_warmup' epoch 0" in holds
    record = json.loads((tmp_path / "victim" / "checkpoints" / "best.json").read_text())
    assert record["global_epoch"] == metrics["weights_epoch"]["global_epoch"]
    _assert_model_holds(tmp_path / "victim" / "model.keras",
                        tmp_path / "victim" / "checkpoints" / "best.weights.h5")


def _assert_model_holds(model_path, weights_path):
    import keras

    model = keras.models.load_model(model_path)
    reference = keras.models.clone_model(model)
    reference.load_weights(weights_path)
    for expected, actual in zip(reference.weights, model.weights):
        np.testing.assert_array_equal(actual.numpy(), expected.numpy(), err_msg=actual.path)


def test_best_checkpoint_record_matches_model(finished_run):
    run_dir, result = finished_run
    assert result.metrics["evaluated_weights"] == "best"
    assert result.metrics["weights_epoch"]["global_epoch"] == result.metrics["best"]["global_epoch"]
    assert not [note for note in result.metrics["notes"] if "warning" in note]
    _assert_model_holds(run_dir / "model.keras", run_dir / "checkpoints" / "best.weights.h5")
    assert not list(run_dir.rglob("*.tmp*"))


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_truncated_stage_end_is_named_and_the_stage_trained_again(phantoms, finished_run,
                                                                   tmp_path):
    run_dir, _ = finished_run
    victim = _interrupted_copy(run_dir, tmp_path / "victim", keep_stages=1)
    _truncate(tmp_path / "victim" / "backup" / "head_warmup.end.weights.h5")
    # A temporary file an interrupted (e.g. disk-full) write left behind.
    stale = tmp_path / "victim" / "checkpoints" / "best.weights.h5.tmp.weights.h5"
    stale.write_bytes(b"\x89HDF half")

    metrics = _train(_config(phantoms, victim.path)).metrics

    notes = "\n".join(metrics["notes"])
    assert "head_warmup.end.weights.h5 is unreadable" in notes
    assert "stage 'head_warmup' is trained again from its start" in notes
    assert "removed 1 temporary file(s)" in notes and "best.weights.h5.tmp" in notes
    assert not stale.exists()
    assert _stage_epochs(victim.read_history()) == _stage_epochs(
        RunDirectory(str(run_dir)).read_history())
    _assert_same_weights(run_dir / "backup/finetune.end.weights.h5",
                         tmp_path / "victim/backup/finetune.end.weights.h5")


def test_truncated_backup_is_named_and_its_stage_restarted(phantoms, finished_run, tmp_path):
    run_dir, _ = finished_run
    victim = _interrupted_copy(run_dir, tmp_path / "victim", keep_stages=1)
    # A kill during the second stage's first backup, and the weights file cut short.
    backup = tmp_path / "victim" / "backup" / "finetune"
    backup.mkdir()
    shutil.copy(run_dir / "backup" / "finetune.end.weights.h5", backup / "latest.weights.h5")
    _truncate(backup / "latest.weights.h5")
    (backup / "training_metadata.json").write_text('{"epoch": 1, "batch": 0}')

    metrics = _train(_config(phantoms, victim.path)).metrics

    notes = "\n".join(metrics["notes"])
    assert "latest.weights.h5 is unreadable" in notes and str(backup) in notes
    assert "restarting stage 'finetune' from its start" in notes
    assert metrics["stages"][1]["resumed_after_epoch"] == 0
    _assert_same_weights(run_dir / "backup/finetune.end.weights.h5",
                         tmp_path / "victim/backup/finetune.end.weights.h5")


def test_moved_run_directory_resumes(phantoms, finished_run, tmp_path):
    run_dir, _ = finished_run
    _interrupted_copy(run_dir, tmp_path / "first", keep_stages=1)
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(tmp_path / "first", moved)
    for path in moved.rglob("*"):
        if path.suffix in (".json", ".yaml", ".csv"):
            text = path.read_text()
            assert str(tmp_path / "first") not in text and str(run_dir) not in text, path

    _train(_config(phantoms, moved))

    _assert_same_weights(run_dir / "backup/finetune.end.weights.h5",
                         moved / "backup/finetune.end.weights.h5")


def test_resume_on_a_reconverted_dataset_is_refused(phantoms, finished_run, tmp_path):
    from kmedimg.data.synthetic import make_phantom_dataset

    run_dir, _ = finished_run
    data = tmp_path / "data"
    shutil.copytree(phantoms, data)
    victim = _interrupted_copy(run_dir, tmp_path / "victim", keep_stages=1)
    config_text = (tmp_path / "victim" / "config.yaml").read_text()
    (tmp_path / "victim" / "config.yaml").write_text(config_text.replace(phantoms, str(data)))
    state = json.loads((tmp_path / "victim" / "state.json").read_text())
    assert len(state["manifest_fingerprint"]) == 64
    shutil.rmtree(data)
    make_phantom_dataset(data, num_images=64, image_size=SIZE, seed=1, val_fraction=0.25,
                         test_fraction=0.25)

    with pytest.raises(ValueError, match=r"dataset.json with fingerprint [0-9a-f]{16}\.\.\., "
                                         r"but that file now has fingerprint") as caught:
        training.Trainer(_config(str(data), victim.path), progress=False).fit()
    assert str(data / "dataset.json") in str(caught.value)
    assert state["manifest_fingerprint"][:16] in str(caught.value)
    assert not (tmp_path / "victim" / "model.keras").exists()


def test_full_device_gives_one_message_and_leaves_no_temporary_file(tmp_path):
    """A real ENOSPC: the run's files are written through /dev/full."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    directory = RunDirectory(str(tmp_path))
    (tmp_path / "history.csv.tmp").symlink_to("/dev/full")
    with pytest.raises(ValueError, match="history.csv: no space left on the device") as caught:
        directory.write_history([{"stage": "s", "epoch": 0, "global_epoch": 0,
                                  "learning_rate": 0.1}])
    assert isinstance(caught.value, OSError) and caught.value.errno == 28
    assert "run the same command again: it resumes" in str(caught.value)
    assert not list(tmp_path.iterdir())


@pytest.fixture
def small_device(tmp_path):
    """A 700 kB tmpfs (root only): a real device that fills up during training."""
    mount_point = tmp_path / "device"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=700k", "tmpfs",
                              str(mount_point)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=False)


def test_disk_full_during_training_then_resume_keeps_the_best(phantoms, finished_run,
                                                               small_device, tmp_path):
    reference_dir, reference = finished_run
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(
        f"data: {{path: {phantoms}, batch_size: 8}}\n"
        "model: {backbone: lenet5, dropout: 0.3}\n"
        "recipe: {name: two_stage, head_epochs: 2, finetune_epochs: 2, freeze_depth: 1}\n"
        "training: {steps_per_epoch: 2, seed: 5, tensorboard: false, verbose: 0}\n"
        "evaluation: {bootstrap: 0}\n"
    )
    run_dir = small_device / "run"
    command = [sys.executable, "-m", "kmedimg", "train", str(recipe_file), "--out",
               str(run_dir), "--quiet"]
    full = subprocess.run(command, env=_environment(), capture_output=True, text=True)
    assert full.returncode == 2, full.stderr[-3000:]
    lines = [line for line in full.stderr.splitlines() if line.startswith("kmedimg train:")]
    assert len(lines) == 1 and "no space left on the device" in lines[0], full.stderr[-3000:]
    assert "Traceback" not in full.stderr
    assert not list(run_dir.rglob("*.tmp*"))

    subprocess.run(["mount", "-o", "remount,size=16m", str(small_device)], check=True)
    resumed = subprocess.run(command, env=_environment(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["evaluated_weights"] == "best"
    assert metrics["best"]["global_epoch"] == reference.metrics["best"]["global_epoch"]
    _assert_model_holds(run_dir / "model.keras", run_dir / "checkpoints" / "best.weights.h5")
    _assert_same_weights(reference_dir / "backup/finetune.end.weights.h5",
                         run_dir / "backup/finetune.end.weights.h5")


def test_backup_killed_between_its_epoch_file_and_its_weights_resumes_the_older_epoch(
        finished_run, tmp_path):
    from kmedimg.core.run_directory import sha256_of_file
    from kmedimg.training.run_integrity import reconcile_backup

    run_dir, _ = finished_run
    backup = tmp_path / "backup"
    backup.mkdir()
    weights = backup / "latest.weights.h5"
    shutil.copy(run_dir / "checkpoints" / "best.weights.h5", weights)
    older = {"epoch": 2, "batch": 0, "sha256": sha256_of_file(str(weights))}
    # The epoch file of epoch 3 was written; the kill came before its weights replaced
    # the ones of epoch 2.
    (backup / "training_metadata.json").write_text(json.dumps(
        {"epoch": 3, "batch": 0, "sha256": "0" * 64, "previous": older}))
    assert reconcile_backup(str(backup)) is None
    assert json.loads((backup / "training_metadata.json").read_text()) == older
    assert training.model_state.backup_epoch(str(backup)) == 2

    # Weights that match neither record are named, not trusted.
    (backup / "training_metadata.json").write_text(json.dumps(
        {"epoch": 3, "batch": 0, "sha256": "0" * 64, "previous": None}))
    problem = reconcile_backup(str(backup))
    assert problem == f"{weights} does not match its record {backup / 'training_metadata.json'}"
