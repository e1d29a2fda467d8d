"""DICOM importer on real files: every file of pydicom-data and of pydicom's own test set.

The reference for each file is pydicom's own decode (`Dataset.pixel_array`, which
converts YBR to RGB) followed by the transforms documented in
`kmedimg.data.sources.dicom_pixels`, written here independently with pydicom's
`apply_modality_lut` / `apply_color_lut` / `apply_windowing` / `apply_voi_lut`.
"""

import csv
import glob
import io
import json
import logging
import os
import pathlib
import re
import stat
import warnings

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from pydicom.dataset import Dataset  # noqa: E402
from pydicom.pixels import (  # noqa: E402
    apply_color_lut,
    apply_modality_lut,
    apply_voi_lut,
    apply_windowing,
)

from kmedimg.data.sources import privacy  # noqa: E402
from kmedimg.data.sources.base import Item, Rejected  # noqa: E402
from kmedimg.data.sources.dicom import DicomSource  # noqa: E402
from kmedimg.data.sources.dicom_pixels import WINDOW_PRESETS, parse_window  # noqa: E402

SALT = "test-salt-not-secret"
NON_IMAGE_PREFIXES = ("1.2.840.10008.1.3.10", "1.2.840.10008.5.1.4.1.1.66",
                      "1.2.840.10008.5.1.4.1.1.88.", "1.2.840.10008.5.1.4.1.1.11.",
                      "1.2.840.10008.5.1.4.1.1.9.", "1.2.840.10008.5.1.4.1.1.481.")


def _test_files():
    """Every regular file pydicom knows: its bundled test files + the pydicom-data package."""
    from pydicom.data import get_testdata_files

    files = sorted(path for path in get_testdata_files() if os.path.isfile(path))
    bundled = [f for f in files if f"{os.sep}pydicom{os.sep}data{os.sep}" in f]
    external = [f for f in files if f not in bundled]
    if len(external) < 60:
        pytest.fail(
            f"pydicom-data files not found ({len(external)}); install the test extra "
            "(pip install 'kmedimg[test]')"
        )
    return bundled, external


@pytest.fixture(scope="module")
def dicom_tree(tmp_path_factory):
    """class folders of symlinks: bundled/<path> (pydicom) and external/<path> (pydicom-data)."""
    root = tmp_path_factory.mktemp("dicom_tree")
    bundled, external = _test_files()
    inputs = {}
    for class_name, files in (("bundled", bundled), ("external", external)):
        common = os.path.commonpath(files)
        for path in files:
            relative = f"{class_name}/" + os.path.relpath(path, common).replace(os.sep, "/")
            target = root / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(path, target)
            inputs[relative] = path
    return root, inputs


def _read(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, force=True)


def _frame_view(ds, index):
    """A dataset with the frame's rescale (top level, else functional groups) at top level."""
    if "ModalityLUTSequence" in ds or "RescaleSlope" in ds:
        return ds
    view = Dataset()
    view.BitsStored, view.PixelRepresentation = ds.BitsStored, ds.get("PixelRepresentation", 0)
    for groups, position in (("PerFrameFunctionalGroupsSequence", index),
                             ("SharedFunctionalGroupsSequence", 0)):
        if groups in ds and "PixelValueTransformationSequence" in ds[groups][position]:
            item = ds[groups][position].PixelValueTransformationSequence[0]
            view.RescaleSlope, view.RescaleIntercept = item.RescaleSlope, item.RescaleIntercept
            break
    return view


def _real(frame, ds, index):
    view = _frame_view(ds, index)
    return np.asarray(apply_modality_lut(frame, view), dtype=np.float64), view


def _stored_range(view):
    if "ModalityLUTSequence" in view:
        return 0.0, 2.0 ** view.ModalityLUTSequence[0].LUTDescriptor[2] - 1
    bits = view.BitsStored
    low, high = ((-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if view.PixelRepresentation
                 else (0, 2**bits - 1))
    slope, intercept = float(view.get("RescaleSlope", 1)), float(view.get("RescaleIntercept", 0))
    return tuple(sorted((low * slope + intercept, high * slope + intercept)))


def reference_frames(path, frame=None):
    """pydicom decode + the documented full-depth transforms, or raises if pydicom can't.

    Returns `(dataset, frames)`: every frame, or only frame `frame` (a middle frame
    decoded alone by `pydicom.pixels.pixel_array(ds, index=...)`) when given.
    """
    ds = _read(path)
    if not getattr(ds, "file_meta", None) or "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = (
            pydicom.uid.ImplicitVRLittleEndian if implicit
            else pydicom.uid.ExplicitVRLittleEndian if little else pydicom.uid.ExplicitVRBigEndian
        )
    count = int(ds.get("NumberOfFrames", 1) or 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if frame == "middle":
            indices = [count // 2]
            frames = [pydicom.pixels.pixel_array(ds, index=count // 2 if count > 1 else None)]
        else:
            indices = list(range(count))
            array = ds.pixel_array
            frames = list(array) if count > 1 else [array]
    photometric = ds.PhotometricInterpretation
    out = []
    for index, frame in zip(indices, frames):
        frame = frame.astype(frame.dtype.newbyteorder("="))
        if photometric == "PALETTE COLOR":
            out.append(apply_color_lut(frame, ds))
        elif frame.ndim == 3:
            out.append(frame)
        else:
            real, view = _real(frame, ds, index)
            if photometric == "MONOCHROME1":
                low, high = _stored_range(view)
                real = low + high - real
            out.append(np.clip(np.rint(real) + 1024, 0, 65535).astype(np.uint16))
    return ds, out


@pytest.fixture(scope="module")
def converted(dicom_tree):
    """The source's entries per input file (middle frames, parallel path, relative names)."""
    root, inputs = dicom_tree
    source = DicomSource(root, salt=SALT, frames="middle", keep_filenames=True, workers=2)
    by_file = {}
    for entry in source:
        relative = entry.source.split("#frame")[0]
        by_file.setdefault(relative, []).append(entry)
    return source, by_file


def test_every_input_is_written_or_rejected_once(dicom_tree, converted):
    _, inputs = dicom_tree
    _, by_file = converted
    assert set(by_file) == set(inputs)
    for relative, entries in by_file.items():
        kinds = {type(entry) for entry in entries}
        assert len(kinds) == 1, relative
        if kinds == {Rejected}:
            assert len(entries) == 1, relative
            assert entries[0].reason.split(":")[0], relative


def test_pixels_equal_pydicom_reference_after_documented_transforms(dicom_tree, converted):
    _, inputs = dicom_tree
    _, by_file = converted
    compared = rejected_decodable = 0
    for relative, path in sorted(inputs.items()):
        entries = by_file[relative]
        try:
            ds, expected = reference_frames(path, frame="middle")
        except Exception:  # noqa: BLE001 - pydicom cannot decode it: must be rejected
            assert isinstance(entries[0], Rejected), relative
            continue
        sop = str(ds.get("SOPClassUID", ""))
        if isinstance(entries[0], Rejected):
            # pydicom decodes it, so only a documented category may reject it.
            reason = entries[0].reason
            rejected_decodable += 1
            if reason.startswith("non-image object"):
                assert sop.startswith(NON_IMAGE_PREFIXES), (relative, sop)
            else:
                assert reason.startswith("bit depth"), (relative, reason)
                assert int(ds.BitsStored) > 16
            continue
        assert len(entries) == len(expected), relative
        for entry, reference in zip(entries, expected):
            assert entry.pixels.dtype == reference.dtype, relative
            np.testing.assert_array_equal(entry.pixels, reference, err_msg=relative)
            compared += 1
    assert compared >= 135  # the middle frame of every decodable image file
    assert rejected_decodable >= 10  # SEG, RT Dose, 32-bit RGB


def test_rejection_reasons_cover_the_issue_categories(converted):
    _, by_file = converted
    reasons = {e.reason.split(":")[0] for entries in by_file.values() for e in entries
               if isinstance(e, Rejected)}
    for category in ("not a DICOM file", "non-image object", "no Pixel Data",
                     "truncated Pixel Data", "cannot decode Pixel Data", "bit depth"):
        assert category in reasons
    kinds = {e.reason for entries in by_file.values() for e in entries if isinstance(e, Rejected)}
    for sop in ("Segmentation", "SR Storage", "RT Structure Set", "Media Storage Directory"):
        assert any(sop in reason for reason in kinds), sop


def test_forced_read_is_converted_and_said(converted):
    _, by_file = converted
    forced = [e for entries in by_file.values() for e in entries
              if isinstance(e, Item) and e.metadata["forced_read"]]
    assert forced, "OT-PAL-8-face.dcm has no preamble and must be read with force"
    assert all(e.metadata["transfer_syntax_inferred"] for e in forced)


def test_frames_and_patient_keys(dicom_tree):
    root, inputs = dicom_tree
    relative = next(r for r in inputs if r.endswith("emri_small.dcm"))
    ds, expected = reference_frames(inputs[relative])
    for frames, indices in (("first", [0]), ("middle", [5]), ("all", list(range(10)))):
        source = DicomSource(root, salt=SALT, frames=frames, keep_filenames=True, workers=1)
        from kmedimg.data.sources.dicom import convert_file

        entries = convert_file((inputs[relative], relative, source.worker_options()))
        assert [e.metadata["frame"] for e in entries] == indices
        for entry, index in zip(entries, indices):
            np.testing.assert_array_equal(entry.pixels, expected[index])
        # emri_small.dcm has an empty PatientID: the key falls back to the study.
        assert not ds.PatientID
        patient = privacy.salted_hash(SALT.encode(), "StudyInstanceUID", ds.StudyInstanceUID)
        assert {e.patient for e in entries} == {patient}
        assert {e.metadata["patient_key_from"] for e in entries} == {"StudyInstanceUID"}
        assert len({e.record_id for e in entries}) == len(indices)


def _windowed_reference(real, center, width, function="LINEAR"):
    """pydicom's apply_windowing with an 8-bit unsigned output range (0..255)."""
    view = Dataset()
    view.PhotometricInterpretation = "MONOCHROME2"
    view.BitsStored, view.PixelRepresentation = 8, 0
    view.WindowCenter, view.WindowWidth, view.VOILUTFunction = center, width, function
    return np.rint(apply_windowing(real.copy(), view)).astype(np.uint8)


@pytest.mark.parametrize("window", ["lung", "bone", "brain", "mediastinum", "-300,900", "file"])
def test_windows_match_pydicom_windowing(dicom_tree, window):
    root, inputs = dicom_tree
    from kmedimg.data.sources.dicom import convert_file

    names = ("CT_small.dcm", "693_UNCI.dcm", "MR_small.dcm", "RG3_UNCI.dcm", "vlut_04.dcm")
    source = DicomSource(root, salt=SALT, window=window, keep_filenames=True, workers=1)
    for relative in sorted(r for r in inputs if r.endswith(names)):
        ds, _ = reference_frames(inputs[relative])
        (entry,) = convert_file((inputs[relative], relative, source.worker_options()))
        real, _ = _real(ds.pixel_array.astype(ds.pixel_array.dtype.newbyteorder("=")), ds, 0)
        if window == "file" and "VOILUTSequence" not in ds and "WindowCenter" not in ds:
            assert isinstance(entry, Rejected) and entry.reason.startswith("no window in file")
            continue
        if window == "file":
            if "VOILUTSequence" in ds:
                bits = ds.VOILUTSequence[0].LUTDescriptor[2]
                looked = apply_voi_lut(np.rint(real).astype(np.int64), ds, prefer_lut=True)
                expected = np.rint(looked * 255.0 / (2**bits - 1)).astype(np.uint8)
            else:
                center, width = (float(np.atleast_1d(ds.WindowCenter)[0]),
                                 float(np.atleast_1d(ds.WindowWidth)[0]))
                expected = _windowed_reference(real, center, width,
                                               ds.get("VOILUTFunction", "LINEAR"))
        else:
            _, center, width = parse_window(window)
            expected = _windowed_reference(real, center, width)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            expected = 255 - expected
        assert entry.pixels.dtype == np.uint8
        np.testing.assert_array_equal(entry.pixels, expected, err_msg=relative)


def test_window_arguments_are_checked():
    assert parse_window("LUNG") == ("lung", *WINDOW_PRESETS["lung"])
    assert parse_window((40, 80)) == ("explicit", 40.0, 80.0)
    for bad in ("lungs", "1,2,3", "a,b", (40, 0)):
        with pytest.raises(ValueError, match="Received: window="):
            parse_window(bad)
    with pytest.raises(ValueError, match="frames"):
        DicomSource(os.path.dirname(__file__), salt=SALT, frames="last")


def test_labels_from_csv_by_uid_and_path(dicom_tree, tmp_path):
    root, inputs = dicom_tree
    mr = sorted(r for r in inputs if "/98892003/" in r)
    rows = []
    for index, relative in enumerate(mr):
        ds = _read(inputs[relative])
        rows.append((relative, str(ds.SOPInstanceUID), str(ds.StudyInstanceUID),
                     "tumour" if index % 2 else "normal"))
    for key, column in (("path", 0), ("SOPInstanceUID", 1)):
        table = tmp_path / f"labels_{key}.csv"
        with open(table, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow([key, "label"])
            writer.writerows((row[column], row[3]) for row in rows)
        source = DicomSource(root, labels=table, salt=SALT, keep_filenames=True, workers=1)
        assert source.class_names == ["normal", "tumour"] and source.task == "binary"
        items = {e.source: e.labels for e in source if isinstance(e, Item)}
        assert items == {row[0]: (row[3],) for row in rows}
    # A study label applies to every file of the study; files of other studies are rejected.
    table = tmp_path / "labels_study.csv"
    table.write_text("StudyInstanceUID,label\n" + f"{rows[0][2]},a|b\n")
    source = DicomSource(root, labels=table, salt=SALT, keep_filenames=True, workers=1,
                         task="multilabel")
    assert source.task == "multilabel"
    entries = list(source)
    labelled = [e for e in entries if isinstance(e, Item)]
    assert labelled and all(e.labels == ("a", "b") for e in labelled)
    assert any(isinstance(e, Rejected) and e.reason.startswith("no label") for e in entries)


def test_preamble_less_file_and_phi_in_names_and_errors(tmp_path):
    """A dataset saved without preamble/meta is read with force; PHI never reaches reasons."""
    from pydicom.data import get_testdata_file

    root = tmp_path / "tree"
    (root / "cases").mkdir(parents=True)
    ds = _read(get_testdata_file("CT_small.dcm"))
    ds.PatientName = "Doe^Johnathan"
    ds.PatientID = "MRN-0042-7781"
    del ds.file_meta
    ds.preamble = None
    ds.save_as(root / "cases" / "Doe_Johnathan_CT.dcm", enforce_file_format=False)
    broken = _read(get_testdata_file("CT_small.dcm"))
    broken.PatientName = "Roe^Richardine"
    broken.PixelData = broken.PixelData[:1000]
    broken.save_as(root / "cases" / "Roe_Richardine_head.dcm")
    source = DicomSource(root, salt=SALT, workers=1)
    entries = list(source)
    items = [e for e in entries if isinstance(e, Item)]
    rejected = [e for e in entries if isinstance(e, Rejected)]
    assert len(items) == 1 and len(rejected) == 1
    assert items[0].metadata["forced_read"] and items[0].metadata["transfer_syntax_inferred"]
    _, expected = reference_frames(get_testdata_file("CT_small.dcm"))
    np.testing.assert_array_equal(items[0].pixels, expected[0])
    assert rejected[0].reason.startswith("truncated Pixel Data")
    text = repr(entries) + json.dumps(source.describe())
    for secret in ("Doe", "Johnathan", "MRN-0042-7781", "Roe", "Richardine", "cases/"):
        assert secret not in text
    assert items[0].patient == privacy.salted_hash(SALT.encode(), "PatientID", "MRN-0042-7781")


def test_unsupported_transfer_syntax_is_rejected(tmp_path):
    from pydicom.data import get_testdata_file

    (tmp_path / "a").mkdir()
    ds = _read(get_testdata_file("CT_small.dcm"))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.MPEG2MPML  # no pydicom decoder exists
    ds.PixelData = pydicom.encaps.encapsulate([ds.PixelData])
    ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    ds.save_as(tmp_path / "a" / "mpeg2.dcm")
    (entry,) = DicomSource(tmp_path, salt=SALT, workers=1)
    assert isinstance(entry, Rejected)
    assert entry.reason.startswith("unsupported transfer syntax: MPEG2")


def test_symlinked_folders_are_followed_once_and_hidden_folders_are_no_class(tmp_path):
    from pydicom.data import get_testdata_file

    real = tmp_path / "real"
    real.mkdir()
    os.symlink(get_testdata_file("CT_small.dcm"), real / "ct.dcm")
    root = tmp_path / "root"
    (root / ".cache").mkdir(parents=True)
    os.symlink(real, root / "ct")  # a class folder that is a link
    os.symlink(root, real / "loop")  # and a cycle back to the root
    os.symlink(get_testdata_file("MR_small.dcm"), root / ".cache" / "mr.dcm")
    source = DicomSource(root, salt=SALT, keep_filenames=True, workers=1)
    assert source.class_names == ["ct"]
    entries = {entry.source: entry for entry in source}
    assert set(entries) == {"ct/ct.dcm", ".cache/mr.dcm"}
    assert isinstance(entries["ct/ct.dcm"], Item)
    assert entries[".cache/mr.dcm"].reason == "no label: not inside a class folder"


def test_workers_give_the_same_sequence(dicom_tree):
    root, _ = dicom_tree
    results = []
    for workers in (1, 2):
        source = DicomSource(root, salt=SALT, workers=workers, frames="middle")
        source.files = lambda original=source.files: [
            pair for pair in original() if "/dicomdirtests/" in pair[1] or "SC_rgb" in pair[1]
        ]
        results.append([(e.source, getattr(e, "reason", None),
                         None if isinstance(e, Rejected) else e.pixels.tobytes())
                        for e in source])
    assert results[0] == results[1] and len(results[0]) > 40


def test_salt_file_is_created_private_and_must_live_outside(tmp_path):
    salt_file = tmp_path / "secret" / "salt"
    first = privacy.load_salt(salt_file=salt_file)
    assert privacy.load_salt(salt_file=salt_file) == first and len(first) == 64
    assert stat.S_IMODE(os.stat(salt_file).st_mode) == 0o600
    with pytest.raises(ValueError, match="outside the output directory"):
        privacy.check_salt_outside(tmp_path / "out" / "salt", tmp_path / "out")
    privacy.check_salt_outside(salt_file, tmp_path / "out")
    with pytest.raises(ValueError, match="Received: salt=''"):
        privacy.load_salt(salt="")


# ---- through the writer: counts, PHI, patient-level splits --------------------------

PHI_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "OtherPatientIDs",
    "OtherPatientNames", "PatientAddress", "PatientTelephoneNumbers", "AccessionNumber",
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
    "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName", "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy", "StudyID", "StationName", "PatientComments",
    "AdditionalPatientHistory", "ImageComments", "StudyDescription", "SeriesDescription",
)
PHI_VRS = ("PN", "DA", "DT", "TM")


def phi_values(paths):
    """PHI-bearing text values of the inputs, as pydicom reads them.

    Kept: the keywords above, every person name (and each name component), every date
    and time, from every element at any depth. Excluded, because they cannot identify
    anyone and would match unrelated bytes by chance: values shorter than 4 characters
    after stripping (e.g. "0", "M", "CT", "1"), values without a letter or digit, and
    all-zero dates/times.
    """
    values = set()
    for path in paths:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # Large values (pixel data) are read lazily, i.e. not at all here.
                ds = pydicom.dcmread(path, force=True, defer_size=4096)
            elements = list(ds.iterall())
        except Exception:  # noqa: BLE001 - not DICOM: nothing to protect
            continue
        for element in elements:
            if element.keyword not in PHI_KEYWORDS and element.VR not in PHI_VRS:
                continue
            raw = element.value
            for value in (raw if isinstance(raw, (list, tuple, pydicom.multival.MultiValue))
                          else [raw]):
                if value is None or isinstance(value, (bytes, Dataset)):
                    continue
                text = str(value).strip()
                parts = [text]
                if element.VR == "PN":
                    parts += [p.strip() for p in text.replace("=", "^").split("^")]
                for part in parts:
                    meaningful = any(c.isalnum() for c in part) and part.strip("0:.") != ""
                    if len(part) >= 4 and meaningful:
                        values.add(part)
    return values


@pytest.fixture(scope="module")
def written(dicom_tree, tmp_path_factory):
    from kmedimg.data.writer import write_dataset

    root, inputs = dicom_tree
    out = tmp_path_factory.mktemp("dicom_out") / "dataset"
    # Every log line of the conversion, from any library, at DEBUG (workers=1, so the
    # importer's own lines are emitted in this process).
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    handler.setLevel(logging.DEBUG)
    root_logger = logging.getLogger()
    previous = root_logger.level
    root_logger.addHandler(handler)
    root_logger.setLevel(logging.DEBUG)
    try:
        source = DicomSource(root, salt=SALT, frames="middle", dtype="uint16", workers=1)
        manifest = write_dataset(source, out, channels=3, val_fraction=0.25,
                                 test_fraction=0.25, seed=3)
    finally:
        root_logger.removeHandler(handler)
        root_logger.setLevel(previous)
    assert "rejected" in log.getvalue()  # the importer's debug lines were captured
    return root, inputs, out, manifest, log.getvalue()


@pytest.fixture(scope="module")
def records(written):
    return _records(written[2])


def _records(out):
    import tensorflow as tf

    from kmedimg.data import schema

    spec = {schema.ID_KEY: tf.io.FixedLenFeature([], tf.string),
            schema.PATIENT_KEY: tf.io.FixedLenFeature([], tf.string),
            schema.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string)}
    records = []
    for path in sorted(glob.glob(str(out / "*.tfrecord"))):
        split = os.path.basename(path).split("-")[0]
        for serialized in tf.data.TFRecordDataset(path):
            parsed = tf.io.parse_single_example(serialized, spec)
            records.append((split, parsed[schema.ID_KEY].numpy().decode(),
                            parsed[schema.PATIENT_KEY].numpy().decode(),
                            serialized.numpy(), parsed[schema.IMAGE_KEY].numpy()))
    return records


def test_written_plus_rejected_is_the_input_set(written, records):
    _, inputs, out, manifest, _ = written
    salt = SALT.encode()
    owner = {}
    for relative, path in inputs.items():
        owner[privacy.salted_hash(salt, "file", relative)] = relative
        try:
            count = int(_read(path).get("NumberOfFrames", 1) or 1)
        except Exception:  # noqa: BLE001
            count = 1
        for index in range(max(count, 1)):
            owner[privacy.salted_hash(salt, "record", relative, index)] = relative
    with open(out / "rejected.csv", newline="") as handle:
        rejected = list(csv.DictReader(handle))
    written_files = [owner[record_id] for _, record_id, _, _, _ in records]
    rejected_files = [owner[row["source"]] for row in rejected]
    assert len(set(written_files)) == len(written_files)
    assert sorted(written_files + rejected_files) == sorted(inputs)
    counts = manifest.counts
    assert counts["seen"] == len(inputs) == counts["written"] + counts["rejected"]
    # pydicom and pydicom-data ship some byte-identical images; under the two class folders
    # they are identical images under conflicting labels, every copy rejected and counted.
    conflicts = [row for row in rejected if "conflicting labels" in row["reason"]]
    assert manifest.duplicates["label_conflicts"] >= 1 and conflicts
    assert counts["written"] == len(records)
    assert counts["written"] + len(conflicts) >= 130


def test_no_phi_in_any_output_byte(written, records):
    """Searches every output byte except the pixel payloads.

    A pixel payload is exactly the decoded pixel data (checked value by value against
    pydicom above), so it carries nothing from the header; searching inside it would
    only find chance matches (a run of uint16 values 0x7373 reads "ssss"). Burned-in
    annotations in the pixels themselves are outside what an importer can detect.
    """
    root, inputs, out, manifest, log_text = written
    values = phi_values(inputs.values())
    assert {"CompressedSamples^CT1", "CompressedSamples", "1CT1"} <= values  # CT_small.dcm
    assert len(values) > 100
    outputs = {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()}
    assert {"dataset.json", "rejected.csv"} <= set(outputs)
    blobs = [data for name, data in outputs.items() if not name.endswith(".tfrecord")]
    blobs.append(log_text.encode())
    assert len(records) == manifest.counts["written"]
    for _, _, _, serialized, payload in records:
        assert serialized.count(payload) == 1
        blobs.append(serialized.replace(payload, b""))
    found = sorted(value for value in values
                   if any(value.encode("utf-8", "ignore") in blob for blob in blobs))
    assert not found
    # Long, varied values (names, UIDs of free text) are searched in every byte of every
    # output file, pixel payloads included: a chance match is then out of reach.
    # A printable-ASCII value can only sit inside a run of printable bytes, so payloads
    # are reduced to those runs first; other values are searched in the raw bytes.
    long_values = [v for v in values if len(v) >= 10 and len(set(v)) >= 5]
    assert len(long_values) > 20
    payloads = {payload for _, _, _, _, payload in records}  # lossless variants share pixels
    runs = b"\n".join(match.group() for payload in payloads
                       for match in re.finditer(rb"[\x20-\x7e]{10,}", payload))
    found = []
    for value in long_values:
        needle = value.encode("utf-8", "ignore")
        haystacks = [*blobs, runs] if re.fullmatch(rb"[\x20-\x7e]+", needle) else [
            *blobs, *payloads]
        if any(needle in data for data in haystacks):
            found.append(value)
    assert not found
    # Nor file names (without keep_filenames), nor the source root.
    stems = {pathlib.PurePath(r).name for r in inputs} | {str(root)}
    for stem in stems:
        if len(stem) >= 6:
            assert not any(stem.encode() in blob for blob in blobs), stem


def test_patient_level_splits_never_share_a_patient(written, records):
    _, inputs, out, manifest, _ = written
    patients = {}
    for split, _, patient, _, _ in records:
        assert len(patient) == 16
        patients.setdefault(split, set()).add(patient)
    assert set(patients) == {"train", "val", "test"}
    splits = list(patients.values())
    for first in range(len(splits)):
        for second in range(first + 1, len(splits)):
            assert not splits[first] & splits[second]
    salt = SALT.encode()
    ct = _read(next(p for r, p in inputs.items() if r.endswith("/CT_small.dcm")))
    key = privacy.salted_hash(salt, "PatientID", str(ct.PatientID))
    assert any(key in found for found in patients.values())


def test_round_trip_through_load(written):
    from kmedimg.data.pipeline import load

    _, _, out, manifest, _ = written
    dataset = load(out, "train", image_size=32, batch_size=4, training=False)
    images, labels = next(iter(dataset))
    assert images.shape[1:] == (32, 32, 3) and float(np.max(images)) <= 65535
    assert labels.shape == (4, 1)
    assert manifest.source["format"] == "dicom"
    assert manifest.source["intensity"]["offset"] == 1024
    assert manifest.source["privacy"]["salt_fingerprint"] == privacy.salt_fingerprint(
        SALT.encode())


def test_convert_command(tmp_path, capsys):
    """`kmedimg convert --format dicom` with window, frames, salt file; salt inside OUT refused."""
    from pydicom.data import get_testdata_file

    from kmedimg.cli import main
    from kmedimg.data.pipeline import read_manifest

    tree = tmp_path / "tree"
    for folder, names in (("ct", ("CT_small.dcm", "rtstruct.dcm")),
                          ("mr", ("MR_small.dcm", "emri_small.dcm"))):
        (tree / folder).mkdir(parents=True)
        for name in names:
            os.symlink(get_testdata_file(name), tree / folder / name)
    salt_file = tmp_path / "private" / "salt"
    code = main(["convert", str(tree), str(tmp_path / "out"), "--window=-600,1500",
                 "--frames", "all", "--salt-file", str(salt_file), "--workers", "1",
                 "--no-progress"])
    assert code == 0 and salt_file.exists()
    manifest = read_manifest(tmp_path / "out")
    assert manifest.source["format"] == "dicom" and manifest.dtype == "uint8"
    assert manifest.source["window"] == {"name": "explicit", "center": -600.0, "width": 1500.0}
    assert manifest.counts["written"] == 1 + 1 + 10 and manifest.counts["rejected"] == 1
    assert "written" in capsys.readouterr().out
    code = main(["convert", str(tree), str(tmp_path / "out2"), "--salt-file",
                 str(tmp_path / "out2" / "salt"), "--no-progress"])
    assert code == 2 and "outside the output directory" in capsys.readouterr().err
    code = main(["convert", str(tree), str(tmp_path / "out3"), "--format", "dicom",
                 "--slices", "3", "--salt-file", str(salt_file)])
    assert code == 2 and "--slices applies to --format nifti" in capsys.readouterr().err
