"""Bad inputs to the importers (issue 14, "Inputs"): every one is written, rejected with
a reason naming it, or refused early with a one-line error — never dropped silently
and never a traceback from deep inside a reader."""

import os

import numpy as np
import pytest
from PIL import Image

from kmedimg.data.planning import plan_conversion
from kmedimg.data.summary import read_rejected
from kmedimg.data.writer import write_dataset
from kmedimg.data.sources import privacy
from kmedimg.data.sources.base import Item, Rejected
from kmedimg.data.sources.csv_source import CsvSource
from kmedimg.data.sources.folder import FolderSource
from kmedimg.data.sources.label_table import LabelTable
from kmedimg.data.sources.npz import NpzSource
from helpers import ListSource, binary_items, image


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
    manifest = write_dataset(FolderSource(root, channels=1, dtype="uint8"), tmp_path / "out")
    assert (manifest.counts["written"], manifest.counts["rejected"]) == (4, 1)
    assert read_rejected(tmp_path / "out")[0][0] == "a/scan\\xff.png"


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


# --- CSV tables ----------------------------------------------------------------------


def _csv(tmp_path, rows, header="path,label", name="t.csv"):
    for index in range(4):
        if not (tmp_path / f"{index}.png").exists():
            _png(tmp_path / f"{index}.png", 50 + index)
    path = tmp_path / name
    path.write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_latin1_csv_is_refused_naming_file_line_and_encoding(tmp_path):
    path = _csv(tmp_path, ["0.png,a", "1.png,b"])
    path.write_bytes(path.read_bytes() + "2.png,b\u00e9b\u00e9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"t\.csv: line 4 is not UTF-8 \(byte 0xe9.*iconv"):
        CsvSource(path)


def test_one_multi_label_row_is_rejected_unless_the_task_is_multilabel(tmp_path):
    path = _csv(tmp_path, ["0.png,a", "1.png,b", "2.png,a|b", "3.png,a"])
    source = CsvSource(path, channels=1, dtype="uint8")
    assert source.task == "binary" and source.class_names == ["a", "b"]
    rejected = [entry for entry in source if isinstance(entry, Rejected)]
    assert [(r.source, r.reason) for r in rejected] == [(
        "2.png", "row 4: 2 labels ('a|b') in a binary task; a multi-label table needs "
        "task='multilabel' (CLI: --task multilabel)")]
    multilabel = CsvSource(path, task="multilabel", channels=1, dtype="uint8")
    assert [e.labels for e in multilabel][2] == ("a", "b")


def test_multi_label_only_labels_without_the_flag_say_the_fix(tmp_path):
    path = _csv(tmp_path, ["0.png,a|b", "1.png,b|a"])
    with pytest.raises(ValueError, match=r"Rows \[2, 3\] hold several labels.*--task multilabel"):
        CsvSource(path)


@pytest.mark.parametrize("labels, message", [
    (["a", "b", "no\x00rmal"], r"class name 'no\\x00rmal' holds a control"),
    (["normal", "pneumonia", "Pneumonia"], r"'Pneumonia' and 'pneumonia' differ only by case"),
    (["normal lung", "Normal  lung", "x"], r"differ only by case, spaces"),
    (["pleural_effusion", "pleural effusion", "x"], r"differ only by case, spaces, '_'"),
])
def test_control_characters_and_near_duplicate_class_names_are_refused(tmp_path, labels,
                                                                       message):
    path = _csv(tmp_path, [f"{index}.png,{label}" for index, label in enumerate(labels)])
    with pytest.raises(ValueError, match=message):
        CsvSource(path)


def test_huge_integer_label_is_refused_before_allocating(tmp_path):
    path = _csv(tmp_path, ["0.png,0", "1.png,1", "2.png,1000000000"])
    with pytest.raises(ValueError,
                       match=r"t\.csv: integer label 1000000000 would mean 1000000001 classes"):
        CsvSource(path)


def test_csv_patient_ids_are_stored_hashed_like_dicom(tmp_path):
    path = _csv(tmp_path, ["0.png,a,MRN998877", "1.png,b,MRN998877", "2.png,b,"],
                header="path,label,patient_id")
    source = CsvSource(path, channels=1, dtype="uint8", salt="pepper")
    patients = [item.patient for item in source]
    expected = privacy.salted_hash(b"pepper", "PatientID", "MRN998877")
    assert patients == [expected, expected, None]
    assert "MRN998877" not in repr(source.describe())
    assert source.describe()["privacy"]["salt_fingerprint"] == privacy.salt_fingerprint(b"pepper")


def test_patient_in_two_given_splits_is_warned_and_counted(tmp_path, caplog):
    path = _csv(tmp_path, ["0.png,a,p1,train", "1.png,b,p1,test", "2.png,b,p2,train",
                           "3.png,a,p2,train"], header="path,label,patient_id,split")
    source = CsvSource(path, channels=1, dtype="uint8", salt="pepper")
    assert source.describe()["patients_in_several_splits"] == 1
    assert "1 patients have rows in several splits (e.g. rows [2, 3])" in caplog.text
    assert "p1" not in caplog.text


def test_medical_label_table_refuses_stray_multi_label_rows_and_latin1(tmp_path):
    table = tmp_path / "labels.csv"
    table.write_text("path,label\nx/1.dcm,normal\nx/2.dcm,normal|tumour\nx/3.dcm,tumour\n")
    with pytest.raises(ValueError, match=r"labels\.csv, line 3: 2 labels 'normal\|tumour'.*"
                                         r"--task multilabel"):
        LabelTable.from_csv(table)
    assert LabelTable.from_csv(table, task="multilabel").task == "multilabel"
    table.write_bytes("path,label\nx/1.dcm,l\u00e9sion\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"line 2 is not UTF-8 \(byte 0xe9 at column 10\)"):
        LabelTable.from_csv(table)


# --- MedMNIST .npz -------------------------------------------------------------------


def test_zero_byte_and_non_zip_npz_are_refused_in_one_line(tmp_path):
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.npz: the file is empty \(0 bytes\)"):
        NpzSource(empty)
    not_zip = tmp_path / "array.npz"
    np.save(tmp_path / "array.npy", np.zeros(3))
    os.rename(tmp_path / "array.npy", not_zip)
    with pytest.raises(ValueError, match=r"array\.npz: not a zip archive"):
        NpzSource(not_zip)


def test_npz_label_of_a_billion_is_refused_before_allocating(tmp_path):
    path = tmp_path / "labels.npz"
    labels = np.array([0, 1, 10**9, 1], dtype=np.int64)
    np.savez(path, train_images=np.zeros((4, 8, 8), np.uint8), train_labels=labels)
    with pytest.raises(ValueError, match=r"key train_labels row 2 holds class index 1000000000; "
                                         r"without class_names that means 1000000001 classes"):
        NpzSource(path)
    with pytest.raises(ValueError, match=r"row 2 holds class index 1000000000, beyond the 2"):
        NpzSource(path, class_names=["a", "b"])


# --- Whole-dataset checks in the plan ------------------------------------------------


def test_identical_images_under_two_labels_are_rejected_and_counted(tmp_path):
    same = image(7)
    entries = [Item("x/a.png", same, ("neg",)), Item("y/a.png", same.copy(), ("pos",)),
               Item("dup1.png", image(8), ("neg",)), Item("dup2.png", image(8), ("neg",))]
    entries += binary_items(6)
    manifest = write_dataset(ListSource(entries), tmp_path / "out")
    rows = dict(read_rejected(tmp_path / "out"))
    assert rows["x/a.png"] == ("identical image under conflicting labels: neg here, y/a.png "
                               "(pos); fix the label or remove the wrong copy")
    assert rows["y/a.png"].startswith("identical image under conflicting labels: pos here")
    counts = manifest.counts
    assert (counts["seen"], counts["written"], counts["rejected"]) == (10, 8, 2)
    assert manifest.duplicates["groups"] == 1  # the same-label pair stays a duplicate


def test_patient_in_two_given_splits_is_flagged_in_the_plan(caplog):
    entries = [Item(f"{index}.png", image(index), ("neg", "pos")[index % 2],
                    split=("train", "test")[index == 3], patient=f"k{index // 2}")
               for index in range(6)]
    plan = plan_conversion(ListSource(entries))
    assert plan.patients_in_several_splits == {"k1": ["test", "train"]}
    assert "1 patients have images in several of the splits given" in caplog.text
    assert len(plan.kept()) == 6  # kept as the source gives them


def test_only_conflicting_images_is_a_one_line_error():
    entries = [Item("a.png", image(1), ("neg",)), Item("b.png", image(1), ("pos",))]
    with pytest.raises(ValueError, match="conflicting labels"):
        plan_conversion(ListSource(entries))


def test_broken_links_and_fifos_are_rejected_not_read_or_dropped(tmp_path):
    root = _tree(tmp_path / "src")
    os.symlink(tmp_path / "nowhere.png", tmp_path / "src" / "a" / "gone.png")
    os.symlink(tmp_path / "nowhere", tmp_path / "src" / "gone")
    os.mkfifo(tmp_path / "src" / "b" / "pipe.png")
    seen, written, rejected, plan = _counts(FolderSource(root, channels=1, dtype="uint8"))
    assert (seen, written, rejected) == (7, 4, 3)
    reasons = dict(plan.rejected_rows())
    assert reasons["a/gone.png"].startswith("broken symbolic link")
    assert reasons["b/pipe.png"].startswith("not a regular file")
    assert reasons["gone"] == "file outside any class folder"


def test_every_source_class_names_are_checked_by_the_plan(tmp_path):
    path = tmp_path / "m.npz"
    np.savez(path, train_images=np.zeros((2, 8, 8), np.uint8), train_labels=np.array([0, 1]))
    with pytest.raises(ValueError, match=r"NpzSource.class_names: class names 'Normal' and "
                                         r"'normal ' differ only by case"):
        plan_conversion(NpzSource(path, class_names=["Normal", "normal "]))
