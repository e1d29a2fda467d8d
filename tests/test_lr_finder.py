"""The learning-rate finder: `kmedimg lr-find`, LRFinder, and `learning_rate: find`."""

import dataclasses
import json
import math

import keras
import numpy as np
import hypothesis
import pytest
from hypothesis import strategies as st
import tensorflow as tf
import yaml
from PIL import Image

from kmedimg import cli, recipes
from kmedimg.config import config_from_dict
from kmedimg.data.synthetic import make_phantom_dataset
from kmedimg.training import lr_finder
from kmedimg.training.build import build_model
from kmedimg.training.datasets import read_training_manifest, train_dataset
from kmedimg.training.stage_loop import prepare_stage

SIZE = 32


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    path = tmp_path_factory.mktemp("phantoms")
    make_phantom_dataset(path, num_images=64, image_size=SIZE, seed=0, val_fraction=0.25,
                         test_fraction=0.25)
    return str(path)


def _recipe(tmp_path, learning_rate="find", name="from_scratch"):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "model: {backbone: lenet5, dropout: 0.0}\n"
        f"recipe: {{name: {name}, epochs: 1, learning_rate: {learning_rate}}}\n"
        "data: {batch_size: 8}\n"
        "training: {steps_per_epoch: 2, verbose: 0, tensorboard: false}\n"
        "evaluation: {bootstrap: 10}\n"
    )
    return recipe


def test_finder_suggests_a_finite_rate_in_the_sweep_and_restores_the_weights(phantoms):
    config = config_from_dict({
        "data": {"path": phantoms, "batch_size": 8},
        "model": {"backbone": "lenet5", "dropout": 0.0},
        "recipe": {"name": "from_scratch", "epochs": 1},
    })
    manifest = read_training_manifest(config)
    recipe = recipes.get_recipe("from_scratch", epochs=1)
    model = build_model(config, 1, (SIZE, SIZE, 1), "binary", recipe=recipe)
    stage = dataclasses.replace(recipe.stages[0], schedule="constant")
    prepare_stage(model, stage, config, steps_per_epoch=4, task="binary")
    before = [keras.ops.convert_to_numpy(variable) for variable in model.weights]
    dataset = train_dataset(config, manifest, tf.distribute.get_strategy(), seed=0)
    result = lr_finder.find_learning_rate(model, dataset, min_lr=1e-6, max_lr=10.0, steps=80)
    assert all(np.array_equal(a, keras.ops.convert_to_numpy(b)) for a, b in zip(before, model.weights))
    assert math.isfinite(result.suggestion) and 1e-6 <= result.suggestion <= 10.0
    assert result.learning_rates[0] == pytest.approx(1e-6)
    # The learning rate grows exponentially; lr=10 makes the loss diverge before the end.
    ratios = np.diff(np.log(result.learning_rates))
    assert np.allclose(ratios, ratios[0])
    assert result.diverged and len(result.losses) < 80
    assert result.suggestion < result.learning_rates[-1]


def test_lr_find_command_writes_the_plot_and_the_sweep(phantoms, tmp_path, capsys):
    out = tmp_path / "plots" / "lr.png"
    code = cli.main(["lr-find", str(_recipe(tmp_path, 1.0e-3)), "--data", phantoms,
                     "--out", str(out), "--steps", "40", "--max-lr", "3"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "suggested learning rate:" in printed and f"plot: {out}" in printed
    with Image.open(out) as plot:
        assert plot.format == "PNG" and plot.size == (600, 400)
    sweep = json.loads(out.with_suffix(".json").read_text())
    assert 1e-7 <= sweep["suggestion"] <= 3 and len(sweep["losses"]) <= 40


def test_learning_rate_find_trains_and_records_the_value(phantoms, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = cli.main(["train", str(_recipe(tmp_path)), "--data", phantoms, "--out",
                     str(run_dir)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "recipe.learning_rate: find ->" in printed
    found = yaml.safe_load((run_dir / "config.yaml").read_text())["recipe"]["learning_rate"]
    assert isinstance(found, float) and lr_finder.DEFAULT_MIN_LR <= found <= 1.0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["stages"][0]["learning_rate"] == found
    assert any("find ->" in note for note in metrics["notes"])


@pytest.mark.parametrize("option, value, message", [
    ("dropout", "find", r"option 'dropout'|dropout"),
    ("learning_rate", "fnd", r"learning_rate"),
])
def test_find_is_accepted_only_for_learning_rates(option, value, message):
    raw = {"model": {"backbone": "lenet5", option: value} if option == "dropout" else
           {"backbone": "lenet5"},
           "recipe": {"name": "from_scratch"} if option == "dropout" else
           {"name": "from_scratch", option: value}}
    with pytest.raises(ValueError, match=message):
        config_from_dict(raw)


def test_bad_sweep_arguments_name_the_argument():
    with pytest.raises(ValueError, match=r"`steps` must be an int >= 5. Received: steps=2"):
        lr_finder.LRFinder(steps=2)
    with pytest.raises(ValueError, match=r"`max_lr` must be greater than `min_lr`"):
        lr_finder.LRFinder(min_lr=1.0, max_lr=0.1)


def test_suggestion_is_the_steepest_fall_of_a_known_curve():
    lrs = list(np.logspace(-7, 0, 200))
    # Flat, falls fastest around lr=1e-4, bottoms out near 1e-2, then diverges.
    losses = [1.0 - 0.5 * math.tanh(2 * (math.log10(lr) + 4)) + max(0.0, math.log10(lr) + 2) ** 2
              for lr in lrs]
    suggestion, minimum = lr_finder.suggest_learning_rate(lrs, losses)
    assert 5e-5 < suggestion < 2e-4 and 1e-3 < minimum < 3e-2


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(st.lists(st.floats(0.0, 10.0), min_size=3, max_size=120))
def test_suggestion_is_always_inside_the_sweep(losses):
    lrs = list(np.logspace(-7, 0, len(losses)))
    suggestion, minimum = lr_finder.suggest_learning_rate(lrs, losses)
    assert lrs[0] <= suggestion <= lrs[-1] and lrs[0] <= minimum <= lrs[-1]
