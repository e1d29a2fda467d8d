"""`kmedimg evaluate / predict / explain / export` on a real (tiny) run directory."""

import csv
import html.parser
import io
import json
import os

import numpy as np
import pytest

from _evaluation_run import IMAGE_SIZE, make_run
from kmedimg import cli, evaluation
from kmedimg.data import schema
from kmedimg.evaluation import export, inputs, report
from kmedimg.evaluation.prediction import Predictions


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluation_run")
    run_dir, data_dir, model = make_run(str(root), num_images=160, epochs=2)
    return run_dir, data_dir, model


def _test_images(data_dir, count=8):
    from kmedimg.data.pipeline import load

    images, labels = next(iter(load(data_dir, "test", batch_size=count)))
    return images.numpy(), labels.numpy()


class _Sections(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.sections, self.images, self.stack = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs.get("id"))
        if tag == "img":
            self.images.append(attrs["src"])


def _check_report(text):
    parser = _Sections()
    parser.feed(text)
    assert parser.sections == list(report.SECTIONS)
    from PIL import Image
    import base64

    assert parser.images, "no figures embedded"
    for source in parser.images:
        assert source.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))).verify()
    assert "http://" not in text and "https://" not in text  # self-contained
    return parser


def test_evaluate_command_writes_metrics_predictions_and_report(run, capsys):
    run_dir, data_dir, _ = run
    assert cli.main(["evaluate", run_dir, "--bootstrap", "100", "--tta", "hflip"]) == 0
    out = capsys.readouterr().out
    assert "roc_auc" in out
    evaluation_dir = os.path.join(run_dir, "evaluation")
    with open(os.path.join(evaluation_dir, "metrics_test.json")) as handle:
        result = json.load(handle)
    manifest = json.load(open(os.path.join(data_dir, "dataset.json")))
    assert result["split"] == "test"
    assert result["num_samples"] == manifest["splits"]["test"]["count"]
    assert result["class_counts"] == manifest["splits"]["test"]["class_counts"]
    assert result["threshold"]["chosen_on"] == "val"
    assert result["threshold"]["num_samples"] == manifest["splits"]["val"]["count"]
    assert result["bootstrap"]["n_bootstrap"] == 100
    assert result["tta"]["mode"] == "hflip" and "roc_auc" in result["tta"]["difference"]
    for name in ("roc_auc", "sensitivity", "specificity", "ppv", "npv", "f1", "ece"):
        assert set(result["metrics"][name]) == {"value", "ci_low", "ci_high"}
    with open(os.path.join(evaluation_dir, "predictions_test.csv")) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == result["num_samples"]
    assert {row["true"] for row in rows} <= {"normal", "opacity"}
    assert len({row["id"] for row in rows}) == len(rows)
    # The written probabilities reproduce the metrics.
    labels = np.array([row["true"] == "opacity" for row in rows], int)
    probs = np.array([float(row["p_opacity"]) for row in rows])
    recomputed = evaluation.evaluate(labels, probs, task="binary", split="test", n_bootstrap=0,
                                     threshold=evaluation.Threshold.from_dict(result["threshold"]))
    assert recomputed["metrics"]["roc_auc"]["value"] == pytest.approx(
        result["metrics"]["roc_auc"]["value"], abs=1e-9)
    with open(os.path.join(run_dir, "report.html"), encoding="utf-8") as handle:
        text = handle.read()
    _check_report(text)
    for words in ("Grad-CAM", "chosen on the <b>val</b> split", "Difference", "config.yaml",
                  "finetune", "layer c5_conv (9×9 map)", "viridis"):
        assert words in text
    assert result["grad_cam"] == {"method": "gradcam", "layer": "c5_conv", "feature_map": [9, 9],
                                  "note": None, "warning": None}
    # The operating point chosen on val is refused on val.
    assert cli.main(["evaluate", run_dir, "--split", "val", "--no-report"]) == 2
    assert "chosen on 'val'" in capsys.readouterr().err


def test_report_for_multiclass_and_multilabel_without_run():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 90)
    logits = rng.normal(size=(90, 3)) + 2 * np.eye(3)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    result = evaluation.evaluate(labels, probs, task="multiclass", split="test",
                                 class_names=["a", "b", "c"], n_bootstrap=50)
    text = report.build_report(result, Predictions(np.eye(3)[labels], probs), n_bootstrap=20)
    _check_report(text)
    assert "Per class" in text
    multi = (rng.random((80, 2)) < 0.4).astype(int)
    multi_probs = np.clip(multi * 0.5 + rng.random((80, 2)) * 0.5, 0, 1)
    result = evaluation.evaluate(multi, multi_probs, task="multilabel", split="test",
                                 threshold=evaluation.Threshold.fixed(0.5), n_bootstrap=50)
    cases = [{"group": "Correct", "image": rng.random((16, 16, 1)) * 65535,
              "heatmap": rng.random((16, 16)), "caption": "case"}]
    _check_report(report.build_report(result, Predictions(multi, multi_probs),
                                      cam_cases=cases, n_bootstrap=20))


def test_predict_command_on_files_and_records(run, tmp_path):
    from PIL import Image

    run_dir, data_dir, model = run
    images, _ = _test_images(data_dir, 4)
    paths = []
    for index, image in enumerate(images):
        path = tmp_path / "inputs" / f"case{index}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(image[..., 0].astype(np.uint8)).save(path)
        paths.append(str(path))
    np.save(tmp_path / "inputs" / "case_array.npy", images[0].astype(np.uint8))
    out = tmp_path / "files.csv"
    assert cli.main(["predict", run_dir, str(tmp_path / "inputs"), "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out)))
    assert [os.path.basename(row["input"]) for row in rows] == [
        "case0.png", "case1.png", "case2.png", "case3.png", "case_array.npy"]
    expected = np.asarray(model(images, training=False))[:, 0]
    np.testing.assert_allclose([float(row["p_opacity"]) for row in rows[:4]], expected, atol=1e-5)
    assert float(rows[4]["p_opacity"]) == pytest.approx(expected[0], abs=1e-5)
    assert all(row["predicted"] in ("normal", "opacity") for row in rows)
    records_out = tmp_path / "records.csv"
    assert cli.main(["predict", run_dir, data_dir, "--split", "val", "--out", str(records_out)]) == 0
    rows = list(csv.DictReader(open(records_out)))
    manifest = json.load(open(os.path.join(data_dir, "dataset.json")))
    assert len(rows) == manifest["splits"]["val"]["count"]
    assert set(rows[0]) == {"id", "true", "p_opacity", "predicted", "decision_rule"}
    with pytest.raises(FileNotFoundError, match="no.png"):
        inputs.read_pixels(tmp_path / "no.png")
    assert cli.main(["predict", run_dir, str(tmp_path / "no.png")]) == 2


def test_predict_dicom_folder(run, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    run_dir, _, _ = run
    folder = tmp_path / "dicom"
    folder.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm"):
        dataset = pydicom.dcmread(get_testdata_file(name))
        dataset.save_as(folder / name)
    out = tmp_path / "dicom.csv"
    assert cli.main(["predict", run_dir, str(folder), "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 2 and all(0 <= float(row["p_opacity"]) <= 1 for row in rows)


def test_explain_command_writes_overlays(run, tmp_path):
    run_dir, data_dir, _ = run
    images, _ = _test_images(data_dir, 2)
    paths = []
    for index, image in enumerate(images):
        path = tmp_path / f"scan{index}.npy"
        np.save(path, image.astype(np.uint8))
        paths.append(str(path))
    for method in ("gradcam", "gradcam++", "occlusion"):
        out = tmp_path / method
        assert cli.main(["explain", run_dir, *paths, "--out", str(out), "--method", method]) == 0
        written = sorted(os.listdir(out))
        assert len(written) == 2 and all(name.endswith(".png") for name in written)


@pytest.mark.parametrize("format,quantize", [("keras", "none"), ("savedmodel", "none"),
                                             ("tflite", "none"), ("tflite", "int8")])
def test_export_round_trip_with_real_runtimes(run, tmp_path, format, quantize):
    import keras
    import tensorflow as tf

    run_dir, data_dir, model = run
    images, _ = _test_images(data_dir, 16)
    out = tmp_path / f"{format}-{quantize}"
    # This 2-epoch model's probabilities all sit within ~0.005 of 0.5 (it has not learnt
    # the phantoms), so int8 may change many decisions at its operating point: the flip
    # check is off here; tests/test_inference_faults.py tests it on a confident model.
    assert cli.main(["export", run_dir, "--format", format, "--quantize", quantize,
                     "--out", str(out), "--calibration-samples", "64",
                     "--max-flip-rate", "1"]) == 0
    record = json.load(open(out / "export.json"))
    expected = np.asarray(model(images, training=False))
    if format == "keras":
        loaded = keras.saving.load_model(record["path"], safe_mode=True)
        got = np.asarray(loaded(images, training=False))
    elif format == "savedmodel":
        loaded = tf.saved_model.load(record["path"])  # keep a reference while serving
        got = np.asarray(loaded.serve(tf.constant(images)))
    else:
        got = export.tflite_predict(record["path"], images)
    difference = np.abs(got.reshape(expected.shape) - expected)
    if quantize == "int8":
        # Stated tolerance for full-integer int8 (float32 raw-pixel input/output).
        assert difference.mean() <= 0.05 and difference.max() <= 0.2
    else:
        assert difference.max() <= 1e-4
    assert record["input"]["dtype"] == "float32" and record["input"]["shape"][1:] == [
        IMAGE_SIZE, IMAGE_SIZE, 1]
    runtimes = {"keras": "keras.saving", "savedmodel": "tf.saved_model", "tflite": "tf.lite"}
    assert record["check"]["runtime"].startswith(runtimes[format])


def test_export_errors(run):
    run_dir, _, _ = run
    with pytest.raises(ValueError, match="quantize"):
        export.check_export_options("savedmodel", "int8")
    with pytest.raises(ValueError, match="format"):
        export.check_export_options("onnx", "none")


@pytest.mark.parametrize("command", ["evaluate", "predict", "explain", "export"])
def test_command_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    assert command in capsys.readouterr().out


def test_evaluate_model_on_arrays_and_refusals(run):
    from kmedimg.data.pipeline import load

    _, data_dir, model = run
    images, labels = _test_images(data_dir, 32)
    result = evaluation.evaluate_model(model, (images, labels), "binary", n_bootstrap=20,
                                       class_names=["normal", "opacity"])
    assert result["threshold"]["rule"] == "fixed" and result["threshold"]["values"] == [0.5]
    assert result["num_samples"] == 32 and result["timing"]["test_predict_seconds"] > 0
    expected = np.asarray(model(images, training=False))[:, 0]
    direct = evaluation.evaluate(labels, expected, task="binary", split="test", n_bootstrap=0,
                                 threshold=evaluation.Threshold.fixed(0.5))
    assert result["metrics"]["roc_auc"]["value"] == pytest.approx(
        direct["metrics"]["roc_auc"]["value"], abs=1e-6)
    with pytest.raises(ValueError, match="repeats forever"):
        evaluation.evaluate_model(model, load(data_dir, "train", batch_size=8, training=True),
                                  "binary")
    with pytest.raises(ValueError, match="tta"):
        evaluation.evaluate_model(model, (images, labels), "binary", tta="rotate")


def _save_untrained(path, size):
    """A `.keras` file of an untrained LeNet-5 classifier (no run directory)."""
    from kmedimg.models import build_classifier

    build_classifier("lenet5_modern", 1, (size, size, 1), weights=None).save(path)
    return str(path)


def test_explain_says_when_grad_cam_cannot_localise(tmp_path, capsys):
    """At 32 px LeNet-5's c5_conv map is 1x1: explain uses its 5x5 s4_pool block output,
    and an explicitly requested 1x1 layer gets a warning suggesting occlusion."""
    model_path = _save_untrained(tmp_path / "model.keras", 32)
    image = tmp_path / "scan.npy"
    np.save(image, np.random.default_rng(0).integers(0, 255, (32, 32)).astype(np.uint8))
    assert cli.main(["explain", model_path, str(image), "--out", str(tmp_path / "auto")]) == 0
    assert "warning" not in capsys.readouterr().err
    assert cli.main(["explain", model_path, str(image), "--out", str(tmp_path / "c5"),
                     "--layer", "c5_conv"]) == 0
    captured = capsys.readouterr()
    assert "kmedimg explain: warning: Grad-CAM cannot localise here" in captured.err
    assert "--method occlusion" in captured.err and captured.out.strip().endswith(".gradcam.png")


def test_a_run_saved_by_0_1_0_is_converted_and_a_foreign_model_refused(run, tmp_path, capsys):
    import shutil

    import keras

    from kmedimg.models import ImageClassifier, get_backbone
    from kmedimg.runs import load_model_for_inference
    from helpers import old_build_classifier

    run_dir, data_dir, model = run
    old_run = tmp_path / "old_run"
    old_run.mkdir()
    shutil.copy(os.path.join(run_dir, "config.yaml"), old_run / "config.yaml")
    old = old_build_classifier(model.backbone, get_backbone("lenet5_modern"), (IMAGE_SIZE, IMAGE_SIZE, 1),
                                "binary", 1, dropout=0.0)
    old.get_layer("predictions").set_weights(model.output_dense.get_weights())
    old.save(old_run / "model.keras")
    loaded, info = load_model_for_inference(str(old_run))
    assert isinstance(loaded, ImageClassifier) and (loaded.task, info["task"]) == ("binary", "binary")
    images, _ = _test_images(data_dir, 4)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6)
    assert cli.main(["predict", str(old_run), data_dir, "--out", str(tmp_path / "p.csv")]) == 0
    inputs_ = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 1))
    foreign = keras.Model(inputs_, keras.layers.Dense(1)(keras.layers.Flatten()(inputs_)), name="foreign")
    foreign.save(tmp_path / "foreign.keras")
    capsys.readouterr()
    assert cli.main(["predict", str(tmp_path / "foreign.keras"), data_dir]) == 2
    error = capsys.readouterr().err
    assert "foreign.keras: Expected an ImageClassifier, or a functional classifier written by kmedimg 0.1.0" in error


def test_a_split_without_records_is_named_with_the_splits_that_have_them(run, tmp_path, capsys):
    import shutil

    run_dir, data_dir, _ = run
    assert cli.main(["predict", run_dir, data_dir, "--split", "tset"]) == 2
    error = capsys.readouterr().err
    assert "has no records in split 'tset' to predict; the splits with records are {" in error
    assert "'test': 40" in error and "Received: split='tset'" in error
    # A manifest listing an empty split (the data loader's "split 'x' is empty").
    empty = tmp_path / "data"
    shutil.copytree(data_dir, empty)
    manifest = json.load(open(empty / "dataset.json"))
    manifest["splits"]["test"].update(count=0, shards=[], class_counts={"normal": 0, "opacity": 0})
    manifest["checksum"] = schema.manifest_checksum(manifest)  # an edit the manifest accepts
    json.dump(manifest, open(empty / "dataset.json", "w"))
    assert cli.main(["evaluate", run_dir, "--data", str(empty), "--no-report"]) == 2
    assert "has no records in split 'test' to evaluate" in capsys.readouterr().err
