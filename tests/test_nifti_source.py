"""NIfTI importer on nibabel's bundled test data and on small volumes with known content."""

import csv
import json
import os

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

from kmedimg.data.sources import privacy  # noqa: E402
from kmedimg.data.sources.base import Item, Rejected  # noqa: E402
from kmedimg.data.sources.dicom_pixels import WINDOW_PRESETS  # noqa: E402
from kmedimg.data.sources.nifti import NiftiSource, slice_indices  # noqa: E402

SALT = "nifti-test-salt"


@pytest.fixture(scope="module")
def nibabel_tree(tmp_path_factory):
    """Every regular file of nibabel's test data dir, symlinked under one class folder."""
    import nibabel.testing

    data = nibabel.testing.data_path
    root = tmp_path_factory.mktemp("nifti_tree")
    (root / "scans").mkdir()
    inputs = {}
    for name in sorted(os.listdir(data)):
        path = os.path.join(data, name)
        if os.path.isfile(path):
            os.symlink(path, root / "scans" / name)
            inputs[f"scans/{name}"] = path
    assert sum(name.endswith((".nii", ".nii.gz")) for name in inputs) >= 7
    return root, inputs


def reference_slices(path, axis=2):
    """nibabel's canonical (RAS+) data of the first 3D volume, sliced and rotated."""
    image = nib.load(path)
    if len(image.shape) > 3:
        image = image.slicer[(slice(None),) * 3 + (0,) * (len(image.shape) - 3)]
    data = nib.as_closest_canonical(image).get_fdata()
    return data, [np.rot90(np.take(data, k, axis=axis)) for k in range(data.shape[axis])]


def expected_uint16(volume, slices):
    """The documented default intensity rule, written out independently."""
    finite = np.isfinite(volume)
    low = volume[finite].min()
    volume_max = volume[finite].max()
    if np.all(np.mod(volume[finite], 1) == 0) and low + 1024 >= 0 and volume_max + 1024 <= 65535:
        return [(np.nan_to_num(s, nan=low) + 1024).astype(np.uint16) for s in slices], None
    step = (volume_max - low) / 65535
    return [np.clip(np.rint((np.where(np.isfinite(s), s, low) - low) / step), 0, 65535)
            .astype(np.uint16) for s in slices], (low, step)


def test_every_nibabel_file_is_written_or_rejected_and_matches(nibabel_tree):
    root, inputs = nibabel_tree
    source = NiftiSource(root, salt=SALT, slices="all", keep_filenames=True, workers=2,
                         task="multiclass")
    by_file = {}
    for entry in source:
        by_file.setdefault(entry.source.split("#")[0], []).append(entry)
    # No .img data files ship with nibabel's headers, so every file is its own input.
    assert set(by_file) == set(inputs)
    written = 0
    for relative, path in inputs.items():
        entries = by_file[relative]
        if not relative.endswith((".nii", ".nii.gz", ".hdr")):
            assert [e.reason for e in entries] == [
                "not a NIfTI file: expected .nii, .nii.gz or a .hdr/.img pair"]
            continue
        try:
            image = nib.load(path)
            readable = isinstance(image, (nib.Nifti1Image, nib.Nifti2Image, nib.Nifti1Pair,
                                          nib.Nifti2Pair)) and "Cifti" not in type(image).__name__
            volume, slices = reference_slices(path) if readable else (None, None)
        except Exception:  # noqa: BLE001 - nibabel cannot read it: must be rejected
            readable = False
        if not readable:
            assert len(entries) == 1 and isinstance(entries[0], Rejected), relative
            continue
        expected, mapping = expected_uint16(volume, slices)
        assert len(entries) == len(expected) == volume.shape[2]
        for entry, reference, real in zip(entries, expected, slices):
            finite = real[np.isfinite(real)]
            if not finite.size or finite.min() == finite.max():  # nothing to learn from
                assert isinstance(entry, Rejected), relative
                assert entry.reason.startswith(("constant slice", "non-finite slice"))
                continue
            np.testing.assert_array_equal(entry.pixels, reference, err_msg=relative)
            written += 1
        items = [e for e in entries if isinstance(e, Item)]
        if mapping:  # recorded per volume: in the item and in the manifest's source
            volume_id = items[0].metadata["volume_id"]
            recorded = source.describe()["intensity"]["per_volume"][volume_id]
            np.testing.assert_allclose([recorded["minimum"], recorded["step"]], mapping)
        assert len({e.patient for e in items}) == 1
    assert written >= 80
    reasons = {e.reason.split(":")[0] for es in by_file.values() for e in es
               if isinstance(e, Rejected)}
    assert {"not a NIfTI file", "not a NIfTI volume", "missing data file"} <= reasons


def _save(path, data, affine=None, **header):
    image = nib.Nifti1Image(data, np.eye(4) if affine is None else affine)
    for key, value in header.items():
        image.header[key] = value
    nib.save(image, path)


def test_orientation_is_canonical_and_axes_slices_choose(tmp_path):
    root = tmp_path / "tree"
    (root / "a").mkdir(parents=True)
    rng = np.random.default_rng(0)
    data = rng.integers(0, 500, size=(6, 7, 9)).astype(np.int16)
    # x runs right->left (LAS, radiological storage): canonical flips axis 0.
    _save(root / "a" / "las.nii.gz", data, np.diag([-1.0, 1.0, 1.0, 1.0]))
    canonical = data[::-1]
    for axis_name, axis in (("sagittal", 0), ("coronal", 1), ("axial", 2)):
        source = NiftiSource(root, salt=SALT, axis=axis_name, slices=3, workers=1,
                             keep_filenames=True, task="multiclass")
        items = list(source)
        indices = slice_indices(canonical.shape[axis], 3)
        assert [i.metadata["slice"] for i in items] == indices
        for item, index in zip(items, indices):
            expected = np.rot90(np.take(canonical, index, axis=axis)).astype(np.int64) + 1024
            np.testing.assert_array_equal(item.pixels, expected)
    assert slice_indices(9, 3) == [1, 4, 7] and slice_indices(4, 10) == [0, 1, 2, 3]
    assert slice_indices(9, "middle") == [4]
    # Axial image: anterior (high y) at the top row.
    marker = np.zeros((4, 5, 3), np.int16)
    marker[0, 4, 1] = 100  # x=0 is the patient's right-most voxel in LAS storage; y=4 anterior
    _save(root / "a" / "marker.nii", marker, np.diag([-1.0, 1.0, 1.0, 1.0]))
    source = NiftiSource(root, salt=SALT, workers=1, keep_filenames=True, task="multiclass")
    item = next(i for i in source if i.source.startswith("a/marker.nii"))
    row, column = np.argwhere(item.pixels == 1124)[0]
    assert row == 0 and column == item.pixels.shape[1] - 1


def test_float_nan_windows_and_fixed_scale(tmp_path):
    root = tmp_path / "tree"
    (root / "ct").mkdir(parents=True)
    hu = np.rint(np.linspace(-1200, 2000, 4 * 5 * 3)).reshape(4, 5, 3).astype(np.float32)
    _save(root / "ct" / "ct.nii", hu, cal_min=-100.0, cal_max=300.0)
    noisy = hu.copy() / 7.0
    noisy[0, 0, 1] = np.nan
    _save(root / "ct" / "float.nii", noisy)
    common = dict(salt=SALT, workers=1, keep_filenames=True, task="multiclass")
    items = {i.source: i for i in NiftiSource(root, **common)}
    middle = np.rot90(hu[:, :, 1].astype(np.float64))
    # ct.nii is integral but -1200 + 1024 < 0: mapped per volume (min-max), not clipped.
    assert items["ct/ct.nii#2:1"].metadata["intensity"] == "per_volume"
    floaty = items["ct/float.nii#2:1"]
    assert floaty.metadata["non_finite_voxels"] == 1
    assert floaty.pixels.min() == 0 and floaty.pixels.max() <= 65535
    brain = {i.source: i for i in NiftiSource(root, window="brain", **common)}
    center, width = WINDOW_PRESETS["brain"]
    expected = np.clip(((middle - (center - 0.5)) / (width - 1) + 0.5), 0, 1) * 255
    np.testing.assert_array_equal(brain["ct/ct.nii#2:1"].pixels, np.rint(expected).astype(np.uint8))
    from_file = {i.source: i for i in NiftiSource(root, window="file", **common)}
    expected = np.clip((middle + 100) / 400, 0, 1) * 255
    np.testing.assert_array_equal(from_file["ct/ct.nii#2:1"].pixels,
                                  np.rint(expected).astype(np.uint8))
    assert isinstance(from_file["ct/float.nii"], Rejected)  # no cal_min/cal_max
    fixed = {i.source: i for i in NiftiSource(root, scale=1.0, offset=1024, **common)}
    np.testing.assert_array_equal(fixed["ct/ct.nii#2:1"].pixels,
                                  np.clip(np.rint(middle) + 1024, 0, 65535).astype(np.uint16))
    assert fixed["ct/ct.nii#2:1"].metadata["clipped_voxels"] > 0


def test_labels_csv_privacy_and_arguments(tmp_path):
    root = tmp_path / "tree"
    (root / "p").mkdir(parents=True)
    for name in ("Smith_Jane_t1.nii.gz", "Brown_Oliver_t1.nii.gz"):
        _save(root / "p" / name, np.arange(60, dtype=np.int16).reshape(3, 4, 5))
    table = tmp_path / "labels.csv"
    with open(table, "w", newline="") as handle:
        csv.writer(handle).writerows([("path", "label"), ("p/Smith_Jane_t1.nii.gz", "glioma"),
                                      ("p/Brown_Oliver_t1.nii.gz", "normal")])
    source = NiftiSource(root, labels=table, salt=SALT, workers=1, slices="all")
    items = list(source)
    assert source.class_names == ["glioma", "normal"] and len(items) == 10
    text = repr(items) + json.dumps(source.describe())
    assert "Smith" not in text and "Oliver" not in text
    patients = {i.patient for i in items}
    assert patients == {privacy.salted_hash(SALT.encode(), "volume", f"p/{n}")
                        for n in ("Smith_Jane_t1.nii.gz", "Brown_Oliver_t1.nii.gz")}
    for bad, match in ((dict(axis="oblique"), "axis"), (dict(slices=0), "slices"),
                       (dict(scale=-1), "scale"), (dict(window="lungs"), "window")):
        with pytest.raises(ValueError, match=match):
            NiftiSource(root, labels=table, salt=SALT, **bad)


def test_through_writer_and_load(nibabel_tree, tmp_path):
    from kmedimg.data.pipeline import load
    from kmedimg.data.writer import write_dataset

    root, _ = nibabel_tree
    source = NiftiSource(root, salt=SALT, slices=4, workers=1, task="multiclass")
    manifest = write_dataset(source, tmp_path / "out")
    assert manifest.counts["seen"] == manifest.counts["written"] + manifest.counts["rejected"]
    # 7 volumes, 4 slices each except functional.nii and resampled_anat_moved.nii (3).
    assert manifest.counts["written"] == 7 * 4 - 2
    assert manifest.source["intensity"]["per_volume"]
    images, labels = next(iter(load(tmp_path / "out", "train", image_size=16, batch_size=5,
                                    training=False)))
    assert images.shape == (5, 16, 16, 1) and labels.shape == (5, 1)


def test_convert_command(tmp_path, capsys):
    from kmedimg.cli import main
    from kmedimg.data.pipeline import read_manifest

    root = tmp_path / "tree"
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for index in range(2):
            # Distinct volumes: identical images under two labels are rejected as conflicts.
            data = rng.integers(0, 1000, (5, 6, 7)).astype(np.int16)
            _save(root / label / f"v{index}.nii.gz", data)
    code = main(["convert", str(root), str(tmp_path / "out"), "--axis", "coronal",
                 "--slices", "2", "--salt-file", str(tmp_path / "salt"), "--workers", "1",
                 "--no-progress"])
    assert code == 0
    manifest = read_manifest(tmp_path / "out")
    assert manifest.source["format"] == "nifti" and manifest.source["axis"] == "coronal"
    assert manifest.counts["written"] == 4 * 2 and manifest.height == 7 and manifest.width == 5
    capsys.readouterr()
