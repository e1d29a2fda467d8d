"""Training runner: what each recipe trains, run directories, resumption after SIGKILL."""

import csv
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from kmedimg import recipes, training
from kmedimg.config import config_from_dict

from helpers import h5_arrays, history_rows

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZE = 32


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from kmedimg.data.synthetic import make_phantom_dataset

    path = tmp_path_factory.mktemp("phantoms")
    make_phantom_dataset(path, num_images=96, image_size=SIZE, seed=0,
                         val_fraction=0.25, test_fraction=0.25)
    return str(path)


def _config(data, run_dir=None, backbone="lenet5", recipe="two_stage", options=None, **training_kw):
    training_section = {"run_dir": run_dir, "steps_per_epoch": 3, "tensorboard": False,
                        "verbose": 0}
    training_section.update(training_kw)
    return config_from_dict({
        "data": {"path": data, "batch_size": 8},
        "model": {"backbone": backbone, "dropout": 0.2},
        "recipe": {"name": recipe, **(options or {})},
        "training": training_section,
        "evaluation": {"bootstrap": 20},
    })


def _expected_trainable(model, stage, frozen):
    from kmedimg import models

    blocks = models.backbone_blocks(model)
    expected = set()
    for _, layers in blocks[frozen:]:
        for layer in layers:
            if isinstance(layer, keras.layers.BatchNormalization) and not stage.train_batchnorm:
                continue
            expected |= {id(v) for v in layer.trainable_weights or layer.weights
                         if v.trainable or not isinstance(layer, keras.layers.BatchNormalization)
                         and v in layer.trainable_weights}
    backbone_ids = {id(v) for _, layers in blocks for layer in layers for v in layer.weights}
    head = {id(v) for v in model.weights if id(v) not in backbone_ids and v.trainable}
    return expected | head, blocks


def _block_variables(blocks, first, last):
    return [v for _, layers in blocks[first:last] for layer in layers for v in layer.weights]


@pytest.mark.parametrize("name", recipes.list_recipes())
def test_each_recipe_trains_exactly_its_blocks(phantoms, name):
    options = {"freeze_depth": 2} if "freeze_depth" in recipes.recipe_options(name) else {}
    config = _config(phantoms, recipe=name, options=options)
    recipe = recipes.get_recipe(name, **options)
    keras.utils.set_random_seed(0)
    data = training.prepare_data(config)
    model = training.build_model(config, data.num_classes, data.input_shape, data.task, recipe)
    for stage in recipe.stages:
        layout = training.prepare_stage(model, stage, config, steps_per_epoch=3, task=data.task)
        frozen = layout["frozen_blocks"]
        expected, blocks = _expected_trainable(model, stage, frozen)
        assert {id(v) for v in model.trainable_weights} == expected, stage.name
        assert layout["trainable_blocks"] == [block for block, _ in blocks[frozen:]]
        frozen_before = [v.numpy().copy() for v in _block_variables(blocks, 0, frozen)]
        trainable_before = [v.numpy().copy() for v in model.trainable_weights]
        model.fit(data.train, epochs=1, steps_per_epoch=3, verbose=0)
        for before, variable in zip(frozen_before, _block_variables(blocks, 0, frozen)):
            np.testing.assert_array_equal(before, variable.numpy(), err_msg=variable.path)
        changed = [not np.array_equal(b, v.numpy())
                   for b, v in zip(trainable_before, model.trainable_weights)]
        assert all(changed), [v.path for v, c in zip(model.trainable_weights, changed) if not c]


def _batchnorm_stats(layers):
    return [(layer.name, layer.moving_mean.numpy().copy(), layer.moving_variance.numpy().copy())
            for layer in layers if isinstance(layer, keras.layers.BatchNormalization)]


def test_batchnorm_statistics_and_recompiles_between_stages(phantoms, monkeypatch):
    from kmedimg import models

    config = _config(phantoms, backbone="mobilenetv2", recipe="two_stage",
                     options={"freeze_depth": 10, "head_epochs": 1, "finetune_epochs": 1})
    recipe = recipes.get_recipe("two_stage", freeze_depth=10, head_epochs=1, finetune_epochs=1)
    keras.utils.set_random_seed(0)
    data = training.prepare_data(config)
    model = training.build_model(config, data.num_classes, data.input_shape, data.task, recipe)
    blocks = models.backbone_blocks(model)
    frozen_layers = [layer for _, layers in blocks[:10] for layer in layers]
    upper_layers = [layer for _, layers in blocks[10:] for layer in layers]
    frozen_stats, upper_stats = _batchnorm_stats(frozen_layers), _batchnorm_stats(upper_layers)
    assert frozen_stats and upper_stats

    optimizers = []
    original_compile = keras.Model.compile

    def counting_compile(self, *args, **kwargs):
        original_compile(self, *args, **kwargs)
        optimizers.append(self.optimizer)

    monkeypatch.setattr(keras.Model, "compile", counting_compile)
    histories = training.run_stages(model, recipe, config, data.train, steps_per_epoch=2)
    assert len(histories) == 2
    # two_stage recompiles between its stages, with a fresh optimizer.
    assert len(optimizers) == 2 and optimizers[0] is not optimizers[1]
    # Frozen blocks and (train_batchnorm=False) the training blocks keep their statistics.
    for (name, mean, variance), (_, mean_after, variance_after) in zip(
            frozen_stats + upper_stats, _batchnorm_stats(frozen_layers + upper_layers)):
        np.testing.assert_array_equal(mean, mean_after, err_msg=name)
        np.testing.assert_array_equal(variance, variance_after, err_msg=name)

    # With train_batchnorm=True the training blocks' statistics move, the frozen ones not.
    partial = recipes.get_recipe("partial_finetune", freeze_depth=10, epochs=1,
                                 train_batchnorm=True)
    training.run_stages(model, partial, config, data.train, steps_per_epoch=2)
    for (name, mean, _), (_, mean_after, _) in zip(frozen_stats, _batchnorm_stats(frozen_layers)):
        np.testing.assert_array_equal(mean, mean_after, err_msg=name)
    moved = [not np.array_equal(mean, after) for (_, mean, _), (_, after, _)
             in zip(upper_stats, _batchnorm_stats(upper_layers))]
    assert all(moved)


def test_train_command_writes_the_run_directory(phantoms, tmp_path, capsys, monkeypatch):
    from kmedimg import cli
    from kmedimg.core.run_directory import RunDirectory

    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(
        "model: {backbone: lenet5, dropout: 0.2}\n"
        "recipe: {name: two_stage, head_epochs: 1, finetune_epochs: 2, freeze_depth: 2,\n"
        "         cache_features: true, block_lr_decay: 0.5}\n"
        "data: {batch_size: 8}\n"
        "training: {steps_per_epoch: 3, verbose: 0}\n"
        "evaluation: {bootstrap: 20}\n"
    )
    run_dir = tmp_path / "run"
    # A relative --data is stored absolute: the run can be evaluated from anywhere.
    monkeypatch.chdir(pathlib.Path(phantoms).parent)
    code = cli.main(["train", str(recipe_file), "--data", pathlib.Path(phantoms).name,
                     "--out", str(run_dir), "--quiet", "--set", "training.seed=1"])
    assert code == 0
    output = capsys.readouterr().out
    assert "roc_auc" in output and str(run_dir) in output
    for name in ("config.yaml", "history.csv", "metrics.json", "model.keras",
                 "checkpoints/best.weights.h5", "logs/head_warmup", "logs/finetune"):
        assert (run_dir / name).exists(), name
    with open(run_dir / "history.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["stage"], row["epoch"], row["global_epoch"]) for row in rows] == [
        ("head_warmup", "0", "0"), ("finetune", "0", "1"), ("finetune", "1", "2")]
    assert "val_auc" in rows[0]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    warmup, finetune = metrics["stages"]
    assert warmup["cached_features"] and "frozen" in warmup["cache_note"]
    assert not finetune["cached_features"]
    assert warmup["trainable_params"] < finetune["trainable_params"]
    assert metrics["best"]["monitor"] == "val_auc"
    assert 0.0 <= metrics["test"]["metrics"]["roc_auc"]["value"] <= 1.0
    assert metrics["test"]["threshold"]["chosen_on"] == "val"
    assert "seed: 1" in (run_dir / "config.yaml").read_text()
    assert RunDirectory(run_dir).read_config()["data"]["path"] == phantoms
    state = training.ResumeState.load(RunDirectory(run_dir))
    assert list(state.completed) == ["head_warmup", "finetune"] and state.current_stage is None
    assert [entry["epochs_run"] for entry in state.completed.values()] == [1, 2]
    assert state.best["monitor"] == "val_auc"
    model = keras.models.load_model(run_dir / "model.keras")
    pixels = np.zeros((2, SIZE, SIZE, 1), "float32")
    assert model.predict(pixels, verbose=0).shape == (2, 1)
    # A run directory of another configuration is not resumed silently.
    with pytest.raises(ValueError, match=r"training.seed=1.*training.seed=2"):
        training.run(_config(phantoms, str(run_dir), seed=2, steps_per_epoch=3))


def test_training_alone_writes_the_summary_without_evaluation(phantoms, tmp_path):
    run_dir = tmp_path / "run"
    trainer = training.Trainer(_config(phantoms, str(run_dir), recipe="feature_extractor",
                                       options={"epochs": 1}), progress=False)
    result = trainer.fit()
    assert "val" not in result.metrics and "test" not in result.metrics
    assert result.metrics["stages"][0]["epochs_run"] == 1 and result.metrics["best"]
    assert json.loads((run_dir / "metrics.json").read_text()) == result.metrics
    assert [row["stage"] for row in result.history] == ["head"]
    assert trainer.model is not None and (run_dir / "model.keras").exists()


def test_resume_state_round_trips_and_reads_the_old_format():
    from kmedimg.core.run_directory import RunDirectory

    directory = RunDirectory("ram://kmedimg-tests/resume-state")
    directory.makedirs()
    assert training.ResumeState.load(directory) == training.ResumeState()
    # state.json as runs before the Trainer wrote it: only the completed stages.
    report = {"name": "head", "trainable_params": 10}
    directory.write_json(RunDirectory.STATE,
                         {"completed": {"head": {"epochs_run": 2, "report": report}}})
    state = training.ResumeState.load(directory)
    assert state.last_completed == "head" and state.epochs_completed == 2
    assert state.stage_reports == [report] and state.current_stage is None
    state.start_stage("finetune", 3)
    state.save(directory)
    state = training.ResumeState.load(directory)
    assert (state.current_stage, state.resumed_after_epoch) == ("finetune", 3)
    best = {"monitor": "val_auc", "value": 0.9, "stage": "finetune", "epoch": 4,
            "global_epoch": 6}
    state.complete_stage("finetune", 5, {"name": "finetune"}, best=best)
    state.save(directory)
    assert training.ResumeState.load(directory) == state
    assert state.epochs_completed == 7 and state.current_stage is None


def test_feature_cache_is_off_with_augmentation(phantoms):
    config = config_from_dict({
        "data": {"path": phantoms}, "model": {"backbone": "lenet5", "augmentation": True},
        "recipe": {"name": "feature_extractor"},
    })
    recipe = recipes.get_recipe("feature_extractor")
    model = training.build_model(config, 1, (SIZE, SIZE, 1), "binary", recipe)
    plan, reason = training.feature_cache_plan(model, recipe.stages[0])
    assert plan is None and "augmentation" in reason
    stage = recipes.Stage(name="s", epochs=1, learning_rate=1e-3, freeze_depth=1,
                          cache_features=True)
    plan, reason = training.feature_cache_plan(model, stage)
    assert plan is None and "backbone trains" in reason


def test_class_weights_from_manifest_counts():
    from kmedimg.config import TrainingConfig
    from kmedimg.data.schema import Manifest, SplitInfo

    manifest = Manifest(task="binary", class_names=["normal", "pneumonia"], encoding="raw",
                        dtype="uint8", channels=1,
                        splits={"train": SplitInfo(count=400, class_counts={"normal": 100,
                                                                            "pneumonia": 300})})
    weights, note = training.class_weights(manifest, "train", TrainingConfig())
    assert weights == pytest.approx([2.0, 2.0 / 3.0]) and "balanced" in note
    weights, note = training.class_weights(manifest, "train", TrainingConfig(loss="focal"))
    assert weights is None and "focal" in note
    weights, note = training.class_weights(manifest, "train", TrainingConfig(imbalance_ratio=4.0))
    assert weights is None and "balanced" in note
    with pytest.raises(ValueError, match="one per class"):
        training.class_weights(manifest, "train", TrainingConfig(class_weight=[1.0]))


def test_killed_run_resumes_to_the_same_weights(phantoms, tmp_path):
    recipe_file = tmp_path / "recipe.yaml"
    # Dropout and augmentation draw random numbers: their generator states must resume too.
    recipe_file.write_text(
        f"data: {{path: {phantoms}, batch_size: 8}}\n"
        "model: {backbone: lenet5, dropout: 0.3, augmentation: true}\n"
        "recipe: {name: two_stage, head_epochs: 2, finetune_epochs: 3, freeze_depth: 1}\n"
        "training: {steps_per_epoch: 12, seed: 3, tensorboard: false, verbose: 0,\n"
        "           early_stopping_patience: 10}\n"
        "evaluation: {bootstrap: 0}\n"
    )
    environment = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep
                       + os.environ.get("PYTHONPATH", ""))

    def command(run_dir):
        return [sys.executable, "-m", "kmedimg", "train", str(recipe_file), "--out", str(run_dir),
                "--quiet"]

    reference_dir, victim_dir = tmp_path / "reference", tmp_path / "victim"
    reference = subprocess.Popen(command(reference_dir), env=environment,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    victim = subprocess.Popen(command(victim_dir), env=environment,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history = victim_dir / "history.csv"
    # The backup is written last in an epoch: once it exists, the epoch is complete.
    second_stage_backup = victim_dir / "backup" / "finetune" / "training_metadata.json"
    deadline = time.time() + 240
    while time.time() < deadline and victim.poll() is None:
        if second_stage_backup.exists():  # inside the second stage, after an epoch
            break
        time.sleep(0.02)
    assert victim.poll() is None, "the run finished before it could be killed"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert not (victim_dir / "metrics.json").exists()
    killed_rows = len(history_rows(history))
    assert 3 <= killed_rows < 5

    resumed = subprocess.run(command(victim_dir), env=environment, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert reference.wait() == 0, reference.stderr.read().decode()[-3000:]

    metrics = json.loads((victim_dir / "metrics.json").read_text())
    assert metrics["stages"][1]["resumed_after_epoch"] >= 1
    final = "backup/finetune.end.weights.h5"
    reference_weights, victim_weights = h5_arrays(reference_dir / final), h5_arrays(victim_dir / final)
    assert [name for name, _ in reference_weights] == [name for name, _ in victim_weights]
    for (name, expected), (_, actual) in zip(reference_weights, victim_weights):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6, err_msg=name)
    reference_rows, victim_rows = history_rows(reference_dir / "history.csv"), history_rows(history)
    assert len(reference_rows) == len(victim_rows) == 5
    for expected, actual in zip(reference_rows, victim_rows):
        assert expected["stage"] == actual["stage"] and expected["epoch"] == actual["epoch"]
        np.testing.assert_allclose(float(actual["val_loss"]), float(expected["val_loss"]),
                                   rtol=1e-5, atol=1e-6)
