"""Bad inputs to the importers (issue 14, "Inputs"): every one is written, rejected with
a reason naming it, or refused early with a one-line error — never dropped silently
and never a traceback from deep inside a reader."""

import os

import numpy as np
import pytest
from PIL import Image

from kmedimg.data.planning import plan_conversion
from kmedimg.data.sources.base import Item, Rejected
from kmedimg.data.sources.csv_source import CsvSource
from kmedimg.data.sources.folder import FolderSource
from kmedimg.data.sources.npz import NpzSource


def _png(path, seed, size=8):
    path = os.fsencode(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="PNG")


def _tree(root, per_class=2):
    seed = 0
    for name in ("a", "b"):
        for index in range(per_class):
            seed += 1
            _png(os.path.join(root, name, f"{index}.png"), seed)
    return root


def _counts(source):
    plan = plan_conversion(source)
    return len(plan.entries), len(plan.kept()), len(plan.rejected_rows()), plan


# --- Failure 4: symlinked sub-folders -------------------------------------------------


def test_symlinked_subfolder_inside_source_is_followed_and_counted(tmp_path):
    root = _tree(tmp_path / "src")
    _png(tmp_path / "src" / ".store" / "x.png", 100)
    _png(tmp_path / "src" / ".store" / "y.png", 101)
    os.symlink(tmp_path / "src" / ".store", tmp_path / "src" / "a" / "linked")
    seen, written, rejected, plan = _counts(FolderSource(root, channels=1, dtype="uint8"))
    assert (seen, written, rejected) == (6, 6, 0)
    assert {"a/linked/x.png", "a/linked/y.png"} <= {entry.source for entry in plan.kept()}


def test_symlinked_subfolder_leaving_source_or_looping_is_rejected_with_reason(tmp_path):
    root = _tree(tmp_path / "src")
    _png(tmp_path / "outside" / "z.png", 200)
    os.symlink(tmp_path / "outside", tmp_path / "src" / "a" / "away")
    os.symlink(tmp_path / "src" / "b", tmp_path / "src" / "b" / "loop")
    seen, written, rejected, plan = _counts(FolderSource(root, channels=1, dtype="uint8"))
    assert written + rejected == seen == 6
    reasons = dict(plan.rejected_rows())
    assert "outside the source folder" in reasons["a/away"]
    assert "already read" in reasons["b/loop"]


def test_class_folder_holding_only_a_symlinked_folder_is_not_empty(tmp_path):
    root = _tree(tmp_path / "src")
    _png(tmp_path / "src" / ".store" / "x.png", 100)
    os.makedirs(tmp_path / "src" / "c")
    os.symlink(tmp_path / "src" / ".store", tmp_path / "src" / "c" / "linked")
    source = FolderSource(root, channels=1, dtype="uint8")
    assert source.class_names == ["a", "b", "c"]
    assert [e.source for e in source if isinstance(e, Item)][-1] == "c/linked/x.png"


# --- Non-UTF-8 names, decompression bombs --------------------------------------------


def test_non_utf8_file_name_is_rejected_with_an_escaped_name(tmp_path):
    root = _tree(tmp_path / "src")
    _png(os.fsencode(tmp_path / "src" / "a") + b"/scan\xff.png", 300)
    seen, written, rejected, plan = _counts(FolderSource(root, channels=1, dtype="uint8"))
    assert (seen, written, rejected) == (5, 4, 1)
    (source, reason), = plan.rejected_rows()
    assert source == "a/scan\\xff.png" and "not valid UTF-8" in reason
    source.encode("utf-8")  # storable in rejected.csv


def test_non_utf8_class_folder_is_refused_in_one_line(tmp_path):
    root = _tree(tmp_path / "src")
    _png(os.fsencode(tmp_path / "src") + b"/c\xe9/0.png", 300)
    with pytest.raises(ValueError, match=r"class name 'c\\\\xe9' holds a control"):
        FolderSource(root)


def test_decompression_bomb_is_rejected_not_fatal(tmp_path, monkeypatch):
    root = _tree(tmp_path / "src")
    # Pillow's real limit is ~179 M pixels; a lower one keeps the test file tiny (the
    # same DecompressionBombError is raised by Image.open).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    Image.new("1", (100, 100)).save(tmp_path / "src" / "a" / "bomb.png")
    source = FolderSource(root, channels="auto", dtype="auto")
    seen, written, rejected, plan = _counts(source)
    assert (seen, written, rejected) == (5, 4, 1)
    (source_name, reason), = plan.rejected_rows()
    assert source_name == "a/bomb.png" and reason.startswith("decompression bomb refused")
