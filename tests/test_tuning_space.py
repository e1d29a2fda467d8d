"""The `tune:` section, epoch scaling/windowing, project records, roles and the table:
the plain-data parts of kmedimg.tuning (no training)."""

import io
import json
import os

import keras_tuner
import pytest

from kmedimg.tuning import distributed, project, results
from kmedimg.tuning import scale_epochs
from kmedimg.config import TUNER_NAMES, FloatRange, IntRange, SearchSpace, TuneSettings
from kmedimg.tuning.table import TrialTable
from kmedimg.tuning.tuners import get_tuner_class, list_tuners


def test_defaults_search_the_three_named_hyperparameters():
    settings = TuneSettings.from_dict(None)
    space = settings.search_space
    assert settings.tuner == "hyperband" and settings.objective == "val_auc"
    assert settings.direction == "max"
    assert space.learning_rate == FloatRange(1e-5, 1e-2, log=True)
    assert space.dropout.step == 0.1 and space.freeze_depth == IntRange(0, None)
    assert space.weight_decay is None and space.backbone is None and space.recipe is None


def test_yaml_section_is_parsed_and_round_trips():
    raw = {
        "tuner": "random", "max_trials": 4, "objective": "val_loss",
        "search_space": {
            "learning_rate": [1e-4, 1e-2], "dropout": {"min": 0.1, "max": 0.4, "step": 0.1},
            "freeze_depth": {"min": 1, "max": 5}, "weight_decay": {"min": 1e-6, "max": 1e-3},
            "hidden_units": [0, 64], "augmentation_strength": {"min": 0, "max": 1, "step": 0.5},
            "backbone": ["lenet5"], "recipe": ["two_stage", "partial_finetune"],
        },
    }
    settings = TuneSettings.from_dict(raw)
    assert settings.direction == "min"  # inferred from a loss objective
    assert settings.search_space.learning_rate.log
    assert settings.search_space.freeze_depth == IntRange(1, 5, 1)
    assert settings.search_space.recipe == ("two_stage", "partial_finetune")
    assert TuneSettings.from_dict(settings.to_dict()) == settings


def test_recipe_files_tune_section_is_checked_when_loaded(tmp_path):
    from kmedimg.config import load_config

    good = tmp_path / "good.yaml"
    good.write_text("tune: {tuner: grid, search_space: {dropout: null}}\n")
    settings = TuneSettings.from_dict(load_config(good).tune)
    assert settings.tuner == "grid" and settings.search_space.dropout is None
    bad = tmp_path / "bad.yaml"
    bad.write_text("tune: {search_space: {dropout: [0.1, 1.5]}}\n")
    message = r"bad.yaml: key `tune.search_space.dropout` must be a range in \[0, 1\)"
    with pytest.raises(ValueError, match=message):
        load_config(bad)


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"tuner": "annealing"}, "['hyperband', 'bayesian', 'random', 'grid']"),
        ({"max_trials": 0}, "`tune.max_trials` must be >= 1"),
        ({"search_space": {"learning_rat": [1e-4, 1e-2]}}, "Did you mean `learning_rate`"),
        ({"search_space": {"learning_rate": [0.0, 1e-2]}}, "> 0 for a log-scale range"),
        ({"search_space": {"dropout": [0.2, 1.0]}}, "must be a range in [0, 1)"),
        ({"search_space": {"freeze_depth": {"min": 3, "max": 1}}}, "must be an int >= 3"),
        ({"search_space": {"hidden_units": [64, 64]}}, "without repeats"),
        ({"search_space": {"dropout": {"min": 0, "max": 0.5, "stride": 1}}}, "unknown key"),
        ({"search_space": {"backbone": ["resnet9"]}}, "Did you mean 'resnet50'"),
        ({"search_space": {"recipe": ["two_stages"]}}, "Did you mean 'two_stage'"),
        ({"direction": "up"}, "[None, 'max', 'min']"),
        ({"factor": 1}, ">= 2 for Hyperband"),
        ({"colour": 1}, "unknown key `tune.colour`"),
    ],
)
def test_bad_sections_name_the_key_and_the_value(raw, message):
    with pytest.raises(ValueError, match="^recipe.yaml: .*Received: tune.") as error:
        TuneSettings.from_dict(raw, source="recipe.yaml")
    assert message in str(error.value)


def test_a_search_space_built_in_python_is_checked_too():
    with pytest.raises(ValueError, match="tune.search_space.dropout.*Received"):
        SearchSpace(dropout=FloatRange(0.0, 1.5))
    assert SearchSpace(hidden_units=[0, 8]).hidden_units == (0, 8)


def test_scale_epochs_keeps_proportions_and_one_epoch_per_stage():
    options = {"head_epochs": 3, "finetune_epochs": 10, "warmup_epochs": 2, "freeze_depth": 0.5}
    scaled = scale_epochs(options, 6)
    assert scaled["head_epochs"] + scaled["finetune_epochs"] == 6
    assert scaled["head_epochs"] >= 1 and scaled["finetune_epochs"] > scaled["head_epochs"]
    assert scaled["warmup_epochs"] < min(scaled["head_epochs"], scaled["finetune_epochs"])
    assert scaled["freeze_depth"] == 0.5
    assert scale_epochs(options, 13) == options
    with pytest.raises(ValueError, match="at least 2"):
        scale_epochs(options, 1)


def test_project_records_its_search_and_refuses_another(tmp_path):
    record = {"tuner": {"tuner": "random"}, "space": [{"name": "dropout", "max": 0.5}]}
    assert project.claim_project(tmp_path, "p", record) is False
    assert project.claim_project(tmp_path, "p", record) is True
    other = {"tuner": {"tuner": "random"}, "space": [{"name": "dropout", "max": 0.3}]}
    with pytest.raises(ValueError, match=r"different search \(space.*--overwrite"):
        project.claim_project(tmp_path, "p", other)
    assert project.claim_project(tmp_path, "p", other, overwrite=True) is False
    with open(os.path.join(tmp_path, "p", project.RECORD_NAME)) as handle:
        assert json.load(handle) == other
    os.makedirs(tmp_path / "foreign")
    (tmp_path / "foreign" / "x.txt").write_text("not a project")
    with pytest.raises(ValueError, match="not a kmedimg tuning project"):
        project.claim_project(tmp_path, "foreign", record)


def test_configure_role_sets_keras_tuner_environment():
    env = {}
    assert distributed.configure_role("chief", "127.0.0.1:9001", environ=env) == "chief"
    assert env == {"KERASTUNER_TUNER_ID": "chief", "KERASTUNER_ORACLE_IP": "127.0.0.1",
                   "KERASTUNER_ORACLE_PORT": "9001"}
    assert distributed.current_role(env) == "chief"
    assert distributed.configure_role("worker", "10.0.0.2:80", "w-3", environ=env) == "w-3"
    assert distributed.current_role(env) == "worker"
    assert distributed.configure_role(None, environ=env) is None and env == {}
    for bad in ("localhost", "host:0", "host:http"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            distributed.configure_role("worker", bad, environ={})
    with pytest.raises(ValueError, match="must not contain 'chief'"):
        distributed.configure_role("worker", "h:1", tuner_id="subchief", environ={})


def test_tuner_registry_lists_the_four_strategies():
    assert list_tuners() == ["bayesian", "grid", "hyperband", "random"]
    assert list_tuners() == sorted(TUNER_NAMES)  # what a recipe file's `tune.tuner` accepts
    assert issubclass(get_tuner_class("hyperband"), keras_tuner.Hyperband)
    with pytest.raises(ValueError, match="Registered: bayesian, grid, hyperband, random"):
        get_tuner_class("optuna")


def _trial(trial_id, score, **values):
    hp = keras_tuner.HyperParameters()
    hp.values.update(values)
    trial = keras_tuner.engine.trial.Trial(hp, trial_id=trial_id, status="COMPLETED")
    trial.score = score
    return trial


def test_table_rows_and_results_files(tmp_path):
    stream = io.StringIO()
    table = TrialTable(stream=stream, worker="w0")
    for trial in (_trial("0", 0.7, learning_rate=1e-3, dropout=0.1),
                  _trial("1", 0.9, learning_rate=1e-4, dropout=0.3),
                  _trial("2", 0.8, learning_rate=3e-3, dropout=0.2)):
        table.begin(trial)
        table.end(trial)
    lines = stream.getvalue().splitlines()
    started = [line for line in lines if line.startswith("  > trial")]
    assert started[0] == "  > trial 0 started on w0: learning_rate=0.001 dropout=0.1"
    lines = [line for line in lines if not line.startswith("  > trial")]
    assert lines[0].split() == ["trial", "status", "val_auc", "best", "learning_rate",
                                "dropout", "seconds", "worker"]
    assert [line.split()[3] for line in lines[1:]] == ["0.7", "0.9", "0.9"]

    class Oracle:
        trials = {t.trial_id: t for t in (_trial("0", 0.7, learning_rate=1e-3, recipe="a"),
                                          _trial("1", 0.9, learning_rate=1e-4, recipe="b"))}

    csv_path, plot_path = results.export_results(Oracle(), str(tmp_path))
    text = open(csv_path).read().splitlines()
    assert text[0] == "trial_id,status,score,best_step,learning_rate,recipe"
    assert text[2].startswith("1,COMPLETED,0.9,")
    assert os.path.getsize(plot_path) > 1000
