"""A run on a remote file system (TensorFlow's ram:// standing in for gs://) and a run
evaluated from another working directory: every run file goes through RunDirectory."""

import csv
import io
import json
import os
import uuid

import numpy as np
import pytest

from _evaluation_run import copy_tree, make_run
from kmedimg import cli
from kmedimg.core.run_directory import RunDirectory

tf = pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("remote_run")
    # data.path stored relative to the run directory, as a run that travels with its data.
    return make_run(str(root), num_images=160, epochs=2, data_path="../data")


@pytest.fixture(scope="module")
def remote_run(local_run):
    """The run and its dataset copied to ram://; config.yaml names the ram:// dataset."""
    run_dir, data_dir, model = local_run
    root = f"ram://kmedimg-eval-{uuid.uuid4().hex}"
    remote_data = copy_tree(data_dir, f"{root}/data")
    remote_dir = copy_tree(run_dir, f"{root}/run")
    run = RunDirectory(remote_dir)
    config = run.read_config()
    config["data"]["path"] = remote_data
    import yaml

    run.write_text(RunDirectory.CONFIG, yaml.safe_dump(config, sort_keys=False))
    return remote_dir, remote_data, model


def test_evaluate_from_another_working_directory(local_run, tmp_path, monkeypatch, capsys):
    run_dir, data_dir, _ = local_run
    assert RunDirectory(run_dir).read_config()["data"]["path"] == "../data"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert cli.main(["evaluate", run_dir, "--bootstrap", "20", "--no-report"]) == 0
    assert "roc_auc" in capsys.readouterr().out
    result = RunDirectory(run_dir).read_json(RunDirectory.EVALUATION_METRICS.format(split="test"))
    assert os.path.samefile(result["data"], data_dir)
    assert not os.listdir(elsewhere)  # nothing written to the working directory


def test_evaluate_a_ram_run(remote_run, capsys):
    remote_dir, remote_data, _ = remote_run
    assert cli.main(["evaluate", remote_dir, "--bootstrap", "20"]) == 0
    assert "roc_auc" in capsys.readouterr().out
    run = RunDirectory(remote_dir)
    result = run.read_json(RunDirectory.EVALUATION_METRICS.format(split="test"))
    manifest = json.loads(tf.io.gfile.GFile(remote_data + "/dataset.json").read())
    assert result["data"] == remote_data and result["model"] == run.model_path
    assert result["num_samples"] == manifest["splits"]["test"]["count"]
    assert run.read_json(RunDirectory.THRESHOLD)["chosen_on"] == "val"
    text = run.read_text(RunDirectory.PREDICTIONS.format(split="test"))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == result["num_samples"]
    assert "Grad-CAM" in run.read_text(RunDirectory.REPORT)


def test_predict_explain_export_from_a_ram_run(remote_run, tmp_path):
    from PIL import Image

    remote_dir, remote_data, model = remote_run
    # Records of a ram:// dataset with a ram:// run.
    out = tmp_path / "records.csv"
    assert cli.main(["predict", remote_dir, remote_data, "--split", "val", "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out)))
    assert rows and set(rows[0]) == {"id", "true", "p_opacity", "predicted", "decision_rule"}
    # Local image files.
    image = (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)
    png = tmp_path / "scan.png"
    Image.fromarray(image).save(png)
    out = tmp_path / "files.csv"
    assert cli.main(["predict", remote_dir, str(png), "--out", str(out)]) == 0
    (row,) = list(csv.DictReader(open(out)))
    expected = float(np.asarray(model(image[np.newaxis, ..., np.newaxis].astype("float32"),
                                      training=False))[0, 0])
    assert float(row["p_opacity"]) == pytest.approx(expected, abs=1e-5)
    # Explanations, written locally.
    cams = tmp_path / "cams"
    assert cli.main(["explain", remote_dir, str(png), "--out", str(cams)]) == 0
    assert os.listdir(cams) == ["scan.gradcam.png"]
    # An export to a local folder, checked with Keras' own loader.
    exported = tmp_path / "export"
    assert cli.main(["export", remote_dir, "--out", str(exported)]) == 0
    record = json.load(open(exported / "export.json"))
    assert record["source"] == RunDirectory(remote_dir).model_path
    assert record["check"]["max_abs_difference"] <= 1e-5
    # Without --out the export lands next to the run, on the same file system.
    assert cli.main(["export", remote_dir, "--format", "tflite"]) == 0
    run = RunDirectory(remote_dir)
    record = run.read_json(f"{RunDirectory.EXPORT}/tflite/export.json")
    assert record["path"] == run.file(f"{RunDirectory.EXPORT}/tflite/model.tflite")
    assert tf.io.gfile.exists(record["path"]) and record["check"]["max_abs_difference"] <= 1e-4
