"""Importers on real tiny files: folder trees, CSV tables, MedMNIST .npz, TFDS errors."""

import collections
import hashlib
import os
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from conftest import shared_data
from kmedimg.data.sources import (
    CsvSource,
    FolderSource,
    Item,
    NpzSource,
    Rejected,
    TfdsSource,
    detect_format,
    get_source_class,
    list_sources,
    open_source,
    register_source,
)
from kmedimg.core.registry import Registry
from kmedimg.data.sources import privacy, registry, tfds as tfds_module


def _grey(seed, size=(12, 10)):
    return np.random.default_rng(seed).integers(0, 256, size=size, dtype=np.uint8)


def _rgb(seed, size=(12, 10)):
    return np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)


def _split(items):
    kept = [item for item in items if isinstance(item, Item)]
    rejected = [item for item in items if isinstance(item, Rejected)]
    return kept, rejected


@pytest.fixture
def mixed_tree(tmp_path):
    """A class-per-folder tree with every mode/format and the usual junk."""
    root = tmp_path / "tree"
    (root / "cat").mkdir(parents=True)
    (root / "dog" / "nested dir").mkdir(parents=True)
    grey = _grey(0)
    Image.fromarray(grey).save(root / "cat" / "grey image.png")
    Image.fromarray(_rgb(1)).save(root / "cat" / "colour.bmp")
    Image.fromarray(_rgb(2)).save(root / "cat" / "colour.tiff")
    rgba = np.dstack([_rgb(3), np.full((12, 10), 255, np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(root / "dog" / "alpha.png")
    Image.fromarray(_rgb(4)).convert("P", palette=Image.Palette.ADAPTIVE).save(
        root / "dog" / "palette.png"
    )
    Image.fromarray(_rgb(5)).save(root / "dog" / "nested dir" / "photo.jpg", quality=95)
    # A PNG named .jpg: recognised by content.
    Image.fromarray(_grey(6)).save(root / "dog" / "really a png.jpg", format="PNG")
    # Truncated JPEG and a non-image.
    Image.fromarray(_rgb(7, (64, 64))).save(root / "dog" / "whole.jpg", quality=90)
    data = (root / "dog" / "whole.jpg").read_bytes()
    (root / "dog" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "stray.png").write_bytes((root / "cat" / "grey image.png").read_bytes())
    (root / ".DS_Store").write_bytes(b"finder junk")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.png").write_bytes(b"junk")
    return root, grey


def test_folder_every_file_accounted_with_reasons(mixed_tree):
    root, grey = mixed_tree
    source = FolderSource(root, channels=3)
    assert source.class_names == ["cat", "dog"]
    assert source.task == "binary"
    kept, rejected = _split(list(source))
    files_under_classes = sum(
        len(files) for d, _, files in os.walk(root) if not d.startswith(str(root / ".hidden"))
    )
    assert len(kept) + len(rejected) == files_under_classes  # incl. the stray root file
    reasons = {r.source: r.reason for r in rejected}
    assert set(reasons) == {"stray.png", ".DS_Store", "dog/truncated.jpg", "dog/notes.txt"}
    assert "outside any class folder" in reasons["stray.png"]
    assert "truncated" in reasons["dog/truncated.jpg"] or "decode" in reasons["dog/truncated.jpg"]
    assert "not an image" in reasons["dog/notes.txt"]
    by_source = {item.source: item for item in kept}
    assert "dog/nested dir/photo.jpg" in by_source
    assert all(item.pixels.shape[-1] == 3 and item.pixels.dtype == np.uint8 for item in kept)
    np.testing.assert_array_equal(by_source["cat/grey image.png"].pixels[..., 1], grey)
    assert by_source["dog/alpha.png"].labels == ("dog",)
    # Opaque alpha composited onto black changes nothing.
    np.testing.assert_array_equal(by_source["dog/alpha.png"].pixels, _rgb(3))
    assert source.describe()["ignored_directories"] == [".hidden"]
    # Re-iterable with the same sequence.
    assert [getattr(e, "source") for e in source] == [getattr(e, "source") for e in source]


def test_folder_channel_policy(tmp_path):
    root = tmp_path / "t"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
    Image.fromarray(_grey(0)).save(root / "a" / "g.png")
    grey_rgb = np.repeat(_grey(1)[..., None], 3, axis=-1)
    Image.fromarray(grey_rgb).save(root / "b" / "grey_as_rgb.png")
    auto = FolderSource(root)
    assert auto.resolve() == (1, "uint8")
    kept, _ = _split(list(auto))
    assert [item.pixels.shape[-1] for item in kept] == [1, 1]
    np.testing.assert_array_equal(kept[1].pixels[..., 0], _grey(1))
    # One truly coloured file makes the whole tree RGB.
    Image.fromarray(_rgb(2)).save(root / "b" / "colour.png")
    assert FolderSource(root).resolve() == (3, "uint8")
    # Explicit grey converts colour with the luma formula.
    kept, _ = _split(list(FolderSource(root, channels=1)))
    colour = [item for item in kept if item.source == "b/colour.png"][0]
    expected = np.asarray(Image.fromarray(_rgb(2)).convert("L"))
    np.testing.assert_array_equal(colour.pixels[..., 0], expected)


def test_folder_sixteen_bit_and_transparent_palette(tmp_path):
    root = tmp_path / "t"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
    deep = np.random.default_rng(0).integers(0, 65536, size=(9, 7), dtype=np.uint16)
    Image.fromarray(deep).save(root / "a" / "deep.png")
    Image.fromarray(deep).save(root / "b" / "deep.tif")
    source = FolderSource(root)
    assert source.resolve() == (1, "uint16")
    kept, rejected = _split(list(source))
    assert not rejected
    for item in kept:
        np.testing.assert_array_equal(item.pixels[..., 0], deep)
    as_eight = _split(list(FolderSource(root, dtype="uint8")))[0][0].pixels
    np.testing.assert_array_equal(as_eight[..., 0], np.rint(deep / 257.0).astype(np.uint8))
    # Mixing 8- and 16-bit files under dtype="auto" is a clear error.
    Image.fromarray(_grey(3)).save(root / "b" / "eight.png")
    with pytest.raises(ValueError, match="mix 8-bit and 16-bit"):
        list(FolderSource(root))
    # A palette image with a transparent index: that colour becomes black.
    palette = Image.fromarray(_rgb(4)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    palette.info["transparency"] = 0
    palette.save(root / "b" / "transparent.png", transparency=0)
    kept, _ = _split(list(FolderSource(root, channels=3, dtype="uint8")))
    item = [i for i in kept if i.source == "b/transparent.png"][0]
    indices = np.asarray(Image.open(root / "b" / "transparent.png"))
    assert (item.pixels[indices == 0] == 0).all()
    assert (item.pixels[indices != 0].sum(axis=-1) > 0).any()


def test_folder_applies_exif_orientation(tmp_path):
    root = tmp_path / "t"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
    pixels = _grey(0, (6, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: viewers rotate 90 degrees clockwise
    Image.fromarray(pixels).save(root / "a" / "sideways.png", exif=exif)
    Image.fromarray(pixels).save(root / "b" / "upright.png")
    kept, _ = _split(list(FolderSource(root)))
    np.testing.assert_array_equal(kept[0].pixels[..., 0], np.rot90(pixels, k=-1))
    np.testing.assert_array_equal(kept[1].pixels[..., 0], pixels)


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        FolderSource(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no class folders"):
        FolderSource(empty)
    (empty / "a").mkdir()
    (empty / "b").mkdir()
    Image.fromarray(_grey(0)).save(empty / "a" / "x.png")
    with pytest.raises(ValueError, match=r"class folders with no files: \['b'\]"):
        FolderSource(empty)
    with pytest.raises(ValueError, match="at least 2"):
        FolderSource(empty, classes=["a"])
    with pytest.raises(ValueError, match="do not exist"):
        FolderSource(empty, classes=["a", "zebra"])
    with pytest.raises(ValueError, match="channels"):
        FolderSource(empty, channels=2)


def test_brain_mri_tree_all_files_accounted():
    root = shared_data("images/brain_tumor_mri_yes_no")
    source = FolderSource(root)
    kept, rejected = _split(list(source))
    assert len(kept) + len(rejected) == 253
    assert source.class_names == ["no", "yes"]
    counts = collections.Counter(item.labels[0] for item in kept)
    assert counts["yes"] + sum(r.source.startswith("yes/") for r in rejected) == 155
    assert counts["no"] + sum(r.source.startswith("no/") for r in rejected) == 98
    # The tree's RGB JPEGs are grey MRI slices: auto picks one channel.
    assert source.resolve() == (1, "uint8")


def _write_csv(path, rows, header="path,label"):
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def test_csv_paths_labels_and_row_rejections(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        Image.fromarray(_grey(i)).save(images / f"img {i}.png")
    outside = tmp_path.parent / f"{tmp_path.name}_outside.png"
    Image.fromarray(_grey(9)).save(outside)
    csv_path = _write_csv(
        tmp_path / "labels.csv",
        [
            "images/img 0.png,normal,p1",
            "images/img 1.png,1,p2",  # index into class_names
            "images/img 2.png,pneumonia,",
            f"../{outside.name},normal,p3",  # outside the root
            "images/missing.png,normal,p4",
            "images/img 3.png,mystery,p5",  # unknown label
            "images/img 0.png,normal,p1",  # same file again
            ",normal,p6",
        ],
        header="path,label,patient_id",
    )
    source = CsvSource(csv_path, class_names=["normal", "pneumonia"], salt="s")
    assert source.task == "binary"
    kept, rejected = _split(list(source))
    assert [item.labels for item in kept] == [("normal",), ("pneumonia",), ("pneumonia",)]
    # Patient ids are stored as DICOM's salted PatientID hash, never raw.
    assert [item.patient for item in kept] == [
        privacy.salted_hash(b"s", "PatientID", "p1"),
        privacy.salted_hash(b"s", "PatientID", "p2"), None]
    np.testing.assert_array_equal(kept[1].pixels[..., 0], _grey(1))
    reasons = [r.reason for r in rejected]
    assert len(kept) + len(rejected) == 8
    assert "row 5: path points outside the root" in reasons[0]
    assert "row 6: file not found" in reasons[1]
    assert "row 7: unknown label 'mystery'" in reasons[2]
    assert "row 8: same file as row 2" in reasons[3]
    assert "row 9: empty path" in reasons[4]


def test_csv_multilabel_root_and_inferred_classes(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        Image.fromarray(_rgb(i)).save(data / f"{i}.png")
    (tmp_path / "sub").mkdir()
    csv_path = _write_csv(
        tmp_path / "sub" / "t.csv", ["0.png,effusion|mass", "1.png,", "2.png,mass"]
    )
    source = CsvSource(csv_path, root=data, task="multilabel")
    assert source.task == "multilabel"
    assert source.class_names == ["effusion", "mass"]
    kept, rejected = _split(list(source))
    assert not rejected
    assert [item.labels for item in kept] == [("effusion", "mass"), (), ("mass",)]
    assert kept[0].pixels.shape == (12, 10, 3)
    # Integer labels without names -> "0".."max".
    numeric = _write_csv(tmp_path / "n.csv", ["data/0.png,0", "data/1.png,2"])
    assert CsvSource(numeric).class_names == ["0", "1", "2"]


def test_csv_header_errors(tmp_path):
    bad = _write_csv(tmp_path / "bad.csv", ["a.png,x"], header="file,label")
    with pytest.raises(ValueError, match=r"missing column 'path'.*Allowed columns"):
        CsvSource(bad)
    extra = _write_csv(tmp_path / "extra.csv", ["a.png,x,3"], header="path,label,age")
    with pytest.raises(ValueError, match=r"unknown column 'age'"):
        CsvSource(extra)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        CsvSource(empty)
    only_header = _write_csv(tmp_path / "h.csv", [])
    with pytest.raises(ValueError, match="no rows"):
        CsvSource(only_header)


def _npz(path, compressed=False, **arrays):
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


def test_npz_keeps_official_splits_and_streams(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (5, 6, 6), dtype=np.uint8)
    val = rng.integers(0, 256, (3, 6, 6), dtype=np.uint8)
    path = _npz(
        tmp_path / "pneumoniamnist.npz",
        compressed=True,
        train_images=train,
        train_labels=np.array([[0], [1], [1], [0], [1]], np.uint8),
        val_images=val,
        val_labels=np.array([[1], [0], [0]], np.uint8),
    )
    source = NpzSource(path)
    assert source.class_names == ["normal", "pneumonia"]
    assert source.task == "binary"
    items = list(source)
    assert [item.split for item in items] == ["train"] * 5 + ["val"] * 3
    assert items[1].labels == ("pneumonia",)
    np.testing.assert_array_equal(np.stack([i.pixels[..., 0] for i in items[5:]]), val)
    assert items[0].source == "npz:train[0]"
    assert [i.source for i in source] == [i.source for i in items]


def test_npz_only_test_split_multilabel_and_colour(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (4, 5, 5, 3), dtype=np.uint8)
    labels = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0], [1, 1, 1]], np.uint8)
    path = _npz(tmp_path / "mine.npz", test_images=images, test_labels=labels)
    source = NpzSource(path)
    assert source.task == "multilabel"
    assert source.class_names == ["0", "1", "2"]
    items = list(source)
    assert [i.split for i in items] == ["test"] * 4
    assert [i.labels for i in items] == [("0", "2"), (), ("1",), ("0", "1", "2")]
    np.testing.assert_array_equal(items[3].pixels, images[3])
    named = NpzSource(path, class_names=["a", "b", "c"])
    assert list(named)[0].labels == ("a", "c")


def test_npz_fortran_order_array(tmp_path):
    images = np.asfortranarray(np.random.default_rng(2).integers(0, 256, (5, 4, 6), np.uint8))
    path = _npz(tmp_path / "f.npz", train_images=images, train_labels=np.array([0, 1, 0, 1, 1]))
    items = list(NpzSource(path))
    np.testing.assert_array_equal(np.stack([i.pixels[..., 0] for i in items]), images)


def test_npz_float_and_errors(tmp_path):
    images = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3)
    ok = _npz(tmp_path / "f.npz", train_images=images, train_labels=np.array([0, 2]))
    source = NpzSource(ok)
    assert source.task == "multiclass"
    assert list(source)[1].pixels.dtype == np.uint8
    nan = images.copy()
    nan[1, 0, 0] = np.nan
    bad = _npz(tmp_path / "nan.npz", train_images=nan, train_labels=np.array([0, 1]))
    with pytest.raises(ValueError, match=r"key train_images contains NaN or inf \(first at image 1\)"):
        NpzSource(bad)
    bad_labels = _npz(
        tmp_path / "nanl.npz", val_images=images.astype(np.uint8),
        val_labels=np.array([0.0, np.inf]),
    )
    with pytest.raises(ValueError, match="key val_labels contains NaN or inf"):
        NpzSource(bad_labels)
    fractional = _npz(tmp_path / "fr.npz", train_images=images / 7, train_labels=np.array([0, 1]))
    with pytest.raises(ValueError, match="non-integer float pixels"):
        NpzSource(fractional)
    with pytest.raises(ValueError, match="unexpected keys"):
        NpzSource(_npz(tmp_path / "x.npz", x=images))
    with pytest.raises(ValueError, match="has no matching train_labels"):
        NpzSource(_npz(tmp_path / "m.npz", train_images=images))
    with pytest.raises(ValueError, match="3D volumes"):
        NpzSource(_npz(tmp_path / "v.npz", train_images=np.zeros((2, 4, 4, 4), np.uint8),
                       train_labels=np.array([0, 1])))
    with pytest.raises(ValueError, match="2 rows but train_images has 3"):
        NpzSource(_npz(tmp_path / "c.npz", train_images=np.zeros((3, 4, 4), np.uint8),
                       train_labels=np.array([0, 1])))
    with pytest.raises(ValueError, match="beyond the 2 class names"):
        NpzSource(_npz(tmp_path / "breastmnist_x.npz", train_images=np.zeros((2, 4, 4), np.uint8),
                       train_labels=np.array([0, 5])))


def test_npz_pneumoniamnist_official_sizes():
    path = shared_data("medmnist/pneumoniamnist_trainval.npz")
    source = NpzSource(path)
    assert source.class_names == ["normal", "pneumonia"]
    counts = collections.Counter(item.split for item in source)
    assert counts == {"train": 4708, "val": 524}
    with np.load(path) as data:
        first_val = data["val_images"][0]
    val_item = next(item for item in source if item.split == "val")
    np.testing.assert_array_equal(val_item.pixels[..., 0], first_val)


def test_tfds_missing_package_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(ImportError, match=r"pip install 'kmedimg\[tfds\]'"):
        TfdsSource("tfds:mnist", data_dir="/nonexistent")
    with pytest.raises(ImportError, match="tensorflow-datasets"):
        open_source("tfds:mnist")


def test_tfds_spec_split_mapping_and_example_conversion():
    assert tfds_module.parse_spec("tfds:mnist/config:1.0.0") == "mnist/config:1.0.0"
    with pytest.raises(ValueError, match="tfds:NAME"):
        tfds_module.parse_spec("tfds:")
    assert tfds_module.map_splits(["train", "validation", "test"]) == [
        ("train", "train"), ("validation", "val"), ("test", "test")
    ]
    with pytest.raises(ValueError, match=r"splits \['extra'\] with no kmedimg name"):
        tfds_module.map_splits(["train", "extra"])
    assert tfds_module.map_splits(["train", "extra"], {"extra": "test"}) == [("extra", "test")]
    with pytest.raises(ValueError, match="not in the dataset"):
        tfds_module.map_splits(["train"], ["test"])
    image = np.zeros((4, 4, 1), np.uint8)
    item = tfds_module.example_to_item(
        {"image": image, "label": np.int64(1)}, 7, "validation", "val", "image", "label",
        ["a", "b"], "binary",
    )
    assert (item.source, item.split, item.labels) == ("tfds:validation[7]", "val", ("b",))
    multi = tfds_module.example_to_item(
        {"image": image, "label": np.array([True, False, True])}, 0, "train", "train",
        "image", "label", ["x", "y", "z"], "multilabel",
    )
    assert multi.labels == ("x", "z")
    with pytest.raises(ValueError, match="no feature 'label'"):
        tfds_module.example_to_item({"image": image}, 0, "train", "train", "image", "label",
                                    ["a", "b"], "binary")


def test_registry_detection_and_errors(tmp_path, monkeypatch):
    assert {"folder", "csv", "npz", "tfds", "synthetic"} <= set(list_sources())
    (tmp_path / "a").mkdir()
    assert detect_format(str(tmp_path)) == "folder"
    table = _write_csv(tmp_path / "t.csv", ["a/x.png,0"])
    assert detect_format(str(table)) == "csv"
    assert detect_format("tfds:mnist") == "tfds"
    assert detect_format("synthetic:10") == "synthetic"
    assert open_source("synthetic:3", image_size=16).num_images == 3
    with pytest.raises(FileNotFoundError):
        detect_format(str(tmp_path / "nope.npz"))
    odd = tmp_path / "file.xyz"
    odd.write_text("?")
    with pytest.raises(ValueError, match="Registered formats"):
        detect_format(str(odd))
    with pytest.raises(ValueError, match=r"Unknown source format 'dicomm'\. Did you mean "
                       r"'dicom'\?.*folder.*Received: format='dicomm'"):
        get_source_class("dicomm")
    with pytest.raises(ValueError, match="already registered"):
        register_source("folder")(type("Again", (), {}))

    monkeypatch.setattr(registry, "SOURCES", Registry("source format", argument="format"))

    @register_source("test_only_format")
    class _Temporary:
        pass

    assert get_source_class("test_only_format") is _Temporary
    assert list_sources() == ["test_only_format"]


# ---- round trips: source -> TFRecords -> load ------------------------------------------


def _round_trip(source, out, **writer_kwargs):
    from kmedimg.data.writer import write_dataset
    from test_synthetic import loaded_pairs, source_pairs

    manifest = write_dataset(source, str(out), **writer_kwargs)
    kept, rejected = _split(list(source))
    assert manifest.counts["written"] == len(kept)
    assert manifest.counts["rejected"] == len(rejected)
    assert loaded_pairs(str(out)) == source_pairs(kept)
    return manifest


def test_round_trip_folder_uint16_and_csv_multilabel(tmp_path):
    root = tmp_path / "tree"
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(4):
            deep = rng.integers(0, 65536, (8, 8), dtype=np.uint16)
            Image.fromarray(deep).save(root / name / f"{i}.png")
    manifest = _round_trip(FolderSource(root), tmp_path / "deep", val_fraction=0.25)
    assert manifest.dtype == "uint16"

    for i in range(5):
        Image.fromarray(_rgb(i, (7, 9))).save(tmp_path / f"c{i}.png")
    table = _write_csv(
        tmp_path / "multi.csv",
        ["c0.png,x|y", "c1.png,y", "c2.png,", "c3.png,z|x", "c4.png,nope|x", "c5.png,x"],
    )
    source = CsvSource(table, class_names=["x", "y", "z"], task="multilabel")
    manifest = _round_trip(source, tmp_path / "multi", encoding="png")
    assert manifest.task == "multilabel" and manifest.channels == 3
    assert manifest.counts["rejected"] == 2  # unknown label, missing file


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_round_trip_npz_keeps_splits(tmp_path, dtype):
    rng = np.random.default_rng(3)
    top = np.iinfo(dtype).max
    arrays = {
        "train_images": rng.integers(0, top, (6, 5, 5), dtype=dtype),
        "train_labels": np.array([[0], [1], [2], [0], [1], [2]]),
        "test_images": rng.integers(0, top, (3, 5, 5), dtype=dtype),
        "test_labels": np.array([[2], [2], [0]]),
    }
    path = _npz(tmp_path / "three.npz", **arrays)
    manifest = _round_trip(NpzSource(path, class_names=["p", "q", "r"]), tmp_path / "out")
    assert {name: split.count for name, split in manifest.splits.items()} == {
        "train": 6, "test": 3
    }
    assert manifest.task == "multiclass" and manifest.dtype == dtype
