"""Progress lines with an ETA for long loops, and no TensorFlow log noise from our pipeline."""

import pytest
import tensorflow as tf
from tensorflow.python.framework import config as tf_config

from kmedimg.data.pipeline import load
from kmedimg.data.synthetic import make_phantom_dataset


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    path = tmp_path_factory.mktemp("phantoms")
    make_phantom_dataset(path, num_images=48, image_size=16, seed=0, val_fraction=0.25,
                         test_fraction=0.25)
    return str(path)


def test_pipeline_under_op_determinism_logs_no_unknown_attribute_error(phantoms, capfd):
    # Training enables op determinism; tf.data's make_deterministic rewrite then turned
    # every parallel map into a sequential MapDataset (a stateful TensorDataset in the
    # shard check triggered it) and TensorFlow logged an `E0000 ... NodeDef mentions
    # attribute use_unbounded_threadpool` line per map.
    tf.config.experimental.enable_op_determinism()
    try:
        for split, training in (("train", True), ("val", False)):
            dataset = load(phantoms, split, image_size=16, batch_size=4, training=training,
                           deterministic=True, seed=0)
            for _ in dataset.take(2):
                pass
    finally:
        tf_config.disable_op_determinism()
    err = capfd.readouterr().err
    assert "use_unbounded_threadpool" not in err and "E0000" not in err, err[-2000:]
