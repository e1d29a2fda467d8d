"""Real tiny searches on synthetic TFRecords: values reach the models, the best recipe
reproduces its trial, a killed search resumes, one chief and two workers share trials."""

import csv
import gc
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import keras
import keras_tuner
import pytest
import yaml

from kmedimg import models, training
from kmedimg.config import config_from_dict, load_config
from kmedimg.tuning import ClassifierHyperModel, run_search, settings_for

REPO = pathlib.Path(__file__).resolve().parents[1]
BACKBONE = "lenet5_modern"


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from kmedimg.data.synthetic import make_phantom_dataset

    path = tmp_path_factory.mktemp("phantoms")
    make_phantom_dataset(str(path), num_images=96, image_size=32, seed=0,
                         val_fraction=0.34, test_fraction=0.0)
    return str(path)


def recipe(phantoms, directory, recipe_section=None, tune=None):
    """A tiny recipe file as a dict: LeNet-5 on 32x32 phantoms, 4 steps an epoch."""
    return {
        "data": {"path": phantoms, "batch_size": 16},
        "model": {"backbone": BACKBONE, "dropout": 0.2},
        "recipe": recipe_section or {"name": "two_stage", "head_epochs": 1,
                                     "finetune_epochs": 1, "freeze_depth": 1},
        "training": {"tensorboard": False, "verbose": 0},
        "evaluation": {"bootstrap": 0},
        "tune": dict({"directory": str(directory)}, **(tune or {})),
    }


def frozen_blocks(model):
    blocks = models.backbone_blocks(model)
    frozen = 0
    for _, layers in blocks:
        weighted = [layer for layer in layers if layer.weights]
        if weighted and all(not layer.trainable for layer in weighted):
            frozen += 1
        else:
            break
    return frozen


def dropout_rate(model):
    rates = [layer.rate for layer in model._flatten_layers()
             if isinstance(layer, keras.layers.Dropout)]
    assert len(rates) == 1
    return rates[0]


def test_defaults_are_the_recipe_and_each_value_reaches_the_model(phantoms, tmp_path):
    config = config_from_dict(recipe(phantoms, tmp_path, tune={"search_space": {
        "weight_decay": {"min": 1e-6, "max": 1e-2}, "hidden_units": [0, 8]}}))
    hypermodel = ClassifierHyperModel(config)
    hp = keras_tuner.HyperParameters()
    model = hypermodel.build(hp)  # no search: every value at its default
    assert hp.values == {"learning_rate": 1e-3, "dropout": 0.2, "freeze_depth": 1,
                         "weight_decay": 1e-4, "hidden_units": 0}
    assert dropout_rate(model) == pytest.approx(0.2)
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-3)
    num_blocks = hypermodel.num_blocks(BACKBONE)
    assert frozen_blocks(model) == num_blocks  # two_stage warms the head up first

    config = config_from_dict(recipe(phantoms, tmp_path, {"name": "partial_finetune",
                                                          "epochs": 1, "schedule": "constant"},
                                     tune={"search_space": {"weight_decay": [1e-6, 1e-2],
                                                            "hidden_units": [0, 8]}}))
    hypermodel = ClassifierHyperModel(config)
    for depth in range(num_blocks + 1):
        hp = keras_tuner.HyperParameters()
        hp.Fixed("learning_rate", 3e-3)
        hp.Fixed("dropout", 0.4)
        hp.Fixed("freeze_depth", depth)
        hp.Fixed("weight_decay", 2e-3)
        hp.Fixed("hidden_units", 8)
        model = hypermodel.build(hp)
        assert frozen_blocks(model) == depth
        assert dropout_rate(model) == pytest.approx(0.4)
        assert float(model.optimizer.learning_rate) == pytest.approx(3e-3)
        assert float(model.optimizer.weight_decay) == pytest.approx(2e-3)
        assert any(isinstance(layer, keras.layers.Dense) and layer.units == 8
                   for layer in model._flatten_layers())
    keras.backend.clear_session()


def test_backbone_and_recipe_choices_condition_freeze_depth(phantoms, tmp_path):
    config = config_from_dict(recipe(phantoms, tmp_path, tune={"search_space": {
        "backbone": [BACKBONE, "lenet5"], "recipe": ["two_stage", "from_scratch"],
        "augmentation_strength": {"min": 0.0, "max": 1.0, "step": 0.5}}}))
    hypermodel = ClassifierHyperModel(config)
    space = keras_tuner.HyperParameters()
    hypermodel.declare_hyperparameters(space)
    depths = [p for p in space.space if p.name == "freeze_depth"]
    assert [p.conditions[0].values for p in depths] == [[BACKBONE], ["lenet5"]]

    hp = space.copy()
    hp.values.update(backbone="lenet5", recipe="two_stage", freeze_depth=2,
                     augmentation_strength=0.5)
    trial = hypermodel.trial_config(hypermodel.values(hp))
    assert trial.model.backbone == "lenet5" and trial.recipe.options["freeze_depth"] == 2
    assert trial.model.augmentation["rotation"] == pytest.approx(5.0)  # half the default 10

    hp.values.update(recipe="from_scratch", augmentation_strength=0.0)
    values = hypermodel.values(hp)
    assert "freeze_depth" not in values  # from_scratch has no such option
    trial = hypermodel.trial_config(values)
    assert trial.recipe.name == "from_scratch" and trial.model.augmentation is None
    assert trial.recipe.options["epochs"] == 2  # scaled to the base recipe's 1 + 1 epochs
    # Checked when the recipe file is read (the hypermodel gets a validated space).
    with pytest.raises(ValueError, match="backbone.*Received: tune.search_space.backbone='resnet9'"):
        ClassifierHyperModel(config_from_dict(recipe(phantoms, tmp_path, tune={
            "search_space": {"backbone": ["resnet9"]}})))


def test_search_values_reach_each_trial_and_the_best_recipe_reproduces(phantoms, tmp_path):
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(recipe(phantoms, tmp_path / "tune", tune={
        "tuner": "random", "max_trials": 2, "seed": 3, "isolate_trials": False,
        "search_space": {"learning_rate": [1e-3, 3e-2], "freeze_depth": {"min": 0}}})))
    config = load_config(path)
    # Models other tests keep (fixtures, module state) are not this search's doing.
    gc.collect()
    before = {id(obj) for obj in gc.get_objects() if isinstance(obj, keras.Model)}
    result = run_search(config, settings=settings_for(config), recipe_path=str(path))
    gc.collect()
    alive = [
        obj for obj in gc.get_objects()
        if isinstance(obj, keras.Model) and id(obj) not in before
    ]
    assert not alive, f"models left alive after the search: {alive}"

    with open(result.trials_csv) as handle:
        rows = list(csv.DictReader(handle))
    assert [row["status"] for row in rows] == ["COMPLETED", "COMPLETED"]
    for row in rows:
        run_dir = pathlib.Path(result.project_dir) / f"trial_{row['trial_id']}" / "run0"
        metrics = json.loads((run_dir / "metrics.json").read_text())
        head, finetune = metrics["stages"]
        assert head["learning_rate"] == pytest.approx(float(row["learning_rate"]))
        assert finetune["learning_rate"] == pytest.approx(float(row["learning_rate"]) / 10)
        assert finetune["frozen_blocks"] == int(row["freeze_depth"])
        model = keras.saving.load_model(run_dir / "model.keras")
        assert dropout_rate(model) == pytest.approx(float(row["dropout"]))
        assert metrics["best"]["value"] == pytest.approx(float(row["score"]), abs=1e-6)
    keras.backend.clear_session()

    best_score = max(float(row["score"]) for row in rows)
    assert result.best_score == pytest.approx(best_score)
    assert os.path.getsize(result.plot) > 1000
    best = load_config(result.best_recipe, [f"training.run_dir={tmp_path / 'retrain'}"])
    assert best.recipe.options["freeze_depth"] == result.best_values["freeze_depth"]
    retrained = training.run(best, progress=False)
    assert retrained.metrics["best"]["value"] == pytest.approx(result.best_score, abs=0.02)


def test_a_different_search_in_the_same_project_is_refused(phantoms, tmp_path):
    from kmedimg.tuning import make_tuner

    config = config_from_dict(recipe(phantoms, tmp_path, tune={"tuner": "random"}))
    make_tuner(ClassifierHyperModel(config), config.tune, project_name="p")
    changed = config_from_dict(recipe(phantoms, tmp_path, tune={
        "tuner": "random", "search_space": {"dropout": [0.0, 0.3]}}))
    with pytest.raises(ValueError, match=r"holds a different search .*dropout.*--overwrite"):
        make_tuner(ClassifierHyperModel(changed), changed.tune, project_name="p")
    make_tuner(ClassifierHyperModel(changed), changed.tune, project_name="p", overwrite=True)


def _cli(args, **kwargs):
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen([sys.executable, "-m", "kmedimg", "tune", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **kwargs)


def _trial_states(project):
    states = {}
    for trial_json in pathlib.Path(project).glob("trial_*/trial.json"):
        try:
            data = json.loads(trial_json.read_text())
        except (OSError, ValueError):  # being written by the search right now
            continue
        states[data["trial_id"]] = data["status"]
    return states


def _table_trials(output):
    """Trial ids of the rows of the live table in a `kmedimg tune` output."""
    ids = []
    for line in output.splitlines():
        cells = line.split()
        if len(cells) > 2 and cells[1] in ("COMPLETED", "FAILED", "INVALID"):
            ids.append(cells[0])
    return ids


def _trial_processes(tmp_path):
    """Pids of trial child processes whose config lies under `tmp_path`."""
    pids = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "-m kmedimg.tuning.trial_process " in command and str(tmp_path) in command:
            pids.append(int(entry.name))
    return pids


def _one_stage(phantoms, directory, tune, epochs=1):
    return recipe(phantoms, directory, {"name": "partial_finetune", "epochs": epochs,
                                        "schedule": "constant"}, tune)


def test_resume_after_sigkill_repeats_no_finished_trial(phantoms, tmp_path):
    path = tmp_path / "resume.yaml"
    path.write_text(yaml.safe_dump(_one_stage(phantoms, tmp_path / "tune",
                                              {"seed": 1, "isolate_trials": False}, 2)))
    project = tmp_path / "tune" / "resume"
    # The default tuner (Hyperband): max_epochs 2, factor 2 -> five trials of 1-2 epochs.
    args = [str(path), "--max-epochs", "2", "--set", "tune.factor=2"]
    first = _cli(args)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            states = _trial_states(project)
            done = {k for k, v in states.items() if v == "COMPLETED"}
            if done and any(v == "RUNNING" for v in states.values()):
                break
            time.sleep(0.2)
        else:
            pytest.fail("the first search never got to its second trial")
        first.send_signal(signal.SIGKILL)
    finally:
        first.kill()
        first.communicate(timeout=30)
    killed_during = {k for k, v in _trial_states(project).items() if v == "RUNNING"}
    completed_before = {k for k, v in _trial_states(project).items() if v == "COMPLETED"}
    assert completed_before and killed_during

    second = _cli(args)
    output, _ = second.communicate(timeout=180)
    assert second.returncode == 0, output
    rerun = _table_trials(output)
    assert not set(rerun) & completed_before, output
    assert killed_during <= set(rerun)
    states = _trial_states(project)
    assert set(states.values()) == {"COMPLETED"} and len(states) >= 3
    assert set(states) == completed_before | set(rerun)
    assert "Best recipe:" in output


def test_isolated_trial_trains_in_a_child_that_dies_with_its_parent(phantoms, tmp_path):
    config = config_from_dict(_one_stage(phantoms, tmp_path, {}))
    hypermodel = ClassifierHyperModel(config, isolate_trials=True)
    run_dir = tmp_path / "trial" / "run0"
    history = hypermodel.fit(keras_tuner.HyperParameters(), run_dir=str(run_dir))
    assert len(history.history["val_auc"]) == 1
    assert (run_dir / "trial.log").exists() and (run_dir / "model.keras").exists()

    # A parent killed while its trial child is still starting leaves no orphan.
    orphan_dir = tmp_path / "orphan"
    orphan_dir.mkdir()
    config_path = orphan_dir / "trial_config.yaml"
    config_path.write_text((run_dir / "trial_config.yaml").read_text().replace(
        str(run_dir), str(orphan_dir / "run")))
    parent = subprocess.Popen([sys.executable, "-c", (
        "import os, subprocess, sys, time\n"
        "env = dict(os.environ, KMEDIMG_TRIAL_PARENT=str(os.getpid()))\n"
        f"subprocess.Popen([sys.executable, '-m', 'kmedimg.tuning.trial_process', "
        f"{str(config_path)!r}], env=env)\n"
        "time.sleep(600)\n")], env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        deadline = time.monotonic() + 30
        while not _trial_processes(orphan_dir) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _trial_processes(orphan_dir)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 120
    while _trial_processes(orphan_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _trial_processes(orphan_dir)
    assert not (orphan_dir / "run" / "model.keras").exists()


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_one_chief_two_workers_share_the_trials(phantoms, tmp_path):
    path = tmp_path / "parallel.yaml"
    path.write_text(yaml.safe_dump(_one_stage(phantoms, tmp_path / "tune", {
        "tuner": "random", "max_trials": 4, "isolate_trials": False})))
    address = f"127.0.0.1:{_free_port()}"
    processes = []
    try:
        processes.append(_cli([str(path), "--chief", "--oracle-address", address]))
        for worker in ("worker0", "worker1"):
            processes.append(_cli([str(path), "--worker", "--oracle-address", address,
                                   "--tuner-id", worker]))
        outputs = []
        deadline = time.monotonic() + 240
        for process in processes[1:] + processes[:1]:
            output, _ = process.communicate(timeout=max(1, deadline - time.monotonic()))
            outputs.append(output)
            assert process.returncode == 0, output
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.communicate()
    worker_trials = [set(_table_trials(output)) for output in outputs[:2]]
    assert all(worker_trials), outputs  # both workers trained
    assert not worker_trials[0] & worker_trials[1]  # none twice
    with open(tmp_path / "tune" / "parallel" / "trials.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["trial_id"] for row in rows} == worker_trials[0] | worker_trials[1]
    assert len(rows) == 4 and {row["status"] for row in rows} == {"COMPLETED"}
    assert "Best trial" in outputs[2]
    chief_rows = _table_trials(outputs[2])
    assert sorted(chief_rows) == sorted(worker_trials[0] | worker_trials[1]), outputs[2]


def test_rerun_resumes_the_recipe_named_project_and_best_recipe_has_full_epochs(
        phantoms, tmp_path, monkeypatch):
    # No tune.directory and no --project-name: the project is runs/tune/<recipe stem>
    # under the working directory, the same folder on every run.
    monkeypatch.chdir(tmp_path)
    spec = _one_stage(phantoms, None, {"tuner": "random", "max_trials": 1, "seed": 0,
                                       "isolate_trials": False}, epochs=3)
    spec["tune"].pop("directory")
    path = tmp_path / "shortened.yaml"
    path.write_text(yaml.safe_dump(spec))
    config = load_config(path)
    settings = settings_for(config, max_epochs=1)
    first = run_search(config, settings=settings, recipe_path=str(path))
    assert first.project_dir == os.path.join("runs/tune", "shortened")
    assert first.trials_run_here == [first.best_trial_id]
    trial_metrics = json.loads((pathlib.Path(first.project_dir) / f"trial_{first.best_trial_id}"
                                / "run0" / "metrics.json").read_text())
    assert sum(stage["epochs"] for stage in trial_metrics["stages"]) == 1

    text = pathlib.Path(first.best_recipe).read_text()
    assert "# Epochs: the recipe file's full length (3 in all)" in text
    assert "at most 1" in text
    best = load_config(first.best_recipe)
    assert best.recipe.options.get("epochs", 3) == 3  # not the search's shortened 1

    second = run_search(config, settings=settings, recipe_path=str(path))
    assert second.project_dir == first.project_dir
    assert second.trials_run_here == []  # resumed: the finished trial is not trained again
    assert second.best_trial_id == first.best_trial_id
    keras.backend.clear_session()
