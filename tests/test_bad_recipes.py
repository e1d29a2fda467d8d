"""Bad recipe files: every one is refused at load, in one message naming the file and key.

Attacks from issue 14 ("Recipes"): duplicate keys, alias bombs, bad backbone / head /
augmentation / seed values, NaN and infinite numbers, unknown `load_options`, and
random mutations of a valid recipe (Hypothesis): loading either succeeds or raises a
`ValueError` naming the file, never another exception.
"""

import dataclasses
import inspect
import os
import pathlib
import subprocess
import sys
import time

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kmedimg.config import load_config
from kmedimg.config.sections import AugmentationConfig
from kmedimg.layers.medical_augmentation import MedicalAugmentation
from kmedimg.recipes import Stage

ROOT = pathlib.Path(__file__).resolve().parents[1]

VALID = """\
description: a valid recipe to mutate
data:
  path: data/phantoms
  image_size: 32
  batch_size: 8
  load_options: {cache: false, shuffle_buffer: 64}
model:
  backbone: mobilenetv2
  head: avg
  dropout: 0.2
  augmentation: {flip: horizontal, rotation: 5.0}
recipe:
  name: two_stage
  head_epochs: 1
  finetune_epochs: 2
  freeze_depth: 0.5
training:
  seed: 3
  weight_decay: 1.0e-4
  early_stopping_patience: 2
evaluation:
  bootstrap: 100
  confidence: 0.9
"""


def _write(tmp_path, text, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _error(tmp_path, text, overrides=()):
    path = _write(tmp_path, text)
    with pytest.raises(ValueError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert str(path) in message, message
    assert "\n" not in message, message
    return message


def test_the_valid_recipe_loads(tmp_path):
    config = load_config(_write(tmp_path, VALID))
    assert config.model.augmentation == {"flip": "horizontal", "rotation": 5.0}
    assert config.data.load_options == {"cache": False, "shuffle_buffer": 64}


# -- duplicate keys ----------------------------------------------------------------


@pytest.mark.parametrize("text, key, lines", [
    ("training:\n  seed: 1\n  seed: 2\n", "training.seed", "lines 2 and 3"),
    ("training: {seed: 1}\nmodel: {}\ntraining: {seed: 2}\n", "training", "lines 1 and 3"),
    ("model:\n  augmentation:\n    rotation: 1\n    rotation: 2\n",
     "model.augmentation.rotation", "lines 3 and 4"),
])
def test_duplicate_keys_are_refused_naming_both_lines(tmp_path, text, key, lines):
    message = _error(tmp_path, text)
    assert f"duplicate key `{key}`" in message, message
    assert lines in message, message


def test_merge_keys_may_override_a_merged_key(tmp_path):
    text = ("model:\n  augmentation:\n    <<: {rotation: 3.0, zoom: 0.2}\n"
            "    rotation: 5.0\n")
    config = load_config(_write(tmp_path, text))
    assert config.model.augmentation == {"rotation": 5.0, "zoom": 0.2}


# -- alias bombs -------------------------------------------------------------------


def _alias_bomb(levels=9, width=9):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for level in range(1, levels):
        refs = ", ".join([f"*a{level - 1}"] * width)
        lines.append(f"a{level}: &a{level} [{refs}]")
    return "model:\n  augmentation:\n" + "".join(f"    {line}\n" for line in lines)


def test_alias_bomb_is_refused_quickly(tmp_path):
    start = time.perf_counter()
    message = _error(tmp_path, _alias_bomb())
    assert time.perf_counter() - start < 2.0
    assert "aliases" in message and "expand" in message, message


def test_recursive_alias_is_refused(tmp_path):
    message = _error(tmp_path, "model:\n  augmentation: &a [1, *a]\n")
    assert "recursive" in message, message


def test_a_few_aliases_are_fine(tmp_path):
    text = ("data: {path: &p data/x, image_size: &s 32}\n"
            "description: *p\n"
            "training: {seed: *s}\n")
    assert load_config(_write(tmp_path, text)).training.seed == 32


# -- bad values ----------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("model: {backbone: resnet9000}\n", ["`model.backbone`", "'mobilenetv2'", "resnet9000"]),
    ("model: {backbone: mobilenetv3}\n", ["`model.backbone`", "Did you mean"]),
    ("model: {head: median}\n", ["`model.head`", "'avg'", "'gem'", "median"]),
    ("model: {grey_weights: average}\n", ["`model.grey_weights`", "'fold'"]),
    ("model: {augmentation: heavy}\n", ["`model.augmentation`", "'default'", "heavy"]),
    ("model: {augmentation: {rotatoin: 5}}\n",
     ["unknown key `model.augmentation.rotatoin`", "Did you mean `rotation`"]),
    ("model: {augmentation: {rotation: 500}}\n",
     ["`model.augmentation.rotation`", "[0, 180", "500"]),
    ("model: {augmentation: {flip: diagonal}}\n", ["`model.augmentation.flip`", "'vertical'"]),
    ("model: {augmentation: {value_range: [0, 1, 2]}}\n", ["`model.augmentation.value_range`"]),
    ("model: {augmentation: {seed: -4}}\n", ["`model.augmentation.seed`", ">= 0"]),
    ("training: {seed: -1}\n", ["`training.seed`", "-1"]),
    ("training: {seed: 1.5}\n", ["`training.seed`", "int"]),
    ("training: {seed: 99999999999}\n", ["`training.seed`", "4294967295"]),
    ("evaluation: {bootstrap: -10}\n", ["`evaluation.bootstrap`", ">= 0", "-10"]),
    ("evaluation: {confidence: 7.5}\n", ["`evaluation.confidence`", "(0, 1)", "7.5"]),
    ("training: {weight_decay: .nan}\n", ["`training.weight_decay`", "finite", "nan"]),
    ("training: {weight_decay: .inf}\n", ["`training.weight_decay`", "finite", "inf"]),
    ("training: {weight_decay: -0.1}\n", ["`training.weight_decay`", ">= 0"]),
    ("training: {focal_gamma: .inf}\n", ["`training.focal_gamma`", "finite"]),
    ("training: {imbalance_ratio: .inf}\n", ["`training.imbalance_ratio`", "finite"]),
    ("training: {early_stopping_patience: -3}\n", ["`training.early_stopping_patience`"]),
    ("training: {class_weight: [.nan, 1.0]}\n", ["`training.class_weight[0]`", "finite"]),
    ("evaluation: {threshold_target: .nan}\n", ["`evaluation.threshold_target`", "finite"]),
    ("recipe: {name: two_stage, head_learning_rate: .inf}\n",
     ["`recipe.head_learning_rate`", "finite"]),
    ("recipe: {name: two_stage, head_learning_rate: .nan}\n",
     ["`recipe.head_learning_rate`", "finite"]),
    ("recipe: {name: partial_finetune, block_lr_decay: .nan}\n",
     ["`recipe.block_lr_decay`", "finite"]),
    ("recipe: {name: two_stage, head_learning_rate: -0.1}\n",
     ["section `recipe`", "learning_rate", "> 0"]),
    ("tune: {search_space: {learning_rate: {min: .nan, max: 0.1}}}\n",
     ["learning_rate.min", "finite"]),
    ("data: {load_options: {bogus: 1}}\n",
     ["unknown key `data.load_options.bogus`", "'check_records'", "'shuffle_buffer'"]),
    ("data: {load_options: {with_ids: true}}\n", ["`data.load_options.with_ids`"]),
    ("data: {load_options: {shuffle_buffer: 0}}\n", ["`data.load_options.shuffle_buffer`", ">= 1"]),
    ("data: {load_options: {cache: 3}}\n", ["`data.load_options.cache`", "bool or str"]),
    ("data: {load_options: [cache]}\n", ["`data.load_options`", "type dict"]),
])
def test_bad_values_are_refused_at_load(tmp_path, text, expected):
    message = _error(tmp_path, text)
    for fragment in expected:
        assert fragment in message, message


def test_good_edge_values_load(tmp_path):
    text = ("model: {augmentation: default, head: gem}\n"
            "training: {seed: 4294967295, early_stopping_patience: 0}\n"
            "evaluation: {bootstrap: 0}\n"
            "data: {load_options: {cache: /tmp/cache, check_records: false}}\n")
    config = load_config(_write(tmp_path, text))
    assert config.training.seed == 4294967295
    assert config.data.load_options["cache"] == "/tmp/cache"


def test_augmentation_settings_match_the_layer():
    parameters = inspect.signature(MedicalAugmentation.__init__).parameters
    layer = {name: parameter.default for name, parameter in parameters.items()
             if name not in ("self", "kwargs")}
    settings_ = {item.name: (item.default_factory() if item.default is dataclasses.MISSING
                             else item.default)
                 for item in dataclasses.fields(AugmentationConfig)}
    assert settings_ == {name: list(value) if isinstance(value, tuple) else value
                         for name, value in layer.items()}


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_stage_refuses_non_finite_rates_from_python(value):
    with pytest.raises(ValueError, match="finite"):
        Stage("finetune", epochs=2, learning_rate=value)
    with pytest.raises(ValueError, match="finite"):
        Stage("finetune", epochs=2, learning_rate=1e-3, block_lr_decay=value)


def test_override_with_nan_is_refused(tmp_path):
    message = _error(tmp_path, VALID, overrides=["training.weight_decay=.nan"])
    assert "`training.weight_decay`" in message and "finite" in message, message


def test_override_with_duplicate_key_is_refused(tmp_path):
    message = _error(tmp_path, VALID, overrides=["model.augmentation={rotation: 1, rotation: 2}"])
    assert "duplicate key `rotation`" in message, message


# -- the command -------------------------------------------------------------------


def test_train_on_a_bad_recipe_fails_in_one_line_before_any_work(tmp_path):
    recipe = _write(tmp_path, VALID.replace("head: avg", "head: median"))
    run_dir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="-1")
    result = subprocess.run(
        [sys.executable, "-m", "kmedimg", "train", str(recipe), "--out", str(run_dir),
         "--data", str(tmp_path / "no-such-data")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("kmedimg train")]
    assert len(errors) == 1, result.stderr
    assert str(recipe) in errors[0] and "`model.head`" in errors[0], errors[0]
    assert "Traceback" not in result.stderr
    assert not run_dir.exists()


# -- random mutations --------------------------------------------------------------

_YAML_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.lists(st.integers(-5, 5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def _scalar_lines():
    return [index for index, line in enumerate(VALID.splitlines()) if ": " in line]


@st.composite
def _mutated_by_value(draw):
    lines = VALID.splitlines()
    index = draw(st.sampled_from(_scalar_lines()))
    value = yaml.safe_dump(draw(_YAML_VALUES), default_flow_style=True).strip()
    value = value.removesuffix("\n...").removesuffix("...").strip()
    key = lines[index].split(": ", 1)[0]
    lines[index] = f"{key}: {value}"
    return "\n".join(lines) + "\n"


@st.composite
def _mutated_by_text(draw):
    text = VALID
    for _ in range(draw(st.integers(1, 3))):
        position = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["delete", "insert", "replace", "duplicate_line"]))
        character = draw(st.sampled_from(list(" :-[]{},&*!#|>'\"\t\nx0.") + ["\x00"]))
        if action == "delete":
            text = text[:position] + text[position + 1:]
        elif action == "insert":
            text = text[:position] + character + text[position:]
        elif action == "replace":
            text = text[:position] + character + text[position + 1:]
        else:
            lines = text.splitlines(keepends=True)
            line = draw(st.integers(0, max(0, len(lines) - 1)))
            text = "".join(lines[:line + 1] + lines[line:])
    return text


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(text=st.one_of(_mutated_by_value(), _mutated_by_text()))
def test_mutated_recipes_load_or_name_the_file(tmp_path, text):
    path = _write(tmp_path, text)
    try:
        load_config(path)
    except ValueError as error:
        assert str(path) in str(error), str(error)
