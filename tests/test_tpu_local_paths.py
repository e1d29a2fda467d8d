"""Local paths on a single-host TPU VM (Colab's TPU runtime): allowed; elsewhere on TPU: refused."""

import pytest
import tensorflow as tf

from kmedimg import distribute
from kmedimg.distribute.checks import tpu_sees_local_disk

Resolver = tf.distribute.cluster_resolver.TPUClusterResolver


def test_an_attached_tpu_sees_this_disk_a_remote_one_does_not():
    # tpu="local": a TPU VM (Colab's current TPU runtime); no network is touched.
    assert tpu_sees_local_disk(Resolver(tpu="local"))
    # A TPU node / the retired remote Colab TPU: ops run on another host.
    assert not tpu_sees_local_disk(Resolver(tpu="grpc://10.0.0.2:8470"))
    assert not tpu_sees_local_disk(tf.distribute.get_strategy())


def test_an_unknown_tpu_host_still_refuses_local_paths_and_says_what_would_work():
    with pytest.raises(ValueError) as error:
        distribute.check_paths_for_tpu("tpu", data="/content/data", run_dir="gs://b/runs")
    message = str(error.value)
    assert "single-host TPU VM with tpu='local'" in message
    assert message.endswith("Received: data='/content/data'")
