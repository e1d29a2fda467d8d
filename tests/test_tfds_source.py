"""The tfds:NAME source on a TFDS dataset built here, offline: pixels and labels survive
`TfdsSource -> write_dataset -> pipeline.load` (and `kmedimg convert tfds:NAME`) exactly.

The dataset is a tiny `tfds.core.GeneratorBasedBuilder` prepared into a tmp data_dir;
nothing is downloaded (sockets are refused in-process; the CLI run has no network
namespace where `unshare -n` works). `tensorflow-datasets` is in the `test` extra:
under CI=true a missing install fails instead of skipping.
"""

import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT
from kmedimg.data.pipeline import load, read_manifest
from kmedimg.data.sources import TfdsSource, open_source
from kmedimg.data.writer import write_dataset

NAME = "kmedimg_tiny_scans"
CLASSES = ["normal", "pneumonia"]
FINDINGS = ["effusion", "nodule"]
SPLITS = {"train": 7, "validation": 3, "test": 4}
HEIGHT, WIDTH = 12, 10


def _require_tfds():
    try:
        import tensorflow_datasets
    except ImportError as error:
        message = f"tensorflow-datasets is not installed ({error}); it is in the test extra"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return tensorflow_datasets


def _example(split, index):
    """Deterministic, unique pixels: uint8 RGB `image` and uint16 grey `scan`."""
    seed = sorted(SPLITS).index(split) * 100 + index
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
    image[0, 0] = (seed, 0, 0)
    scan = rng.integers(0, 65536, size=(HEIGHT, WIDTH, 1), dtype=np.uint16)
    scan[0, 0, 0] = 60000 + seed
    findings = [[], [0], [1], [0, 1]][index % 4]
    return {"image": image, "scan": scan, "label": index % 2, "findings": findings}


def _builder_class(tfds, code_dir):
    class KmedimgTinyScans(tfds.core.GeneratorBasedBuilder):
        """14 examples in train/validation/test; an 8-bit RGB and a 16-bit grey image."""

        VERSION = tfds.core.Version("1.0.0")
        # TFDS looks for metadata (checksums, README) next to a builder's package; this
        # module is not in a package, so point it at an empty folder.
        pkg_dir_path = tfds.core.Path(code_dir)

        def _info(self):
            return self.dataset_info_from_configs(
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(HEIGHT, WIDTH, 3)),
                    "scan": tfds.features.Image(shape=(HEIGHT, WIDTH, 1), dtype=np.uint16),
                    "label": tfds.features.ClassLabel(names=CLASSES),
                    "findings": tfds.features.Sequence(tfds.features.ClassLabel(names=FINDINGS)),
                }),
            )

        def _split_generators(self, dl_manager):
            del dl_manager  # nothing to download
            return {split: self._generate_examples(split) for split in SPLITS}

        def _generate_examples(self, split):
            for index in range(SPLITS[split]):
                yield f"{split}-{index}", _example(split, index)

    return KmedimgTinyScans


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any IP connection attempt from this process fails the test."""
    attempts = []
    real_connect = socket.socket.connect

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(address)
            raise OSError(f"test_tfds_source: network access attempted: {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    yield
    assert not attempts, f"network access attempted: {attempts}"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The prepared dataset in its own TFDS data_dir (built once per test module)."""
    tfds = _require_tfds()
    from tensorflow_datasets.core.utils import gcs_utils

    root = tmp_path_factory.mktemp("tfds")
    previous = gcs_utils._is_gcs_disabled
    gcs_utils._is_gcs_disabled = True  # TFDS's own switch (tfds.testing uses it too)
    try:
        builder = _builder_class(tfds, tmp_path_factory.mktemp("code"))(data_dir=str(root))
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False)
        )
    finally:
        gcs_utils._is_gcs_disabled = previous
    assert {s: builder.info.splits[s].num_examples for s in SPLITS} == SPLITS
    return root


def _expected(split_names, image_key, label_of):
    rows = []
    for tfds_split, split in split_names.items():
        for index in range(SPLITS[tfds_split]):
            example = _example(tfds_split, index)
            rows.append((split, example[image_key].astype(np.float32), label_of(example)))
    return rows


def _loaded(out, split):
    rows = []
    for images, labels in load(out, split, batch_size=8, training=False, deterministic=True):
        rows.extend(zip(images.numpy(), labels.numpy()))
    return rows


def _assert_same(out, expected):
    """Every written record is one expected example (pixels and labels exactly)."""
    manifest = read_manifest(out)
    for split in {row[0] for row in expected}:
        want = sorted(((image.tobytes(), tuple(label)) for s, image, label in expected
                       if s == split))
        got = sorted((image.tobytes(), tuple(label)) for image, label in _loaded(out, split))
        assert len(got) == manifest.splits[split].count == len(want)
        assert got == want, f"split {split}: pixels or labels changed"


def test_python_api_round_trips_rgb_pixels_and_labels(data_dir, tmp_path):
    source = open_source(f"tfds:{NAME}", data_dir=str(data_dir))
    assert isinstance(source, TfdsSource)
    assert source.class_names == CLASSES and source.task == "binary"
    assert source.splits == [("train", "train"), ("validation", "val"), ("test", "test")]
    manifest = write_dataset(source, tmp_path / "out", num_shards=1)
    assert (manifest.dtype, manifest.channels) == ("uint8", 3)
    assert manifest.counts["written"] == sum(SPLITS.values())
    assert manifest.counts["rejected"] == 0
    assert manifest.source["format"] == "tfds" and manifest.source["name"] == NAME
    expected = _expected({"train": "train", "validation": "val", "test": "test"}, "image",
                         lambda example: [float(example["label"])])
    _assert_same(tmp_path / "out", expected)


def test_uint16_scan_and_multilabel_findings_round_trip(data_dir, tmp_path):
    source = TfdsSource(f"tfds:{NAME}:1.0.0", data_dir=data_dir, image_key="scan",
                        label_key="findings", splits={"train": "train", "test": "val"})
    assert source.class_names == FINDINGS and source.task == "multilabel"
    manifest = write_dataset(source, tmp_path / "out", encoding="png", num_shards=1)
    assert (manifest.dtype, manifest.channels, manifest.encoding) == ("uint16", 1, "png")

    def multi_hot(example):
        return [float(k in example["findings"]) for k in range(len(FINDINGS))]

    _assert_same(tmp_path / "out", _expected({"train": "train", "test": "val"}, "scan",
                                             multi_hot))


def test_convert_command_reads_prepared_files_without_the_builder_code(data_dir, tmp_path):
    """`kmedimg convert tfds:NAME` in a fresh process: only the prepared files exist there
    (the builder class is not importable), and where possible no network at all."""
    out = tmp_path / "out"
    command = [sys.executable, "-c", "import sys; from kmedimg.cli import main; "
               "sys.exit(main(sys.argv[1:]))", "convert", f"tfds:{NAME}", str(out),
               "--tfds-data-dir", str(data_dir), "--shards", "1", "--no-progress"]
    if shutil.which("unshare") and subprocess.run(
            ["unshare", "-n", "true"], capture_output=True).returncode == 0:
        command = ["unshare", "-n", *command]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        TFDS_DATA_DIR=str(tmp_path / "default_tfds_dir"))
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "default_tfds_dir").exists()
    expected = _expected({"train": "train", "validation": "val", "test": "test"}, "image",
                         lambda example: [float(example["label"])])
    _assert_same(out, expected)
    assert read_manifest(out).source["data_dir"] == str(data_dir)


def test_missing_dataset_is_an_error_not_a_download(data_dir, tmp_path):
    _require_tfds()
    empty = tmp_path / "empty"
    with pytest.raises(FileNotFoundError, match="never downloads"):
        TfdsSource("tfds:mnist", data_dir=str(empty))
    with pytest.raises(ValueError, match="cannot find dataset"):
        TfdsSource("tfds:no_such_dataset_anywhere", data_dir=str(empty))
    assert not empty.exists() or not any(empty.rglob("*.tfrecord*"))


def test_sequence_of_class_label_values_are_indices_not_multi_hot():
    """[0, 1] over 2 classes is both findings (indices), never "only the second"."""
    from kmedimg.data.sources import tfds as tfds_module

    image = np.zeros((4, 4, 1), np.uint8)
    for label_indices, expected in ((True, ("effusion", "nodule")), (False, ("nodule",))):
        item = tfds_module.example_to_item(
            {"image": image, "label": np.array([0, 1])}, 0, "train", "train", "image", "label",
            FINDINGS, "multilabel", label_indices=label_indices,
        )
        assert item.labels == expected
