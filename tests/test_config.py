"""Recipe files: strict YAML loading, named errors, overrides, and every shipped recipe."""

import dataclasses
import pathlib
import subprocess
import sys

import pytest

from kmedimg import config as config_lib
from kmedimg.config import config_from_dict, load_config, parse_override

RECIPES_DIR = pathlib.Path(__file__).resolve().parents[1] / "recipes"


def _write(tmp_path, text, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_minimal_file_gets_defaults(tmp_path):
    path = _write(tmp_path, "recipe: {name: two_stage, freeze_depth: 3}\n")
    config = load_config(path)
    assert config.recipe.name == "two_stage"
    assert config.recipe.options == {"freeze_depth": 3}
    assert config.training.seed == 0
    assert config.data.batch_size == 32


def test_round_trip_through_yaml(tmp_path):
    config = config_from_dict({
        "data": {"path": "/data/x", "image_size": [64, 48]},
        "model": {"backbone": "lenet5", "augmentation": {"rotation": 5.0}},
        "recipe": {"name": "partial_finetune", "freeze_depth": 0.5, "block_lr_decay": 0.8},
        "training": {"weight_decay": 0, "class_weight": [1.0, 3.0]},
    })
    path = _write(tmp_path, config.to_yaml())
    again = load_config(path)
    assert again == config
    # An int given for a float field is stored as a float.
    assert isinstance(again.training.weight_decay, float)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("training: {optimizr: adam}\n",
         ["recipe.yaml", "`training.optimizr`", "Allowed keys", "'optimizer'", "Did you mean `optimizer`"]),
        ("traning: {seed: 1}\n", ["recipe.yaml", "unknown section `traning`", "Did you mean `training`"]),
        ("training: {seed: ten}\n", ["recipe.yaml", "`training.seed`", "type int", "Received: training.seed='ten'"]),
        ("training: {optimizer: rmsprop}\n",
         ["recipe.yaml", "`training.optimizer`", "['adamw', 'adam', 'sgd']", "rmsprop"]),
        ("training: {deterministic: 1}\n", ["`training.deterministic`", "type bool"]),
        ("data: {batch_size: 0}\n", ["`data.batch_size`", ">= 1"]),
        ("data: {image_size: [64, 64, 3]}\n", ["`data.image_size`", "[height, width]"]),
        ("distribute: {kind: gpus}\n", ["`distribute.kind`", "'multiworker'", "gpus"]),
        ("recipe: {name: two_stages}\n", ["`recipe.name`", "'two_stage'", "two_stages"]),
        ("recipe: {name: two_stage, freeze: 3}\n",
         ["recipe.yaml", "section `recipe`", "unknown option `freeze`", "freeze_depth"]),
        ("recipe: {name: two_stage, head_epochs: 2.5}\n", ["option `head_epochs`", "type int"]),
        ("recipe: {name: two_stage, freeze_depth: all}\n", ["feature_extractor"]),
        ("training: {class_weight: sometimes}\n", ["`training.class_weight`", "'balanced'"]),
        ("training: [1, 2]\n", ["section `training` must be a mapping"]),
        ("- just\n- a list\n", ["must be a mapping of sections"]),
        ("training: {seed: [unclosed\n", ["recipe.yaml", "not valid YAML"]),
        ("training: !!python/object/apply:os.system [echo hi]\n", ["not valid YAML"]),
    ],
)
def test_bad_files_give_named_errors(tmp_path, text, expected):
    path = _write(tmp_path, text)
    with pytest.raises(ValueError) as info:
        load_config(path)
    for fragment in expected:
        assert fragment in str(info.value), str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_overrides_are_typed_and_checked(tmp_path):
    path = _write(tmp_path, "recipe: {name: two_stage}\n")
    config = load_config(path, [
        "training.seed=3", "data.image_size=[96, 96]", "recipe.freeze_depth=0.25",
        "model.weights=null", "training.deterministic=false", "data.path=/tmp/x",
    ])
    assert config.training.seed == 3
    assert config.data.image_size == [96, 96]
    assert config.recipe.options["freeze_depth"] == 0.25
    assert config.model.weights is None
    assert config.training.deterministic is False
    assert config.data.path == "/tmp/x"
    with pytest.raises(ValueError, match=r"--set training.seed=x.*`training.seed`.*type int"):
        load_config(path, ["training.seed=x"])
    with pytest.raises(ValueError, match="`training.sed`"):
        load_config(path, ["training.sed=1"])
    with pytest.raises(ValueError, match="section.key=value"):
        parse_override("training.seed")
    seeded = _write(tmp_path, "training: {seed: 1}\n", "seeded.yaml")
    with pytest.raises(ValueError, match="is a value, not a section"):
        load_config(seeded, ["training.seed.x=1"])


def test_strategy_kinds_match_distribute():
    from kmedimg import distribute

    field = {f.name: f for f in dataclasses.fields(config_lib.DistributeConfig)}["kind"]
    assert set(field.metadata["choices"]) == set(distribute.STRATEGY_KINDS)


def test_tune_section_is_checked_by_the_tuner_settings(tmp_path):
    path = _write(tmp_path, "tune: {tuner: random, max_trails: 3}\n")
    with pytest.raises(ValueError, match="max_trails.*Did you mean `max_trials`"):
        load_config(path)
    ok = load_config(_write(tmp_path, "tune: {tuner: random, max_trials: 3}\n", "ok.yaml"))
    assert ok.tune == {"tuner": "random", "max_trials": 3}


def test_tune_section_is_checked_without_keras_tuner(tmp_path):
    """The `[tune]` extra is needed to search, not to find a typo in `tune:`."""
    path = _write(tmp_path, "tune: {tuner: random, search_space: {learning_rat: [0.1, 1]}}\n")
    script = (
        "import sys; sys.modules['keras_tuner'] = None\n"
        "from kmedimg.config import load_config\n"
        f"try:\n    load_config({str(path)!r})\n"
        "except ValueError as error:\n    print(error)\n"
        "assert 'keras_tuner' not in sys.modules or sys.modules['keras_tuner'] is None\n"
    )
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True).stdout
    assert "tune.search_space.learning_rat" in output and "learning_rate" in output, output


def test_config_imports_nothing_above_it():
    script = (
        "import sys, kmedimg.config\n"
        "print(sorted(m for m in sys.modules if m.startswith(('kmedimg.tuning', "
        "'kmedimg.training', 'kmedimg.evaluation', 'keras_tuner'))))\n"
    )
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True).stdout
    assert output.strip() == "[]", output


@pytest.mark.parametrize("path", sorted(RECIPES_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_loads(path):
    config = load_config(path)
    from kmedimg import recipes
    from kmedimg.models import list_backbones

    assert config.model.backbone in list_backbones()
    recipe = recipes.get_recipe(config.recipe.name, **config.recipe.options)
    assert recipe.stages


def test_shipped_recipes_cover_every_approach():
    from kmedimg import recipes

    names = {path.stem for path in RECIPES_DIR.glob("*.yaml")}
    assert set(recipes.list_recipes()) <= names
    assert {"quickstart", "pneumonia_xray", "breast_ultrasound"} <= names
