"""Attacks on the DICOM and NIfTI importers (issue 14): PHI in paths and in code values,
non-finite volumes, decompression bombs, binary salt files, killed worker pools, and the
optional tensorflow-io decoder refused before any work (issue 18).

Real files only: DICOMs are pydicom's test files rewritten with pydicom, NIfTI volumes are
written with nibabel, conversions run through `kmedimg convert`.
"""

import copy
import gzip
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")

from pydicom.data import get_testdata_file  # noqa: E402

from kmedimg.cli import main  # noqa: E402
from kmedimg.data.sources import privacy  # noqa: E402
from kmedimg.data.sources.base import Item, Rejected  # noqa: E402
from kmedimg.data.sources.dicom import DicomSource  # noqa: E402
from kmedimg.data.sources.nifti import NiftiSource  # noqa: E402

SALT = "test-salt-not-secret"
PHI = ("DOE_JOHN", "MRN998877", "DOE^JOHN", "JOHN", "998877")
REPO = pathlib.Path(__file__).resolve().parents[1]


def _read(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, force=True)


def _save(ds, path, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(path, **kwargs)


def _output_bytes(folder):
    return b"".join(p.read_bytes() for p in pathlib.Path(folder).rglob("*") if p.is_file())


def _assert_no_phi(out, captured, caplog):
    data = _output_bytes(out)
    text = captured.out + captured.err + caplog.text
    for secret in PHI:
        assert secret.encode() not in data, f"{secret!r} in an output file"
        assert secret not in text, f"{secret!r} in stdout/stderr/log"


def _convert(src, out, tmp_path, *extra):
    return main(["convert", str(src), str(out), "--salt-file", str(tmp_path / "salt"),
                 "--workers", "1", "--no-progress", *extra])


def _volume(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)


# Failure 5: PHI in the source path.

def test_source_path_with_phi_is_not_stored(tmp_path, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    src = tmp_path / "dcm" / "export_DOE_JOHN_MRN998877"
    for label, name in (("a", "MR_small.dcm"), ("b", "CT_small.dcm")):
        _save(_read(get_testdata_file(name)), src / label / "img.dcm")
    labels = tmp_path / "DOE_JOHN_labels.csv"
    labels.write_text("path,label\na/img.dcm,a\nb/img.dcm,b\n")
    assert _convert(src, tmp_path / "out", tmp_path, "--labels-csv", str(labels)) == 0
    manifest = json.loads((tmp_path / "out" / "dataset.json").read_text())
    args = manifest["conversion"]["args"]
    assert args["src"] is None and args["format"] == "dicom"
    key = privacy.salted_hash(privacy.load_salt(salt_file=tmp_path / "salt"), "src", str(src))
    assert args["src_hash"] == key
    _assert_no_phi(tmp_path / "out", capsys.readouterr(), caplog)
    nifti = tmp_path / "nii" / "export_DOE_JOHN_MRN998877"
    for offset, label in enumerate(("a", "b")):
        # Distinct volumes: identical images under two labels are rejected as conflicts.
        _volume(nifti / label / "v.nii.gz",
                (np.arange(60, dtype=np.int16) % (7 + offset)).reshape(3, 4, 5))
    assert _convert(nifti, tmp_path / "out2", tmp_path) == 0
    _assert_no_phi(tmp_path / "out2", capsys.readouterr(), caplog)
    # Asked for: --keep-filenames keeps the path.
    assert _convert(nifti, tmp_path / "out3", tmp_path, "--keep-filenames") == 0
    kept = json.loads((tmp_path / "out3" / "dataset.json").read_text())
    assert kept["conversion"]["args"]["src"] == str(nifti)


# Failure 6: PHI in values that reach rejection reasons and statistics.

def _phi_dicoms(root):
    base = _read(get_testdata_file("MR_small.dcm"))
    base.PatientName = "DOE^JOHN"
    base.PatientID = "MRN998877"
    photometric = copy.deepcopy(base)
    photometric.PhotometricInterpretation = "DOE^JOHN MRN998877"
    _save(photometric, root / "a" / "f1.dcm")
    syntax = copy.deepcopy(base)
    syntax.file_meta.TransferSyntaxUID = "DOE^JOHN.MRN998877"
    _save(syntax, root / "a" / "f2.dcm", implicit_vr=False, little_endian=True)
    modality = copy.deepcopy(base)
    modality.Modality = "DOE^JOHN"
    _save(modality, root / "a" / "f3.dcm")
    sop = copy.deepcopy(base)
    sop.SOPClassUID = "1.2.840.10008.5.1.4.1.1.66.998877"
    _save(sop, root / "b" / "f4.dcm")
    # Pixels unlike f3's: identical images under two labels are rejected as conflicts.
    other = copy.deepcopy(base)
    pixels = other.pixel_array.copy()
    pixels[0, 0] += 1
    other.PixelData = pixels.tobytes()
    _save(other, root / "b" / "f5.dcm")


def test_code_values_with_phi_are_never_echoed(tmp_path, capsys, caplog):
    _phi_dicoms(tmp_path / "tree")
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    assert _convert(tmp_path / "tree", tmp_path / "out", tmp_path) == 0
    captured = capsys.readouterr()
    _assert_no_phi(tmp_path / "out", captured, caplog)
    rejected = (tmp_path / "out" / "rejected.csv").read_text()
    assert "unsupported photometric interpretation: not a defined term" in rejected
    assert "unsupported transfer syntax: not a known UID" in rejected
    assert "non-image object" in rejected
    manifest = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert manifest["source"]["stats"]["modality:not a defined term"] == 1
    assert manifest["counts"]["written"] == 2 and manifest["counts"]["rejected"] == 3


def test_known_codes_are_still_named(tmp_path):
    ds = _read(get_testdata_file("MR_small.dcm"))
    ds.PhotometricInterpretation = "YBR_PARTIAL_420"
    _save(ds, tmp_path / "tree" / "a" / "x.dcm")
    [entry] = list(DicomSource(tmp_path / "tree", salt=SALT, workers=1))
    assert isinstance(entry, Rejected)
    assert entry.reason.startswith("unsupported photometric interpretation: YBR_PARTIAL_420")


def test_unknown_voi_lut_function_is_not_echoed(tmp_path):
    ds = _read(get_testdata_file("MR_small.dcm"))
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 600, 1200, "SMITH_JANE"
    _save(ds, tmp_path / "tree" / "a" / "x.dcm")
    [entry] = list(DicomSource(tmp_path / "tree", salt=SALT, workers=1, window="file"))
    assert entry.reason.startswith("window: unsupported VOI LUT Function (not a defined term")
    assert "SMITH" not in entry.reason


# Failure 8: non-finite and constant volumes and slices.

def test_non_finite_and_constant_volumes_and_slices_are_rejected(tmp_path):
    root = tmp_path / "tree"
    _volume(root / "tumour" / "inf.nii.gz", np.full((4, 5, 3), np.inf, np.float32))
    _volume(root / "tumour" / "nan.nii.gz", np.full((4, 5, 3), np.nan, np.float32))
    _volume(root / "tumour" / "flat.nii.gz", np.full((4, 5, 3), 7, np.int16))
    mixed = np.arange(60, dtype=np.float32).reshape(4, 5, 3)
    mixed[:, :, 0] = np.inf
    mixed[:, :, 2] = 3.0
    _volume(root / "normal" / "mixed.nii.gz", mixed)
    source = NiftiSource(root, salt=SALT, workers=1, slices="all", keep_filenames=True)
    entries = {e.source: e for e in source}
    reasons = {k: e.reason for k, e in entries.items() if isinstance(e, Rejected)}
    assert reasons["tumour/inf.nii.gz"].startswith("non-finite volume: all 60 voxels")
    assert reasons["tumour/nan.nii.gz"].startswith("non-finite volume: all 60 voxels")
    assert reasons["tumour/flat.nii.gz"].startswith("constant volume: every voxel is 7")
    assert reasons["normal/mixed.nii.gz#2:0"].startswith("non-finite slice: all 20 voxels")
    assert reasons["normal/mixed.nii.gz#2:2"].startswith("constant slice: every voxel is 3")
    written = [e for e in entries.values() if isinstance(e, Item)]
    assert [e.source for e in written] == ["normal/mixed.nii.gz#2:1"]
    assert written[0].pixels.min() < written[0].pixels.max()


def test_constant_dicom_frames_are_rejected(tmp_path):
    blank = _read(get_testdata_file("MR_small.dcm"))
    blank.PixelData = bytes(len(blank.PixelData))
    _save(blank, tmp_path / "tree" / "tumour" / "blank.dcm")
    frames = _read(get_testdata_file("emri_small.dcm"))  # 10 frames of 64 x 64 uint16
    data = bytearray(frames.PixelData)
    data[64 * 64 * 2 * 3:64 * 64 * 2 * 4] = (500).to_bytes(2, "little") * (64 * 64)
    frames.PixelData = bytes(data)
    _save(frames, tmp_path / "tree" / "tumour" / "frames.dcm")
    entries = list(DicomSource(tmp_path / "tree", salt=SALT, workers=1, frames="all",
                               keep_filenames=True))
    reasons = {e.source: e.reason for e in entries if isinstance(e, Rejected)}
    assert reasons == {"tumour/blank.dcm": "constant image: every stored pixel is 0",
                       "tumour/frames.dcm#frame3": "constant image: every stored pixel is 500"}
    assert sum(isinstance(e, Item) for e in entries) == 9


# Weak spot: a decompression bomb.

def _bomb(path, shape, dtype=np.uint8):
    header = nib.Nifti1Header()
    header.set_data_dtype(dtype)
    header.set_data_shape(shape)
    header.set_qform(np.eye(4), code=1)
    header.set_sform(np.eye(4), code=1)
    header["vox_offset"] = 352
    zeros = bytes(1 << 24)
    remaining = int(np.prod(shape)) * np.dtype(dtype).itemsize
    with gzip.open(path, "wb", compresslevel=1) as handle:
        handle.write(header.binaryblock + b"\0" * (352 - len(header.binaryblock)))
        while remaining:
            chunk = min(remaining, len(zeros))
            handle.write(zeros[:chunk])
            remaining -= chunk


def test_gzip_bomb_is_refused_from_its_header(tmp_path):
    import tracemalloc

    root = tmp_path / "tree"
    (root / "a").mkdir(parents=True)
    _bomb(root / "a" / "bomb.nii.gz", (1024, 1024, 80))  # 80 MiB of zeros in ~0.4 MB
    assert (root / "a" / "bomb.nii.gz").stat().st_size < 1_000_000
    source = NiftiSource(root, salt=SALT, workers=1, max_voxels=2**26)
    tracemalloc.start()  # numpy reports its buffers to tracemalloc
    try:
        [entry] = list(source)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert entry.reason.startswith("volume too large: 1024 x 1024 x 80 = 83,886,080 voxels")
    assert "max_voxels=67,108,864" in entry.reason
    assert peak < 20 * 2**20, f"peak traced memory {peak / 2**20:.0f} MiB"


def test_max_voxels_is_checked():
    with pytest.raises(ValueError, match="max_voxels"):
        NiftiSource(".", salt=SALT, max_voxels=0)


# Weak spot: binary and unreadable salt files.

def test_binary_salt_file_is_accepted_and_bad_ones_are_named(tmp_path):
    binary = tmp_path / "binary_salt"
    binary.write_bytes(b"\xff\xfe\x00salt\x80\n")
    assert privacy.load_salt(salt_file=binary) == b"\xff\xfe\x00salt\x80\n"
    text = tmp_path / "text_salt"
    text.write_text("abc123\n")
    assert privacy.load_salt(salt_file=text) == b"abc123"  # unchanged for text salts
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="folder") as caught:
        privacy.load_salt(salt_file=tmp_path / "folder")
    assert "Received" in str(caught.value)
    with pytest.raises(ValueError, match="Cannot create the salt file .*binary_salt/salt"):
        privacy.load_salt(salt_file=binary / "salt")  # under a regular file
    _save(_read(get_testdata_file("MR_small.dcm")), tmp_path / "tree" / "a" / "x.dcm")
    out = tmp_path / "out"
    assert main(["convert", str(tmp_path / "tree"), str(out), "--salt-file", str(binary),
                 "--workers", "1", "--no-progress"]) == 0


# Weak spot: a killed parallel conversion must not leave workers behind.

def _children(pid):
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = pathlib.Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                children.append(int(entry))
    return children


def _alive(pid):
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _run_pool():
    from kmedimg.data.sources.parallel import ordered_map

    for _ in ordered_map(time.sleep, [60] * 8, workers=2, prefetch=2):
        pass


def _wait_for_workers(pid, count, seconds):
    deadline = time.monotonic() + seconds
    workers = _children(pid)
    while time.monotonic() < deadline and len(workers) < count:
        time.sleep(0.05)
        workers = _children(pid)
    return workers


def _assert_all_exit(workers, seconds=10):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.1)
    survivors = [pid for pid in workers if _alive(pid)]
    assert not survivors, f"workers {survivors} outlived their killed parent"


def test_sigkilled_pool_owner_leaves_no_workers():
    import multiprocessing

    owner = multiprocessing.get_context("fork").Process(target=_run_pool)
    owner.start()
    workers = []
    try:
        workers = _wait_for_workers(owner.pid, 2, 20)
        assert len(workers) == 2, f"worker processes: {workers}"
        os.kill(owner.pid, signal.SIGKILL)
        owner.join()
        _assert_all_exit(workers)
    finally:
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow  # ~1 min (TensorFlow import in a fresh process); the test above is fast
def test_sigkilled_parallel_conversion_leaves_no_workers(tmp_path):
    tree = tmp_path / "tree"
    (tree / "a").mkdir(parents=True)
    original = get_testdata_file("emri_small_jpeg_2k_lossless.dcm")
    for index in range(400):
        os.symlink(original, tree / "a" / f"{index:04d}.dcm")
    script = ("import sys; from kmedimg.cli import main; sys.exit(main(sys.argv[1:]))")
    process = subprocess.Popen(
        [sys.executable, "-c", script, "convert", str(tree), str(tmp_path / "out"),
         "--salt-file", str(tmp_path / "salt"), "--workers", "2", "--no-progress"],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        workers = []
        while time.monotonic() < deadline and len(workers) < 2:
            assert process.poll() is None, "the conversion ended before it was killed"
            workers = _children(process.pid)
            time.sleep(0.05)
        assert len(workers) >= 2, f"no worker processes seen: {workers}"
        time.sleep(0.5)  # let the workers take files
        process.send_signal(signal.SIGKILL)
        process.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
            time.sleep(0.1)
        survivors = [pid for pid in workers if _alive(pid)]
        assert not survivors, f"workers {survivors} outlived their killed parent"
    finally:
        process.kill()
        for pid in set(workers) | set(_children(process.pid)):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


# Issue 18: --dicom-decoder.

def test_tfio_decoder_is_refused_before_any_work(tmp_path, capsys):
    from kmedimg.data.sources import dicom_tfio

    _save(_read(get_testdata_file("MR_small.dcm")), tmp_path / "tree" / "a" / "x.dcm")
    try:
        dicom_tfio.load_tfio()
    except ImportError:
        pass
    else:
        pytest.skip("tensorflow-io loads here (TensorFlow 2.16): nothing to refuse")
    out = tmp_path / "out"
    code = _convert(tmp_path / "tree", out, tmp_path, "--dicom-decoder", "tfio")
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert len(err.strip().splitlines()) == 1
    assert "tensorflow-io 0.37.1" in err and "TensorFlow 2.16" in err and "pydicom" in err
    with pytest.raises(ValueError, match="decoder"):
        DicomSource(tmp_path / "tree", salt=SALT, decoder="dcmtk")
    code = _convert(tmp_path / "tree", tmp_path / "default", tmp_path)
    assert code == 0
    code = _convert(tmp_path / "tree", tmp_path / "pydicom", tmp_path,
                    "--dicom-decoder", "pydicom")
    assert code == 0
    for name in ("rejected.csv",):
        assert (tmp_path / "default" / name).read_bytes() == (
            tmp_path / "pydicom" / name).read_bytes()
    shards = sorted((tmp_path / "default").rglob("*.tfrecord*"))
    assert shards and [p.read_bytes() for p in shards] == [
        p.read_bytes() for p in sorted((tmp_path / "pydicom").rglob("*.tfrecord*"))]
    manifest = json.loads((tmp_path / "pydicom" / "dataset.json").read_text())
    assert manifest["source"]["decoder"] == "pydicom"


def _fake_tensorflow_io(monkeypatch, message):
    """tensorflow-io as DCMTK behaves on a file it cannot decode (third-party stand-in:
    the real package cannot load next to this TensorFlow)."""
    import types

    import tensorflow as tf

    def decode_dicom_image(*args, **kwargs):
        raise tf.errors.InvalidArgumentError(None, None, message)

    fake = types.ModuleType("tensorflow_io")
    fake.__version__, fake.__path__ = "0.37.1", []
    fake.image = types.SimpleNamespace(decode_dicom_image=decode_dicom_image)
    ops = types.ModuleType("tensorflow_io.python.ops")
    ops.core_ops = types.SimpleNamespace(io_decode_dicom_image=decode_dicom_image)
    monkeypatch.setitem(sys.modules, "tensorflow_io", fake)
    monkeypatch.setitem(sys.modules, "tensorflow_io.python", types.ModuleType("python"))
    monkeypatch.setitem(sys.modules, "tensorflow_io.python.ops", ops)


def test_tfio_failures_fall_back_to_pydicom_and_are_noted(tmp_path, monkeypatch):
    for name in ("MR_small.dcm", "CT_small.dcm"):
        ds = _read(get_testdata_file(name))
        ds.PatientName = "DOE^JOHN"
        _save(ds, tmp_path / "tree" / "a" / name)
    _fake_tensorflow_io(monkeypatch, "DCMTK cannot decode DOE^JOHN")
    common = dict(salt=SALT, workers=1, keep_filenames=True)
    source = DicomSource(tmp_path / "tree", decoder="tfio", **common)
    items = {item.source: item for item in source}
    reference = {item.source: item for item in DicomSource(tmp_path / "tree", **common)}
    assert set(items) == set(reference) == {"a/MR_small.dcm", "a/CT_small.dcm"}
    for name, item in items.items():
        np.testing.assert_array_equal(item.pixels, reference[name].pixels)
        assert item.metadata["decoder"] == "pydicom"
    assert items["a/MR_small.dcm"].metadata["tfio_fallback"] == (
        "tfio (DCMTK) cannot decode the file")
    assert items["a/CT_small.dcm"].metadata["tfio_fallback"].startswith(
        "refused: tfio applies the modality rescale")
    described = source.describe()
    assert described["decoder"] == "tfio" and described["stats"]["tfio_fallback"] == 2
    assert "DOE" not in json.dumps(described) + repr(items)


# Weak spot: a file name that is not UTF-8 must not abort the conversion.

def test_non_utf8_file_names_are_converted(tmp_path):
    import shutil

    tree = os.fsencode(tmp_path / "tree")
    os.makedirs(tree + b"/a")
    shutil.copy(get_testdata_file("MR_small.dcm"), tree + b"/a/\xff\xfe_scan.dcm")
    shutil.copy(get_testdata_file("CT_small.dcm"), tree + b"/a/ok.dcm")
    for keep in (False, True):
        entries = list(DicomSource(tmp_path / "tree", salt=SALT, workers=1, keep_filenames=keep))
        assert [type(e) for e in entries] == [Item, Item]
        names = sorted(e.source for e in entries)
        json.dumps(names).encode("utf-8")  # storable
        if keep:
            assert names == ["a/\\xff\\xfe_scan.dcm", "a/ok.dcm"]
    nifti = os.fsencode(tmp_path / "nii")
    os.makedirs(nifti + b"/a")
    _volume(pathlib.Path(os.fsdecode(nifti + b"/a/\xe9t\xe9.nii.gz")),
            np.arange(60, dtype=np.int16).reshape(3, 4, 5))
    [item] = list(NiftiSource(tmp_path / "nii", salt=SALT, workers=1, keep_filenames=True))
    assert item.source == "a/\\xe9t\\xe9.nii.gz#2:2"
    assert _convert(tmp_path / "tree", tmp_path / "out", tmp_path) == 0
