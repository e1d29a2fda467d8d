"""`kmedimg weights`: ImageNet files without the internet, and the local weights bank."""

import hashlib
import json
import os
import pathlib

import keras
import numpy as np
import pytest

from kmedimg import cli, models, recipes, training
from kmedimg.config import config_from_dict
from _evaluation_run import make_run
from helpers import write_legacy_h5

MOBILENET_96 = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5"
RESNET50 = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"


@pytest.fixture
def homes(tmp_path, monkeypatch):
    keras_home = tmp_path / "keras_home"
    monkeypatch.setenv("KERAS_HOME", str(keras_home))
    monkeypatch.setenv("KMEDIMG_HOME", str(tmp_path / "kmedimg_home"))
    monkeypatch.setenv("KMEDIMG_OFFLINE", "1")
    return keras_home / "models"


def test_list_shows_a_seeded_file_as_cached_and_import_checks_the_architecture(homes, tmp_path, capsys):
    usb = tmp_path / "usb"
    usb.mkdir()
    good = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(96, 96, 3))
    write_legacy_h5(good, usb / MOBILENET_96)
    # The same name holding another architecture's weights (MobileNet v1).
    wrong_dir = tmp_path / "wrong"
    wrong_dir.mkdir()
    wrong = keras.applications.MobileNet(include_top=False, weights=None, input_shape=(96, 96, 3))
    write_legacy_h5(wrong, wrong_dir / MOBILENET_96)

    assert cli.main(["weights", "import", str(wrong_dir / MOBILENET_96), "--backbone", "mobilenetv2"]) == 2
    error = capsys.readouterr().err
    assert "does not fit 'mobilenetv2' at 96x96" in error and "Traceback" not in error
    assert not (homes / MOBILENET_96).exists()

    assert cli.main(["weights", "import", str(usb / MOBILENET_96), "--backbone", "mobilenetv2"]) == 0
    assert "architecture checked" in capsys.readouterr().out
    assert (homes / MOBILENET_96).read_bytes() == (usb / MOBILENET_96).read_bytes()

    assert cli.main(["weights", "list", "--backbone", "mobilenetv2"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    cached = {row[1]: row[2] for row in rows if row and row[0] == "mobilenetv2"}
    assert cached[MOBILENET_96] == "yes"
    assert cached[MOBILENET_96.replace("_96_", "_224_")] == "no"


def test_import_refuses_a_file_whose_hash_differs_from_the_one_keras_publishes(homes, tmp_path, capsys):
    fake = tmp_path / RESNET50
    fake.write_bytes(b"not the ImageNet weights")
    assert cli.main(["weights", "import", str(fake), "--backbone", "resnet50"]) == 2
    error = capsys.readouterr().err
    # Keras publishes this md5 in keras/src/applications/resnet.py (WEIGHTS_HASHES).
    assert "expected 4d473c1dd8becc155b73f8504c6f6626" in error
    assert f"got {hashlib.md5(fake.read_bytes()).hexdigest()}" in error
    assert not (homes / RESNET50).exists()


def test_offline_imagenet_recipe_fails_before_any_run_directory(homes, tmp_path, capsys):
    from kmedimg.data.synthetic import make_phantom_dataset

    data = tmp_path / "data"
    make_phantom_dataset(data, num_images=24, image_size=96, seed=0, val_fraction=0.25, test_fraction=0.25)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model: {backbone: mobilenetv2, weights: imagenet}\n"
                      "recipe: {name: two_stage}\ndata: {image_size: 96}\n")
    run_dir = tmp_path / "run"
    code = cli.main(["train", str(recipe), "--data", str(data), "--out", str(run_dir), "--quiet"])
    captured = capsys.readouterr()
    assert code == 2
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in captured.err
    assert MOBILENET_96 in lines[0]
    assert "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/" in lines[0]
    assert "kmedimg weights import FILE" in lines[0]
    assert not run_dir.exists()

    # An unknown bank name is refused at the same point.
    recipe.write_text("model: {backbone: lenet5, weights: 'bank:nothing'}\n"
                      "recipe: {name: two_stage}\ndata: {image_size: 96}\n")
    assert cli.main(["train", str(recipe), "--data", str(data), "--out", str(run_dir), "--quiet"]) == 2
    assert "No weights bank entry 'nothing'" in capsys.readouterr().err
    assert not run_dir.exists()


def test_a_bank_entry_from_a_finished_run_is_what_a_recipe_starts_from(homes, tmp_path, capsys):
    run_dir, data_dir, trained = make_run(str(tmp_path / "source"), num_images=64, epochs=1)
    assert cli.main(["weights", "add", run_dir, "--name", "phantom_lenet"]) == 0
    assert "bank:phantom_lenet" in capsys.readouterr().out
    assert cli.main(["weights", "add", run_dir, "--name", "phantom_lenet"]) == 2
    assert "already has an entry 'phantom_lenet'" in capsys.readouterr().err

    entry = json.loads((tmp_path / "kmedimg_home" / "weights" / "phantom_lenet" / "entry.json").read_text())
    assert entry["backbone"] == "lenet5_modern" and entry["channels"] == 1
    assert entry["source_run"] == os.path.abspath(run_dir) and len(entry["sha256"]) == 64
    assert len(entry["dataset_fingerprint"]) == 64

    config = config_from_dict({
        "data": {"path": data_dir, "batch_size": 8, "image_size": 64},
        "model": {"backbone": "lenet5_modern", "weights": "bank:phantom_lenet"},
        "recipe": {"name": "two_stage", "head_epochs": 1, "finetune_epochs": 1},
        "training": {"run_dir": str(tmp_path / "run"), "steps_per_epoch": 2, "tensorboard": False,
                     "verbose": 0},
        "evaluation": {"bootstrap": 20},
    })
    recipe = recipes.get_recipe("two_stage", head_epochs=1, finetune_epochs=1)
    initial = models.get_backbone_model(training.build_model(config, 1, (64, 64, 1), recipe=recipe))
    stored = models.get_backbone_model(trained)
    assert len(initial.weights) == len(stored.weights)
    for got, want in zip(initial.weights, stored.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(want))
    result = training.Trainer(config, progress=False).fit()
    assert result.metrics["stages"][-1]["epochs_run"] == 1

    assert cli.main(["weights", "verify"]) == 0
    assert "ok   bank     phantom_lenet: sha256 ok, loads" in capsys.readouterr().out


def test_an_unknown_bank_name_is_refused_before_training(homes, tmp_path):
    with pytest.raises(ValueError, match=r"No weights bank entry 'nothing'.*kmedimg weights add"):
        models.build_classifier("lenet5", 1, (32, 32, 1), weights="bank:nothing")


def test_list_shows_bank_entries_and_verify_reports_a_changed_file(homes, capsys):
    backbone = models.get_backbone_model(models.build_classifier("lenet5", 1, (32, 32, 1)))
    record = models.bank.add_entry(backbone, "tiny", "/runs/tiny", "")
    assert cli.main(["weights", "list", "--backbone", "lenet5"]) == 0
    output = capsys.readouterr().out
    assert "Weights bank" in output and "1 entries" in output
    assert f"tiny  lenet5    32x32  1         /runs/tiny  {record['sha256']}" in output
    path = pathlib.Path(os.environ["KMEDIMG_HOME"]) / "weights" / "tiny" / "backbone.keras"
    path.write_bytes(path.read_bytes() + b"\0")
    assert cli.main(["weights", "verify"]) == 1
    assert "FAIL bank     tiny: sha256" in capsys.readouterr().out
