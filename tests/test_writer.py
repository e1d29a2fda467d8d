"""write_dataset: real TFRecords on disk from tiny in-memory sources."""

import collections
import csv
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from kmedimg.data import schema
from kmedimg.data.pipeline import load, read_manifest
from kmedimg.data.splits import plan_splits
from kmedimg.data.writer import write_dataset
from helpers import Item, ListSource, Rejected, binary_items, image


def read_split(out_dir, split, **kwargs):
    """All (images, labels) of a split in stored order (one shard, deterministic)."""
    images, labels = [], []
    for batch_images, batch_labels in load(out_dir, split, batch_size=64, training=False,
                                           deterministic=True, **kwargs):
        images.append(batch_images.numpy())
        labels.append(batch_labels.numpy())
    return np.concatenate(images), np.concatenate(labels)


def raw_records(out_dir, split):
    """Parsed tf.train.Example features of every record of a split (any shard order)."""
    manifest = read_manifest(out_dir)
    options = "" if manifest.compression == "NONE" else manifest.compression
    records = []
    for shard in manifest.splits[split].shards:
        path = os.path.join(out_dir, shard.path)
        for serialized in tf.data.TFRecordDataset(path, compression_type=options):
            records.append(tf.io.parse_single_example(serialized, schema.feature_spec()))
    return records


def rejected_rows(out_dir):
    with open(os.path.join(out_dir, schema.REJECTED_NAME), newline="") as handle:
        return list(csv.reader(handle))


@pytest.mark.parametrize(
    "dtype,channels,encoding",
    [("uint8", 1, "raw"), ("uint8", 3, "raw"), ("uint16", 1, "raw"), ("uint16", 3, "raw"),
     ("uint8", 1, "png"), ("uint8", 3, "png"), ("uint16", 1, "png")],
)
def test_round_trip_returns_the_same_pixels_and_labels(tmp_path, dtype, channels, encoding):
    items = binary_items(10, size=8, channels=channels, dtype=dtype)
    manifest = write_dataset(ListSource(items), tmp_path, encoding=encoding, num_shards=1)
    assert (manifest.dtype, manifest.channels, manifest.encoding) == (dtype, channels, encoding)
    images, labels = read_split(tmp_path, "train")
    expected = np.stack([item.pixels for item in items]).astype(np.float32)
    np.testing.assert_array_equal(images, expected)
    assert images.dtype == np.float32
    if dtype == "uint16":
        assert images.max() > 255  # stored range kept, not rescaled
    np.testing.assert_array_equal(
        labels[:, 0], [1.0 if item.labels == ("pos",) else 0.0 for item in items]
    )


@pytest.mark.parametrize("compression", ["ZLIB", "GZIP"])
def test_compressed_records_round_trip(tmp_path, compression):
    items = binary_items(6)
    manifest = write_dataset(ListSource(items), tmp_path, compression=compression,
                             num_shards=1)
    assert manifest.compression == compression
    images, _ = read_split(tmp_path, "train")
    np.testing.assert_array_equal(images, np.stack([i.pixels for i in items]))
    with open(tmp_path / manifest.splits["train"].shards[0].path, "rb") as handle:
        head = handle.read(2)
    if compression == "GZIP":
        assert head == b"\x1f\x8b"


def test_multilabel_and_multiclass_labels(tmp_path):
    names = ["effusion", "nodule", "mass"]
    multilabel = [
        Item("a", image(0), ("effusion", "mass")),
        Item("b", image(1), ()),
        Item("c", image(2), ("nodule",)),
    ]
    write_dataset(ListSource(multilabel, "multilabel", names), tmp_path / "ml", num_shards=1)
    _, labels = read_split(tmp_path / "ml", "train")
    np.testing.assert_array_equal(labels, [[1, 0, 1], [0, 0, 0], [0, 1, 0]])

    multiclass = [Item(str(i), image(i), (names[i % 3],)) for i in range(6)]
    write_dataset(ListSource(multiclass, "multiclass", names), tmp_path / "mc", num_shards=1)
    _, labels = read_split(tmp_path / "mc", "train")
    np.testing.assert_array_equal(labels, np.eye(3)[[0, 1, 2, 0, 1, 2]])


def test_manifest_records_shards_counts_and_checksums(tmp_path):
    manifest = write_dataset(ListSource(binary_items(30)), tmp_path, val_fraction=0.2,
                             conversion_args={"command": "test"})
    on_disk = read_manifest(tmp_path)
    assert on_disk.to_json() == manifest.to_json()
    assert on_disk.counts["seen"] == 30 == on_disk.counts["written"]
    assert on_disk.conversion["args"] == {"command": "test"}
    assert on_disk.source == {"format": "test-list", "entries": 30}
    assert (on_disk.height, on_disk.width) == (8, 8)
    for name, split in on_disk.splits.items():
        assert sum(split.class_counts.values()) == split.count
        # Default: at least min(records, 4) shards so two workers both get files.
        assert len(split.shards) == min(split.count, 4)
        for index, shard in enumerate(split.shards):
            assert shard.path == schema.shard_name(name, index, len(split.shards))
            path = tmp_path / shard.path
            assert path.stat().st_size == shard.bytes
            import hashlib

            assert hashlib.sha256(path.read_bytes()).hexdigest() == shard.sha256
    assert sorted(os.listdir(tmp_path)) == sorted(
        [schema.MANIFEST_NAME, schema.REJECTED_NAME]
        + [s.path for split in on_disk.splits.values() for s in split.shards]
    )


def test_given_num_shards_and_dict(tmp_path):
    items = [Item(str(i), image(i), ("neg",), split="train" if i < 9 else "test")
             for i in range(12)]
    manifest = write_dataset(ListSource(items), tmp_path, num_shards={"train": 3})
    assert [len(manifest.splits[s].shards) for s in ("train", "test")] == [3, 3]
    assert [s.records for s in manifest.splits["train"].shards] == [3, 3, 3]
    manifest = write_dataset(ListSource(items), tmp_path, num_shards=1, overwrite=True)
    assert [len(manifest.splits[s].shards) for s in ("train", "test")] == [1, 1]
    # The replaced dataset's stale shards are gone.
    assert not (tmp_path / schema.shard_name("train", 0, 3)).exists()


def test_unknown_labels_bad_pixels_and_source_rejections_are_listed(tmp_path):
    entries = binary_items(5) + [
        Rejected("broken.png", "cannot identify image file"),
        Item("weird-label.png", image(50), ("maybe",)),
        Item("float.png", np.zeros((4, 4), np.float32), ("neg",)),
        Item("two-labels.png", image(51), ("neg", "pos")),
    ]
    manifest = write_dataset(ListSource(entries), tmp_path)
    rows = rejected_rows(tmp_path)
    assert rows[0] == ["source", "reason"]
    reasons = dict(rows[1:])
    assert reasons["broken.png"] == "cannot identify image file"
    assert "unknown label 'maybe'" in reasons["weird-label.png"]
    assert "['neg', 'pos']" in reasons["weird-label.png"]
    assert "dtype" in reasons["float.png"]
    assert "exactly one label" in reasons["two-labels.png"]
    assert manifest.counts["seen"] == 9
    assert manifest.counts["written"] == 5
    assert manifest.counts["rejected"] == 4
    assert manifest.counts["rejected_by_source"] == 1


def test_rejected_csv_header_is_written_when_nothing_is_rejected(tmp_path):
    write_dataset(ListSource(binary_items(3)), tmp_path)
    assert rejected_rows(tmp_path) == [["source", "reason"]]


def test_mixed_channels_and_dtypes(tmp_path):
    entries = [Item(f"grey{i}", image(i), ("neg",)) for i in range(4)] + [
        Item("rgb", image(9, channels=3), ("pos",)),
        Item("deep", image(10, dtype="uint16"), ("pos",)),
    ]
    manifest = write_dataset(ListSource(entries), tmp_path / "default")
    assert (manifest.channels, manifest.dtype, manifest.counts["written"]) == (1, "uint8", 4)
    reasons = dict(rejected_rows(tmp_path / "default")[1:])
    assert "channels=3" in reasons["rgb"] and "uint8" in reasons["deep"]

    manifest = write_dataset(ListSource(entries), tmp_path / "rgb", channels=3, num_shards=1)
    assert (manifest.channels, manifest.counts["written"]) == (3, 5)
    assert manifest.conversion["promoted_grey_to_rgb"] == 4
    images, _ = read_split(tmp_path / "rgb", "train")
    np.testing.assert_array_equal(images[0], np.repeat(entries[0].pixels, 3, axis=-1))


def test_image_size_resizes_so_mixed_sizes_share_a_shape(tmp_path):
    entries = [Item(f"s{i}", image(i, size=6 + 2 * i), ("neg",)) for i in range(4)]
    manifest = write_dataset(ListSource(entries), tmp_path / "kept")
    assert manifest.height is None and manifest.width is None
    with pytest.raises(ValueError, match="image_size"):
        load(tmp_path / "kept", "train")
    images, _ = read_split(tmp_path / "kept", "train", image_size=5)
    assert images.shape == (4, 5, 5, 1)

    manifest = write_dataset(ListSource(entries), tmp_path / "resized", image_size=(6, 7))
    assert (manifest.height, manifest.width) == (6, 7)
    images, _ = read_split(tmp_path / "resized", "train")
    assert images.shape == (4, 6, 7, 1)
    flat = ListSource([Item("flat", np.full((9, 5), 77, np.uint8), ("neg",))])
    write_dataset(flat, tmp_path / "flat", image_size=4)
    images, _ = read_split(tmp_path / "flat", "train")
    np.testing.assert_array_equal(images, np.full((1, 4, 4, 1), 77.0))


def test_stratified_split_by_fraction(tmp_path):
    items = binary_items(100, positive_every=4)  # 25 pos, 75 neg
    manifest = write_dataset(ListSource(items), tmp_path, val_fraction=0.2,
                             test_fraction=0.2, seed=3)
    counts = {name: split.count for name, split in manifest.splits.items()}
    assert counts == {"train": 60, "val": 20, "test": 20}
    for name, split in manifest.splits.items():
        assert split.class_counts["pos"] == pytest.approx(split.count / 4, abs=1)
    assert manifest.counts["per_split"] == counts
    again = write_dataset(ListSource(items), tmp_path / "again", val_fraction=0.2,
                          test_fraction=0.2, seed=3)
    assert again.splits["val"].shards[0].sha256 == manifest.splits["val"].shards[0].sha256


def test_patients_never_cross_splits(tmp_path):
    items = binary_items(60, patients=4)  # 15 patients, 4 images each
    write_dataset(ListSource(items), tmp_path, val_fraction=0.25, test_fraction=0.25)
    patients_by_split = {
        split: {r[schema.PATIENT_KEY].numpy() for r in raw_records(tmp_path, split)}
        for split in ("train", "val", "test")
    }
    assert all(patients_by_split.values())
    assert not patients_by_split["train"] & patients_by_split["val"]
    assert not patients_by_split["train"] & patients_by_split["test"]
    assert not patients_by_split["val"] & patients_by_split["test"]


def test_duplicates_are_reported_and_never_straddle(tmp_path):
    items = binary_items(40)
    # Five groups of exact copies (different names, same pixels).
    copies = [Item(f"copy-{k}-{j}.png", items[k].pixels, items[k].labels)
              for k in range(5) for j in range(2)]
    source = ListSource(items + copies)
    manifest = write_dataset(source, tmp_path, val_fraction=0.3, test_fraction=0.3, seed=1)
    duplicates = manifest.duplicates
    assert (duplicates["groups"], duplicates["items"], duplicates["straddling"]) == (5, 15, 0)
    group = duplicates["list"][0]
    assert group["sources"] == ["img-0000.png", "copy-0-0.png", "copy-0-1.png"]
    assert group["sha256"] == schema.content_hash(items[0].pixels)
    assert len(group["splits"]) == 1
    ids_by_split = {}
    for split in manifest.splits:
        for record in raw_records(tmp_path, split):
            ids_by_split.setdefault(record[schema.ID_KEY].numpy().decode(), set()).add(split)
    for k in range(5):
        names = [f"img-{k:04d}.png", f"copy-{k}-0.png", f"copy-{k}-1.png"]
        splits = set().union(*(ids_by_split[schema.record_id(n)] for n in names))
        assert len(splits) == 1

    dropped = write_dataset(source, tmp_path / "dropped", drop_duplicates=True)
    assert dropped.counts["written"] == 40 and dropped.duplicates["dropped"] == 10
    reasons = dict(rejected_rows(tmp_path / "dropped")[1:])
    assert reasons["copy-3-1.png"] == "exact duplicate of img-0003.png (drop_duplicates=True)"


def test_given_splits_are_kept_and_straddling_duplicates_reported(tmp_path):
    items = [Item(f"i{i}", image(i), ("neg",), split=("train", "val", "test")[i % 3])
             for i in range(9)]
    items.append(Item("leak", image(0), ("neg",), split="test"))
    manifest = write_dataset(ListSource(items), tmp_path, val_fraction=0.5)
    assert {n: s.count for n, s in manifest.splits.items()} == {
        "train": 3, "val": 3, "test": 4}
    assert manifest.duplicates["straddling"] == 1
    assert manifest.duplicates["list"][0]["splits"] == ["test", "train"]


def test_interrupted_conversion_leaves_no_manifest(tmp_path):
    source = ListSource(binary_items(20), fail_at=12)
    with pytest.raises(RuntimeError, match="simulated failure"):
        write_dataset(source, tmp_path)
    assert not (tmp_path / schema.MANIFEST_NAME).exists()
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tfrecord")]
    assert os.listdir(tmp_path) == []  # temporary directory removed too
    with pytest.raises(FileNotFoundError, match="interrupted"):
        read_manifest(tmp_path)


def test_source_that_changes_between_passes_fails(tmp_path):
    class Shifty(ListSource):
        def __iter__(self):
            self.passes += 1
            for entry in self.entries[self.passes - 1:]:
                yield entry

    with pytest.raises(RuntimeError, match="reproducibly"):
        write_dataset(Shifty(binary_items(5)), tmp_path)
    assert not (tmp_path / schema.MANIFEST_NAME).exists()


@pytest.mark.parametrize(
    "kwargs,match",
    [({"encoding": "jpeg"}, "encoding"), ({"compression": "LZ4"}, "compression"),
     ({"val_fraction": 0.6, "test_fraction": 0.5}, "below 1"),
     ({"image_size": "big"}, "image_size"), ({"channels": 2}, "channels")],
)
def test_bad_arguments_name_the_argument(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match) as error:
        write_dataset(ListSource(binary_items(2)), tmp_path, **kwargs)
    assert "Received" in str(error.value)


def test_source_with_no_valid_item_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no valid image"):
        write_dataset(ListSource([Rejected("a", "unreadable")]), tmp_path)


def test_progress_callback_sees_every_written_item(tmp_path):
    calls = []
    write_dataset(ListSource(binary_items(7)), tmp_path,
                  progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (7, 7) and len(calls) == 7


def test_plan_splits_groups_patients_and_duplicates():
    labels = [(0,)] * 6
    patients = ["a", "a", "b", "c", None, None]
    hashes = ["h0", "h1", "h2", "h1", "h4", "h4"]  # "c" shares an image with "a"
    plan = plan_splits(labels, patients, hashes, val_fraction=0.4, seed=0)
    assert plan[0] == plan[1] == plan[3]
    assert plan[4] == plan[5]
    assert collections.Counter(plan)["val"] in (1, 2, 3)


def test_manifest_json_is_plain_json(tmp_path):
    write_dataset(ListSource(binary_items(3)), tmp_path)
    raw = json.loads((tmp_path / schema.MANIFEST_NAME).read_text())
    assert raw["schema_version"] == schema.SCHEMA_VERSION
    assert raw["class_names"] == ["neg", "pos"]


def test_non_local_paths_go_through_tf_io_gfile():
    # TensorFlow's in-memory "ram://" file system stands in for gs://: any os/open on
    # an output path would fail here.
    import uuid

    out_dir = f"ram://kmedimg-test-{uuid.uuid4().hex}/dataset"
    write_dataset(ListSource(binary_items(12)), out_dir, val_fraction=0.25)
    assert sorted(tf.io.gfile.listdir(out_dir))[:2] == [schema.MANIFEST_NAME,
                                                        schema.REJECTED_NAME]
    assert not [n for n in tf.io.gfile.listdir(out_dir) if n.startswith(".incomplete")]
    from kmedimg.data.pipeline import verify

    manifest = verify(out_dir)
    images, _ = read_split(out_dir, "val")
    assert len(images) == manifest.splits["val"].count == 3


def test_progress_bar_reports_both_passes(tmp_path, capsys):
    items = [Item(str(i), image(i), ("neg",), split="custom_b" if i % 2 else "custom_a")
             for i in range(6)]
    manifest = write_dataset(ListSource(items), tmp_path, progress=True)
    assert list(manifest.splits) == ["custom_a", "custom_b"]
    err = capsys.readouterr().err
    assert "scanned 6 items (pass 1 of 2)" in err and "6/6" in err


def _module_imports(module):
    import ast
    import importlib
    import importlib.util

    tree = ast.parse(open(importlib.import_module(module).__file__).read())
    names = set()
    for node in tree.body:  # module level only: lazy imports inside functions are allowed
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            # `from package import module` imports the module (the package's own
            # __init__ may import more: kmedimg.data needs TensorFlow as a whole).
            submodules = [f"{node.module}.{alias.name}" for alias in node.names
                          if importlib.util.find_spec(node.module).submodule_search_locations
                          and importlib.util.find_spec(f"{node.module}.{alias.name}")]
            names.update(submodules or [node.module])
    return names


def test_plan_conversion_is_tensorflow_free_and_writes_nothing(tmp_path):
    from kmedimg.data.planning import plan_conversion

    # planning and everything it imports from kmedimg import no TensorFlow.
    pending, seen = ["kmedimg.data.planning"], set()
    while pending:
        module = pending.pop()
        seen.add(module)
        imports = _module_imports(module)
        assert not any(name.split(".")[0] == "tensorflow" for name in imports), module
        pending += [name for name in imports if name.startswith("kmedimg.")
                    and name not in seen]
    assert {"kmedimg.data.schema", "kmedimg.data.splits", "kmedimg.core.vocabulary"} <= seen
    items = binary_items(30) + [binary_items(1)[0], Rejected("x.png", "unreadable")]
    source = ListSource(items)
    plan = plan_conversion(source, val_fraction=0.2, drop_duplicates=True)
    assert source.passes == 1 and os.listdir(tmp_path) == []
    assert sum(len(entries) for entries in plan.splits.values()) == 30
    assert set(plan.splits) == {"train", "val"} and plan.dropped == 1
    assert plan.rejected_by_source == 1 and len(plan.rejected_rows()) == 2
    assert len(plan.shard_of) == 30
    assert plan.shard_counts == {"train": 4, "val": 4}
    manifest = write_dataset(ListSource(items), tmp_path, val_fraction=0.2,
                             drop_duplicates=True)
    assert {name: info.count for name, info in manifest.splits.items()} == {
        name: len(entries) for name, entries in plan.splits.items()}
