"""A damaged or edited dataset directory is named, never read silently (issue 14, "Datasets").

A flipped byte in a shard, a `dataset.json` whose counts, shapes or class names were
edited, and shard paths that point outside the dataset directory; random mutations of
the manifest (Hypothesis) either load or raise a `ValueError` naming the file.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kmedimg.data import schema
from kmedimg.data.manifest_files import manifest_fingerprint, read_manifest, verify
from kmedimg.data.pipeline import load, read_error
from kmedimg.data.writer import write_dataset
from helpers import ListSource, binary_items


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("integrity") / "data"
    write_dataset(ListSource(binary_items(24)), out, num_shards=2, val_fraction=0.25)
    return out


@pytest.fixture
def copy(dataset_dir, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(dataset_dir, target)
    return target


def _manifest(directory):
    return json.loads((directory / schema.MANIFEST_NAME).read_text())


def _write_manifest(directory, raw, reseal=False):
    if reseal:
        raw["checksum"] = schema.manifest_checksum(raw)
    (directory / schema.MANIFEST_NAME).write_text(json.dumps(raw, indent=2))


# -- a flipped byte in a shard --------------------------------------------------------


@pytest.mark.parametrize("training", [True, False])
def test_flipped_byte_names_the_shard_and_says_the_dataset_is_corrupt(copy, training):
    shard = read_manifest(copy).splits["train"].shards[0].path
    data = bytearray((copy / shard).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / shard).write_bytes(bytes(data))
    dataset = load(copy, "train", batch_size=4, training=training)
    with pytest.raises(tf.errors.OpError) as info:
        for _ in dataset.take(20):
            pass
    problem = read_error(info.value)
    assert isinstance(problem, ValueError)
    message = str(problem)
    assert "\n" not in message
    assert str(copy / shard) in message and "dataset is corrupt" in message, message
    assert "kmedimg inspect --verify" in message, message
    with pytest.raises(ValueError, match=f"{shard}: sha256 .* does not match"):
        verify(copy)


def test_read_error_leaves_other_errors_alone():
    assert read_error(tf.errors.InvalidArgumentError(None, None, "something else")) is None
    assert read_error(ValueError("not a TensorFlow error")) is None


# -- an edited manifest -------------------------------------------------------------


def _edit_counts(raw):
    raw["counts"]["seen"] += 5
    raw["counts"]["rejected"] += 5


def _edit_shape(raw):
    raw["height"] = raw["width"] = 16


def _edit_class_names(raw):
    raw["class_names"].reverse()


def _edit_class_counts(raw):
    raw["splits"]["train"]["class_counts"]["pos"] += 1


@pytest.mark.parametrize("edit", [_edit_counts, _edit_shape, _edit_class_names,
                                  _edit_class_counts])
def test_an_edited_manifest_fails_verify_and_read(copy, edit):
    assert verify(copy)
    raw = _manifest(copy)
    edit(raw)
    _write_manifest(copy, raw)
    for check in (verify, read_manifest):
        with pytest.raises(ValueError) as info:
            check(copy)
        message = str(info.value)
        assert str(copy / schema.MANIFEST_NAME) in message, message
        assert "was edited" in message and "checksum" in message, message


def test_a_manifest_without_checksum_loads_but_does_not_verify(copy):
    raw = _manifest(copy)
    del raw["checksum"]
    _write_manifest(copy, raw)
    assert read_manifest(copy).num_classes == 2
    with pytest.raises(ValueError, match="has no `checksum`"):
        verify(copy)


def test_written_manifests_carry_a_checksum_of_their_content(dataset_dir):
    raw = _manifest(dataset_dir)
    assert raw["checksum"] == schema.manifest_checksum(raw)
    assert len(raw["checksum"]) == 64


# -- shard paths confined to the dataset directory ------------------------------------


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.tfrecord", "a/../../b.tfrecord",
                                  "gs://bucket/x.tfrecord", "", "C:\\x.tfrecord",
                                  "..\\x.tfrecord"])
def test_shard_paths_must_stay_inside_the_dataset(copy, path):
    raw = _manifest(copy)
    raw["splits"]["train"]["shards"][0]["path"] = path
    _write_manifest(copy, raw, reseal=True)  # even with a recomputed checksum
    with pytest.raises(ValueError) as info:
        read_manifest(copy)
    message = str(info.value)
    assert str(copy / schema.MANIFEST_NAME) in message, message
    assert "`splits.train.shards[0].path`" in message, message
    assert "inside the dataset directory" in message, message


def test_a_shard_in_a_subdirectory_is_fine(copy):
    raw = _manifest(copy)
    shard = raw["splits"]["val"]["shards"][0]
    os.makedirs(copy / "sub")
    os.rename(copy / shard["path"], copy / "sub" / shard["path"])
    shard["path"] = "sub/" + shard["path"]
    _write_manifest(copy, raw, reseal=True)
    assert verify(copy)


# -- the manifest's fingerprint (for runs: refuse a re-converted dataset on resume) ----


def test_manifest_fingerprint(dataset_dir, tmp_path):
    manifest = read_manifest(dataset_dir)
    fingerprint = manifest_fingerprint(dataset_dir)
    assert fingerprint == manifest_fingerprint(manifest)
    assert fingerprint == manifest_fingerprint(dataset_dir / schema.MANIFEST_NAME)
    assert fingerprint == _manifest(dataset_dir)["checksum"]
    other = tmp_path / "other"
    write_dataset(ListSource(binary_items(25)), other, num_shards=2, val_fraction=0.25)
    assert manifest_fingerprint(other) != fingerprint


# -- random mutations of the manifest ---------------------------------------------------


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, prefix + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, prefix + (index,))


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6,
)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_manifests_load_or_name_the_file(dataset_dir, tmp_path_factory, data):
    directory = tmp_path_factory.mktemp("mutated")
    raw = _manifest(dataset_dir)
    for _ in range(data.draw(st.integers(1, 2))):
        paths = [path for path in _paths(raw) if path]
        path = data.draw(st.sampled_from(paths))
        node = raw
        for key in path[:-1]:
            node = node[key]
        if data.draw(st.booleans()) and isinstance(node, dict):
            del node[path[-1]]
        else:
            node[path[-1]] = data.draw(_JSON)
    _write_manifest(directory, raw, reseal=data.draw(st.booleans()))
    try:
        read_manifest(directory)
    except ValueError as error:
        assert str(directory / schema.MANIFEST_NAME) in str(error), str(error)


@pytest.mark.parametrize("field, value, name", [
    ("height", float("nan"), "`height`"),
    ("class_names", ["neg", "neg"], "`class_names`"),
    ("records", "12", "`splits.train.shards[0].records`"),
])
def test_malformed_numbers_and_names_are_refused(copy, field, value, name):
    raw = _manifest(copy)
    if field == "records":
        raw["splits"]["train"]["shards"][0]["records"] = value
    else:
        raw[field] = value
    _write_manifest(copy, raw, reseal=True)
    with pytest.raises(ValueError) as info:
        read_manifest(copy)
    assert name in str(info.value) and str(copy / schema.MANIFEST_NAME) in str(info.value)


def test_train_on_a_corrupt_shard_is_one_line_naming_it(copy, tmp_path):
    """The real `kmedimg train` on a flipped byte: the shard and the fix, no traceback."""
    shard = read_manifest(copy).splits["train"].shards[0].path
    data = bytearray((copy / shard).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / shard).write_bytes(bytes(data))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"data: {{path: {copy}, batch_size: 4, image_size: 32}}\n"
        "model: {backbone: lenet5}\n"
        "recipe: {name: from_scratch, epochs: 2}\n"
        "training: {early_stopping_patience: 0}\n"
        "evaluation: {bootstrap: 0}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "kmedimg", "train", str(recipe), "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("kmedimg train: error:") and "dataset is corrupt" in last, last
    assert str(copy / shard) in last and "kmedimg inspect --verify" in last, last
