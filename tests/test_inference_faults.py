"""Bad inputs and faults for `kmedimg predict / explain / export` on a real tiny run.

Real files only: pydicom's own test DICOMs (an RT Plan, a CT cut short or stripped of
its preamble), a PNG whose header declares 10^10 pixels, a pickled object `.npy`, a
`.keras` archive whose config names `os.system`, an HDF5 model named `model.keras`.
"""

import csv
import io
import json
import os
import re
import shutil
import struct
import zipfile
import zlib

import numpy as np
import pytest

from _evaluation_run import make_run
from kmedimg import cli
from kmedimg.core.errors import InputFileError, ModelFileError
from kmedimg.evaluation import export, inputs
from kmedimg.runs import export_run, predict_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("inference_faults")
    return make_run(str(root), num_images=160, epochs=2)


def _png_bomb(path, side=100_000):
    """A valid PNG header declaring side x side pixels (Pillow's bomb check refuses it)."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))
    return path


def _bad_inputs(folder):
    """The broken inputs, each with a fragment of the reason a user must see."""
    pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    folder.mkdir(parents=True, exist_ok=True)
    ct = open(get_testdata_file("CT_small.dcm"), "rb").read()
    shutil.copy(get_testdata_file("rtplan.dcm"), folder / "rtplan.dcm")
    (folder / "truncated.dcm").write_bytes(ct[:len(ct) // 2])
    (folder / "header_only.dcm").write_bytes(ct[:100])
    _png_bomb(folder / "bomb.png")
    np.save(folder / "object.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    np.save(folder / "float.npy", np.zeros((8, 8), np.float64))
    (folder / "cut.npy").write_bytes((folder / "float.npy").read_bytes()[:60])
    return {"rtplan.dcm": "non-image object: RT Plan Storage",
            "truncated.dcm": "truncated Pixel Data",
            "header_only.dcm": "not a DICOM file",
            "bomb.png": "decompression bomb",
            "object.npy": "object array (pickled Python objects), which is refused as unsafe",
            "float.npy": "dtype=float64",
            "cut.npy": "not a readable .npy file"}


def _good_inputs(folder, data_dir):
    from PIL import Image
    from pydicom.data import get_testdata_file

    from kmedimg.data.pipeline import load

    images, _ = next(iter(load(data_dir, "test", batch_size=2)))
    Image.fromarray(images[0, ..., 0].numpy().astype(np.uint8)).save(folder / "good.png")
    np.save(folder / "good.npy", images[1].numpy().astype(np.uint8))
    # A DICOM written without its 128-byte preamble and DICM prefix: read like the importer.
    ct = open(get_testdata_file("CT_small.dcm"), "rb").read()
    (folder / "no_preamble.dcm").write_bytes(ct[132:])
    return {"good.png", "good.npy", "no_preamble.dcm"}


def test_predict_folder_with_broken_files_predicts_the_rest_and_lists_them(run, tmp_path, capsys):
    run_dir, data_dir, _ = run
    folder = tmp_path / "inputs"
    bad = _bad_inputs(folder)
    good = _good_inputs(folder, data_dir)
    out = tmp_path / "predictions.csv"
    assert cli.main(["predict", run_dir, str(folder), "--out", str(out)]) == 1
    rows = list(csv.DictReader(open(out)))
    assert {os.path.basename(row["input"]) for row in rows} == good
    assert all(0 <= float(row["p_opacity"]) <= 1 for row in rows)
    errors = capsys.readouterr().err
    assert f"{len(bad)} of {len(bad) + len(good)} input files could not be read" in errors
    assert "Traceback" not in errors
    for name, reason in bad.items():
        line = next(line for line in errors.splitlines() if name in line)
        assert reason in line, (name, line)


def test_predict_with_only_broken_files_is_one_error(run, tmp_path, capsys):
    run_dir, _, _ = run
    bad = _bad_inputs(tmp_path / "bad")
    assert cli.main(["predict", run_dir, str(tmp_path / "bad")]) == 2
    errors = capsys.readouterr().err
    assert f"None of the {len(bad)} input files could be read" in errors
    assert len(errors.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["rtplan.dcm", "truncated.dcm", "bomb.png", "object.npy"])
def test_explain_and_read_pixels_name_the_bad_file(run, tmp_path, capsys, name):
    run_dir, _, _ = run
    reason = _bad_inputs(tmp_path / "bad")[name]
    path = tmp_path / "bad" / name
    with pytest.raises(InputFileError, match=re.escape(reason)) as error_info:
        inputs.read_pixels(path)
    assert error_info.value.path == str(path) and isinstance(error_info.value, ValueError)
    assert cli.main(["explain", run_dir, str(path), "--out", str(tmp_path / "cams")]) == 2
    errors = capsys.readouterr().err
    assert errors.startswith(f"kmedimg explain: error: {path}: ") and reason in errors


def _evil_keras(run_dir, path, marker):
    """model.keras of the run with config.json replaced by one naming os.system."""
    with zipfile.ZipFile(os.path.join(run_dir, "model.keras")) as source:
        members = {name: source.read(name) for name in source.namelist()}
    members["config.json"] = json.dumps({
        "module": "os", "class_name": "system", "registered_name": "system",
        "config": {"command": f"touch {marker}"}}).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _model_command(command, model, image, out):
    return {"predict": ["predict", model, image],
            "explain": ["explain", model, image, "--out", out],
            "export": ["export", model, "--out", out],
            "evaluate": ["evaluate", os.path.dirname(model)]}[command]


@pytest.mark.parametrize("command", ["predict", "explain", "export", "evaluate"])
def test_model_naming_os_system_is_refused_and_runs_nothing(run, tmp_path, capsys, command):
    run_dir, data_dir, _ = run
    marker = tmp_path / "PWNED"
    evil = _evil_keras(run_dir, tmp_path / "model.keras", marker)
    _good_inputs(tmp_path, data_dir)
    assert cli.main(_model_command(command, str(evil), str(tmp_path / "good.png"),
                                   str(tmp_path / "out"))) == 2
    errors = capsys.readouterr().err
    assert "refused as unsafe" in errors and "'os.system'" in errors
    assert "Nothing from the file was run" in errors and "Traceback" not in errors
    if command == "predict":  # the library function refuses it the same way
        with pytest.raises(ModelFileError, match="refused as unsafe"):
            predict_run(str(evil), [str(tmp_path / "good.png")])
    assert not marker.exists()


def test_hdf5_file_named_model_keras_says_what_it_is(run, tmp_path, capsys):
    run_dir, _, model = run
    h5_run = tmp_path / "h5_run"
    h5_run.mkdir()
    model.save(tmp_path / "model.h5")
    shutil.copy(tmp_path / "model.h5", h5_run / "model.keras")
    for command in ("predict", "explain", "export", "evaluate"):
        assert cli.main(_model_command(command, str(h5_run / "model.keras"),
                                       str(tmp_path / "model.h5"), str(tmp_path / "out"))) == 2
        errors = capsys.readouterr().err
        assert "is an HDF5 file (the legacy Keras `.h5` format)" in errors
        assert "model.save('model.keras')" in errors and "File not found" not in errors
    (tmp_path / "junk.keras").write_bytes(b"not a zip at all")
    assert cli.main(["export", str(tmp_path / "junk.keras")]) == 2
    assert "is not a `.keras` file (a zip archive)" in capsys.readouterr().err


def test_export_refuses_an_existing_output_without_overwrite(run, tmp_path, capsys):
    run_dir, _, _ = run
    out = tmp_path / "keras_export"
    assert cli.main(["export", run_dir, "--out", str(out)]) == 0
    first = (out / "model.keras").stat().st_mtime_ns
    capsys.readouterr()
    assert cli.main(["export", run_dir, "--out", str(out)]) == 2
    errors = capsys.readouterr().err
    assert "already holds an export (export.json, model.keras)" in errors
    assert "--overwrite" in errors and (out / "model.keras").stat().st_mtime_ns == first
    assert cli.main(["export", run_dir, "--out", str(out), "--overwrite"]) == 0
    record = json.load(open(out / "export.json"))
    assert record["check"]["flips"] == 0 and record["check"]["passed"]
    assert record["check"]["images_from"].endswith("held-out images of split 'val'")
    a_file = tmp_path / "model.tflite"
    a_file.write_bytes(b"keep me")
    assert cli.main(["export", run_dir, "--format", "tflite", "--out", str(a_file),
                     "--overwrite"]) == 2
    assert "is an existing file" in capsys.readouterr().err
    assert a_file.read_bytes() == b"keep me"


def _blank_dataset(tmp_path, capsys):
    from PIL import Image

    # Blank images: 0 for one class, 1 for the other (identical images under two labels
    # are refused by convert).
    for value, label in enumerate(("normal", "opacity")):
        (tmp_path / "blank" / label).mkdir(parents=True)
        for index in range(10):
            Image.fromarray(np.full((64, 64), value, np.uint8)).save(
                tmp_path / "blank" / label / f"{index}.png")
    out = tmp_path / "blank_data"
    assert cli.main(["convert", str(tmp_path / "blank"), str(out), "--no-progress",
                     "--val-fraction", "0.2", "--test-fraction", "0"]) == 0
    capsys.readouterr()
    return out


def _confident_run(run, root):
    """A run directory like `run` (same config and dataset) whose model is confident.

    The tiny trained run's outputs are nearly constant (validation logits spread by
    ~1e-3: it has not learnt the phantoms in 2 epochs), so no operating point separates
    anything. This fixed-seed LeNet-5 has its output layer scaled so its validation
    logits spread by 3 around 0, with the operating point (`evaluation/threshold.json`,
    as `kmedimg evaluate` writes it) at 0.5, the validation median.
    """
    import keras

    from kmedimg.data.pipeline import load
    from kmedimg.models import build_classifier

    run_dir, data_dir, _ = run
    images, _ = next(iter(load(data_dir, "val", batch_size=200)))
    keras.utils.set_random_seed(0)
    model = build_classifier("lenet5_modern", 1, (64, 64, 1), dropout=0.0)
    probs = np.asarray(model(images, training=False))[:, 0]
    logits = np.log(probs / (1 - probs))
    kernel, bias = model.output_dense.get_weights()
    scale = 3.0 / logits.std()
    model.output_dense.set_weights([kernel * scale, (bias - np.median(logits)) * scale])
    os.makedirs(root / "evaluation")
    model.save(root / "model.keras")
    shutil.copy(os.path.join(run_dir, "config.yaml"), root / "config.yaml")
    with open(root / "evaluation" / "threshold.json", "w") as handle:
        json.dump({"rule": "youden", "chosen_on": "val", "values": [0.5]}, handle)
    return str(root), len(images)


def test_int8_export_is_checked_on_held_out_records_at_the_operating_point(run, tmp_path, capsys):
    """Failure 7: blank calibration images used to pass the check (it ran on them)."""
    run_dir, count = _confident_run(run, tmp_path / "run")
    blank = _blank_dataset(tmp_path, capsys)
    out = tmp_path / "blank_int8"
    assert cli.main(["export", run_dir, "--format", "tflite", "--quantize", "int8",
                     "--calibration-data", str(blank), "--out", str(out)]) == 3
    errors = capsys.readouterr().err
    check = json.load(open(out / "export.json"))["check"]
    assert not check["passed"] and check["images"] == count
    assert check["images_from"] == f"{count} held-out images of split 'val'"
    assert check["flip_rate"] > 0.2 and check["decision_rule"] == "youden on val"
    assert (f"changes {check['flips']} of {check['images']} decisions" in errors
            and "the tolerance is 1.0%" in errors and "Traceback" not in errors)
    # Calibrated on the run's own training images, checked on its validation records.
    out = tmp_path / "real_int8"
    assert cli.main(["export", run_dir, "--format", "tflite", "--quantize", "int8",
                     "--calibration-samples", "64", "--max-flip-rate", "0.05",
                     "--out", str(out)]) == 0
    check = json.load(open(out / "export.json"))["check"]
    assert check["passed"] and check["flip_rate"] <= 0.05 and check["max_abs_difference"] < 0.2
    assert f"{check['flips']} decision flips (tolerance 5.0%)" in capsys.readouterr().out
    # The check never runs on the calibration images themselves.
    with pytest.raises(ValueError, match="images it was not calibrated on"):
        export_run(run_dir, "tflite", "int8", out=str(tmp_path / "same"),
                   calibration_split="val", check_split="val")


def test_flips_are_counted_per_task():
    reference = np.array([[0.2, 0.7, 0.1], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8]], np.float32)
    exported = np.array([[0.2, 0.7, 0.1], [0.4, 0.5, 0.1], [0.1, 0.1, 0.8]], np.float32)
    check = export.compare_predictions(reference, exported, {"task": "multiclass",
                                                             "max_flip_rate": 0.3})
    assert (check["flips"], check["passed"], check["decision_rule"]) == (1, False, "argmax")
    binary = np.array([[0.30], [0.62], [0.9]], np.float32)
    moved = np.array([[0.31], [0.58], [0.9]], np.float32)
    threshold = {"rule": "youden", "chosen_on": "val", "values": [0.6]}
    check = export.compare_predictions(binary, moved, {"task": "binary", "threshold": threshold})
    assert check["flips"] == 1 and check["max_flip_rate"] == export.DEFAULT_MAX_FLIP_RATE
    assert check["max_abs_difference"] == pytest.approx(0.04)


def _real_inputs():
    """Bytes of real input files of each kind: a CT DICOM, a PNG and a .npy."""
    from PIL import Image
    from pydicom.data import get_testdata_file

    png, npy = io.BytesIO(), io.BytesIO()
    Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)).save(png, "PNG")
    np.save(npy, np.arange(64 * 64, dtype=np.uint8).reshape(64, 64))
    return {".dcm": open(get_testdata_file("CT_small.dcm"), "rb").read(),
            ".png": png.getvalue(), ".npy": npy.getvalue()}


@pytest.mark.parametrize("suffix", [".dcm", ".png", ".npy"])
def test_damaged_inputs_are_read_or_refused_with_the_file_named(tmp_path_factory, suffix):
    """Any cut or flipped byte gives an image or an `InputFileError`, never another error."""
    pytest.importorskip("pydicom")
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    original = _real_inputs()[suffix]
    folder = tmp_path_factory.mktemp("damaged")

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(cut=st.integers(0, len(original)), flips=st.lists(
        st.tuples(st.integers(0, len(original) - 1), st.integers(1, 255)), max_size=4))
    def check(cut, flips):
        data = bytearray(original)
        for position, mask in flips:
            data[position] ^= mask
        path = folder / f"input{suffix}"
        path.write_bytes(bytes(data[:cut]))
        try:
            pixels = inputs.read_pixels(path)
        except InputFileError as error:
            assert error.path == str(path) and error.reason
        else:
            assert pixels.ndim == 3 and pixels.dtype.name in ("uint8", "uint16")

    check()


def test_int8_export_of_a_bare_model_file_needs_held_out_check_data(run, tmp_path, capsys):
    run_dir, data_dir, _ = run
    (tmp_path / "lone").mkdir()
    model = shutil.copy(os.path.join(run_dir, "model.keras"), tmp_path / "lone" / "model.keras")
    argv = ["export", str(model), "--format", "tflite", "--quantize", "int8",
            "--calibration-data", data_dir, "--calibration-samples", "32"]
    assert cli.main(argv) == 2
    errors = capsys.readouterr().err
    assert "is a bare .keras file that names no dataset; pass --check-data DIR" in errors
    # The tiny run's outputs sit within ~0.005 of 0.5 (it has not learnt the phantoms), so
    # int8 may change many decisions; the tolerance itself is tested on a confident model.
    assert cli.main(argv + ["--check-data", data_dir, "--max-flip-rate", "1"]) == 0
    record = json.load(open(tmp_path / "lone" / "export" / "tflite-int8" / "export.json"))
    assert record["check"]["images_from"].endswith("held-out images of split 'val'")
