"""pipeline.load / read_manifest / verify on real TFRecords written by write_dataset."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from kmedimg.data import schema
from kmedimg.data.pipeline import load, make_dataset_fn, read_manifest, sharding_mode, verify
from kmedimg.data.writer import write_dataset
from helpers import Item, ListSource, binary_items, image


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    """40 binary grey 8x8 images, 4 train shards, 10 val."""
    out_dir = tmp_path_factory.mktemp("dataset")
    write_dataset(ListSource(binary_items(50)), out_dir, val_fraction=0.2)
    return out_dir


def first_pixels(dataset):
    """The identifying pixel [0, 0, 0] of every image of a finite dataset."""
    return [int(v) for images, _ in dataset for v in images.numpy()[:, 0, 0, 0]]


def test_training_batches_are_fully_static(dataset_dir):
    for path in (dataset_dir, dataset_dir / schema.MANIFEST_NAME):
        dataset = load(path, "train", image_size=12, batch_size=8, training=True,
                       channels=3)
        images_spec, labels_spec = dataset.element_spec
        assert images_spec.shape.as_list() == [8, 12, 12, 3]
        assert labels_spec.shape.as_list() == [8, 1]
        images, labels = next(iter(dataset))
        assert images.dtype == tf.float32 and labels.dtype == tf.float32
        assert float(tf.reduce_max(images)) > 1.0  # stored range, not [0, 1]
        np.testing.assert_array_equal(images[..., 0], images[..., 2])


def test_training_repeats_and_shuffles(dataset_dir):
    dataset = load(dataset_dir, "train", batch_size=8, training=True, seed=1,
                   deterministic=True)
    seen = [v for images, _ in dataset.take(10) for v in images.numpy()[:, 0, 0, 0]]
    assert len(seen) == 80  # more than the 40 records: it repeats
    epoch = first_pixels(load(dataset_dir, "train", batch_size=8, deterministic=True))
    assert sorted(seen[:40]) == sorted(epoch)  # one full epoch first
    assert seen[:40] != epoch  # shuffled


def test_deterministic_mode_reproduces_the_order(dataset_dir):
    def order():
        dataset = load(dataset_dir, "train", batch_size=8, training=True, seed=7,
                       deterministic=True)
        return [v for images, _ in dataset.take(5) for v in images.numpy()[:, 0, 0, 0]]

    assert order() == order()


def test_evaluation_keeps_every_record_once(dataset_dir):
    manifest = read_manifest(dataset_dir)
    dataset = load(manifest, "val", batch_size=3)
    values = first_pixels(dataset)
    assert len(values) == manifest.splits["val"].count == 10
    assert len(set(values)) == 10
    assert int(dataset.cardinality()) == 4  # ceil(10 / 3), declared up front
    dropping = load(manifest, "val", batch_size=3, drop_remainder=True)
    assert int(dropping.cardinality()) == 3 == len(list(dropping))
    assert dataset.element_spec[0].shape.as_list() == [None, 8, 8, 1]


def test_cache_gives_the_same_records(dataset_dir, tmp_path):
    memory = first_pixels(load(dataset_dir, "val", batch_size=4, cache=True,
                               deterministic=True))
    on_file = load(dataset_dir, "val", batch_size=4, cache=str(tmp_path / "cache"),
                   deterministic=True)
    assert memory == first_pixels(on_file) == first_pixels(on_file)


def test_png_and_variable_sizes_use_the_per_record_path(tmp_path):
    entries = [Item(f"s{i}", image(i, size=6 + i, channels=3), ("pos" if i % 2 else "neg",))
               for i in range(6)]
    write_dataset(ListSource(entries), tmp_path, encoding="png", num_shards=2)
    dataset = load(tmp_path, "train", image_size=(5, 4), batch_size=4, training=True,
                   channels=1)
    assert dataset.element_spec[0].shape.as_list() == [4, 5, 4, 1]
    images, labels = next(iter(dataset))
    assert labels.shape == (4, 1)
    assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 255.0


def test_uint16_png_keeps_its_range(tmp_path):
    items = binary_items(4, dtype="uint16")
    write_dataset(ListSource(items), tmp_path, encoding="png", num_shards=1)
    images, _ = next(iter(load(tmp_path, "train", batch_size=4, deterministic=True)))
    np.testing.assert_array_equal(images.numpy(), np.stack([i.pixels for i in items]))


def test_read_manifest_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="No kmedimg dataset"):
        read_manifest(tmp_path / "missing")
    (tmp_path / schema.MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="dataset.json: not valid JSON"):
        read_manifest(tmp_path)
    (tmp_path / schema.MANIFEST_NAME).write_text(json.dumps({"task": "binary"}))
    with pytest.raises(ValueError, match="dataset.json"):
        read_manifest(tmp_path)


def test_load_argument_errors(dataset_dir):
    with pytest.raises(ValueError, match=r"available splits: \['train', 'val'\]"):
        load(dataset_dir, "test")
    with pytest.raises(ValueError, match="channels"):
        load(dataset_dir, "train", channels=2)
    with pytest.raises(ValueError, match="batch_size"):
        load(dataset_dir, "train", batch_size=0)
    manifest = read_manifest(dataset_dir)
    del manifest.directory
    with pytest.raises(ValueError, match="directory"):
        load(manifest, "train")


def _copy_dataset(source_dir, target_dir):
    target_dir.mkdir()
    for name in os.listdir(source_dir):
        (target_dir / name).write_bytes((source_dir / name).read_bytes())
    return target_dir


def test_verify_names_the_shard_with_a_wrong_checksum(dataset_dir, tmp_path):
    copy = _copy_dataset(dataset_dir, tmp_path / "copy")
    assert verify(copy).splits["train"].count == 40
    shard = read_manifest(copy).splits["train"].shards[2].path
    data = bytearray((copy / shard).read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one flipped byte
    (copy / shard).write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"shard .*{shard}: sha256 .* does not match"):
        verify(copy)
    verify(copy, splits=["val"])  # the other split is fine


def test_truncated_shard_error_names_the_file(dataset_dir, tmp_path):
    copy = _copy_dataset(dataset_dir, tmp_path / "copy")
    shard = read_manifest(copy).splits["train"].shards[1].path
    size = (copy / shard).stat().st_size
    with open(copy / shard, "r+b") as handle:
        handle.truncate(size - size // 3)
    # Before reading: the byte count does not match the manifest.
    with pytest.raises(ValueError, match=f"{shard} has .* bytes but the manifest says"):
        load(copy, "train")
    # While reading (a file truncated after the check): TFRecordDataset alone would
    # stop silently at the torn record; the record count check names the file.
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"{shard}.*corrupt or truncated"):
        first_pixels(load(copy, "train", check_files=False))


def test_corrupt_record_error_names_the_file(dataset_dir, tmp_path):
    copy = _copy_dataset(dataset_dir, tmp_path / "copy")
    shard = read_manifest(copy).splits["train"].shards[0].path
    data = bytearray((copy / shard).read_bytes())
    data[40] ^= 0xFF
    (copy / shard).write_bytes(bytes(data))
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"{shard}.*corrupt or truncated"):
        first_pixels(load(copy, "train", batch_size=4))


def _pipelines(path, split, count, **kwargs):
    values = []
    for index in range(count):
        context = tf.distribute.InputContext(
            num_input_pipelines=count, input_pipeline_id=index, num_replicas_in_sync=count
        )
        dataset = load(path, split, batch_size=4, input_context=context, **kwargs)
        assert dataset.element_spec[0].shape[0] in (None, 2)  # per-replica batch 4 / 2
        values.append(first_pixels(dataset))
        assert int(dataset.cardinality()) == -(-len(values[-1]) // 2)
    return values


def test_input_context_shards_by_file(dataset_dir):
    assert sharding_mode(4, tf.distribute.InputContext(2, 0, 2)) == "file"
    first, second = _pipelines(dataset_dir, "train", 2)
    assert not set(first) & set(second)
    assert sorted(first + second) == sorted(first_pixels(load(dataset_dir, "train")))


def test_input_context_shards_by_record_when_files_are_few(tmp_path):
    write_dataset(ListSource(binary_items(11)), tmp_path, num_shards=1)
    assert sharding_mode(1, tf.distribute.InputContext(2, 0, 2)) == "record"
    with pytest.warns(UserWarning, match="sharding by record"):
        first, second = _pipelines(tmp_path, "train", 2)
    assert not set(first) & set(second)
    assert sorted(first + second) == list(range(11))


def test_dataset_fn_with_a_distribution_strategy(dataset_dir):
    strategy = tf.distribute.get_strategy()
    dataset_fn = make_dataset_fn(dataset_dir, "train", image_size=8, batch_size=8,
                                 training=True, channels=3)
    distributed = strategy.distribute_datasets_from_function(dataset_fn)
    images, labels = next(iter(distributed))
    assert images.shape == (8, 8, 8, 3) and labels.shape == (8, 1)


def test_a_class_sorted_source_is_read_mixed(tmp_path):
    # Folder sources yield one class after the other; the writer puts contiguous blocks
    # in shards and load() interleaves the shards, so the stream starts mixed.
    items = [Item(f"{i}", image(i), ("neg" if i < 20 else "pos",)) for i in range(40)]
    write_dataset(ListSource(items), tmp_path, num_shards=4)
    _, labels = next(iter(load(tmp_path, "train", batch_size=8, deterministic=True)))
    assert 2 <= int(tf.reduce_sum(labels)) <= 6


@pytest.mark.parametrize("encoding", ["raw", "png"])
def test_with_ids_yields_record_ids_in_manifest_order(tmp_path, encoding):
    manifest = write_dataset(ListSource(binary_items(30)), tmp_path, encoding=encoding,
                             val_fraction=0.2)
    dataset = load(tmp_path, "train", image_size=(6, 10), channels=3, batch_size=7,
                   with_ids=True)
    assert dataset.element_spec[2].dtype == tf.string
    batches = list(dataset)
    ids = [value.decode() for _, _, batch_ids in batches for value in batch_ids.numpy()]
    files = [os.path.join(tmp_path, shard.path) for shard in manifest.splits["train"].shards]
    stored = [tf.train.Example.FromString(record).features.feature[schema.ID_KEY]
              .bytes_list.value[0].decode()
              for record in tf.data.TFRecordDataset(files).as_numpy_iterator()]
    assert ids == stored  # shard after shard, record after record
    plain = list(load(tmp_path, "train", image_size=(6, 10), channels=3, batch_size=7))
    assert len(plain) == len(batches) == -(-len(stored) // 7)
    assert sorted(first_pixels(plain)) == sorted(
        int(v) for images, _, _ in batches for v in images.numpy()[:, 0, 0, 0])
    for (images, labels, _), (expected_images, expected_labels) in zip(
            batches, load(tmp_path, "train", image_size=(6, 10), channels=3, batch_size=7,
                          deterministic=True)):
        assert images.shape == expected_images.shape and labels.shape == expected_labels.shape
