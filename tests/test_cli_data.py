"""`kmedimg convert` / `kmedimg inspect` in-process, on real files and the shared data."""

import collections
import csv
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from conftest import shared_data
from kmedimg.cli import main
from kmedimg.data.pipeline import read_manifest
from kmedimg.data.sources import FolderSource, Item
from test_synthetic import loaded_pairs, source_pairs


def _rejected(out):
    with open(os.path.join(out, "rejected.csv"), newline="") as handle:
        return list(csv.reader(handle))[1:]


def _md5_groups(md5_file):
    by_digest = collections.defaultdict(set)
    for line in md5_file.read_text().splitlines():
        digest, path = line.split(None, 1)
        by_digest[digest].add(path[2:] if path.startswith("./") else path)
    return [group for group in by_digest.values() if len(group) > 1]


def test_convert_brain_mri_accounts_for_every_file_and_reports_duplicates(tmp_path, capsys):
    root = shared_data("images/brain_tumor_mri_yes_no")
    md5_groups = _md5_groups(shared_data("images/brain_tumor_mri_yes_no.md5"))
    assert len(md5_groups) == 22
    out = str(tmp_path / "brain")
    code = main(["convert", str(root), out, "--val-fraction", "0.2", "--test-fraction", "0.1",
                 "--image-size", "64", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "Exact duplicates: 22 groups, 47 images, 25 extra copies" in printed
    manifest = read_manifest(out)
    files = sum(len(names) for _, _, names in os.walk(root))
    assert files == 253
    assert manifest.counts["seen"] == 253
    assert manifest.counts["written"] + manifest.counts["rejected"] == 253
    assert len(_rejected(out)) == manifest.counts["rejected"]
    assert manifest.class_names == ["no", "yes"]
    assert manifest.channels == 1 and (manifest.height, manifest.width) == (64, 64)
    # Every byte-identical group of the md5 list is one reported duplicate group,
    # kept inside one split.
    reported = [set(group["sources"]) for group in manifest.duplicates["list"]]
    assert manifest.duplicates["groups"] == len(md5_groups)
    for group in md5_groups:
        assert group in reported, group
    assert all(len(group["splits"]) == 1 for group in manifest.duplicates["list"])

    # Dropping duplicates rejects exactly the extra copies, each with its reason.
    dropped = str(tmp_path / "dropped")
    assert main(["convert", str(root), dropped, "--drop-duplicates", "--image-size", "32",
                 "--no-progress"]) == 0
    manifest = read_manifest(dropped)
    assert manifest.counts["written"] == 253 - 25
    reasons = [reason for _, reason in _rejected(dropped)]
    assert sum("exact duplicate" in reason for reason in reasons) == 25


def test_convert_pneumoniamnist_keeps_official_splits(tmp_path, capsys):
    path = shared_data("medmnist/pneumoniamnist_trainval.npz")
    out = str(tmp_path / "pneumonia")
    assert main(["convert", str(path), out, "--no-progress"]) == 0
    manifest = read_manifest(out)
    assert {name: split.count for name, split in manifest.splits.items()} == {
        "train": 4708, "val": 524
    }
    assert manifest.class_names == ["normal", "pneumonia"]
    with np.load(path) as data:
        for split in ("train", "val"):
            labels = data[f"{split}_labels"][:, 0]
            assert manifest.splits[split].class_counts == {
                "normal": int((labels == 0).sum()), "pneumonia": int((labels == 1).sum())
            }
    printed = capsys.readouterr().out
    assert re.search(r"train\s+\(all\)\s+4708\s+\d+", printed)
    assert re.search(r"val\s+\(all\)\s+524\s+8", printed)
    # PneumoniaMNIST's official splits share 8 exact-duplicate groups: reported, kept.
    assert manifest.duplicates["straddling"] == 8
    assert "Groups straddling splits: 8." in printed


@pytest.fixture
def small_tree(tmp_path):
    root = tmp_path / "tree"
    rng = np.random.default_rng(0)
    for class_name in ("benign", "malignant", "normal"):
        (root / class_name).mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / class_name / f"image {i}.png")
    (root / "normal" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return root


def test_convert_folder_round_trip_and_inspect(small_tree, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert main(["convert", str(small_tree), out, "--val-fraction", "0.25", "--shards", "2",
                 "--encoding", "png", "--compression", "GZIP", "--seed", "3",
                 "--no-progress"]) == 0
    summary = capsys.readouterr().out
    assert re.search(r"\(rejected\)\s+\(no label\)\s+1", summary)
    manifest = read_manifest(out)
    assert manifest.task == "multiclass" and manifest.channels == 3
    assert manifest.encoding == "png" and manifest.compression == "GZIP"
    assert {name: len(split.shards) for name, split in manifest.splits.items()} == {
        "train": 2, "val": 2
    }
    assert [row[0] for row in _rejected(out)] == ["normal/broken.png"]
    assert manifest.conversion["args"]["format"] == "folder"
    source = FolderSource(small_tree)
    assert loaded_pairs(out) == source_pairs(e for e in source if isinstance(e, Item))

    assert main(["inspect", out, "--verify"]) == 0
    printed = capsys.readouterr().out
    assert "multiclass: benign, malignant, normal" in printed
    assert "All shard checksums match" in printed
    assert main(["inspect", out, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["rejected"] == 1
    assert main(["inspect", str(tmp_path / "nothing here")]) == 2
    assert "nothing here" in capsys.readouterr().err


def test_convert_progress_bars(tmp_path, capsys):
    assert main(["convert", "synthetic:12", str(tmp_path / "p"), "--image-size", "16"]) == 0
    err = capsys.readouterr().err
    assert "reading" in err and "12/12" in err and "writing" in err


def test_convert_synthetic_and_format_flags(tmp_path, capsys):
    out = str(tmp_path / "phantoms")
    assert main(["convert", "synthetic:30", out, "--image-size", "20", "--dtype", "uint16",
                 "--test-fraction", "0.2", "--no-progress"]) == 0
    manifest = read_manifest(out)
    assert manifest.dtype == "uint16" and manifest.height == 20
    assert manifest.source["image_size"] == 20  # drawn at that size, not resampled
    capsys.readouterr()
    # A flag of another format is an error naming it, not silently ignored.
    code = main(["convert", "synthetic:5", str(tmp_path / "x"), "--root", "/tmp"])
    assert code == 2
    assert "--root applies to --format csv" in capsys.readouterr().err
    code = main(["convert", "synthetic:5", str(tmp_path / "y"), "--class-names", "a,b"])
    assert code == 2
    assert "--class-names does not apply to --format synthetic" in capsys.readouterr().err
    code = main(["convert", str(tmp_path / "missing"), str(tmp_path / "z")])
    assert code == 2
    assert "not found" in capsys.readouterr().err
    # Converting onto an existing dataset needs --overwrite.
    assert main(["convert", "synthetic:10", out, "--no-progress"]) == 2
    assert main(["convert", "synthetic:10", out, "--no-progress", "--overwrite"]) == 0
