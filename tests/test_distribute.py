"""Strategy selection, platform defaults and the TPU path check (single process)."""

import json
import logging

import keras
import pytest
import tensorflow as tf

from kmedimg import distribute
from kmedimg.distribute import _keras_patches
from kmedimg.distribute import strategy as strategy_module


@pytest.fixture
def clean_environment(monkeypatch):
    for name in strategy_module._TPU_ENVIRONMENT + ("TF_CONFIG",):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _tf_config(workers=2, index=0, **extra):
    config = {
        "cluster": {"worker": [f"127.0.0.1:{20000 + i}" for i in range(workers)]},
        "task": {"type": "worker", "index": index},
    }
    config.update(extra)
    return json.dumps(config)


def test_unknown_kind_lists_allowed_values():
    with pytest.raises(ValueError, match=r"auto, tpu, gpu, multiworker, cpu\. Received: kind='tpuu'"):
        distribute.get_strategy("tpuu")


def test_cpu_kind_is_the_default_strategy(clean_environment):
    strategy = distribute.get_strategy("cpu")
    assert strategy is tf.distribute.get_strategy()
    assert strategy.num_replicas_in_sync == 1


@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="machine has a GPU")
def test_gpu_kind_without_gpu_is_a_clear_error(clean_environment):
    with pytest.raises(ValueError, match="sees no GPU.*Received: kind='gpu'"):
        distribute.get_strategy("gpu")


def test_tpu_kind_without_tpu_is_a_clear_error(clean_environment):
    with pytest.raises(ValueError, match=r"no TPU could be initialised \(tpu='local'\).*tpu_address='local'"):
        distribute.get_strategy("tpu")


def test_auto_without_evidence_picks_cpu_and_says_why(clean_environment, caplog, monkeypatch):
    monkeypatch.setattr(strategy_module, "_list_dir", lambda path: [])
    with caplog.at_level(logging.INFO, logger="kmedimg.distribute"):
        strategy = distribute.get_strategy("auto")
    assert strategy is tf.distribute.get_strategy()
    assert "default CPU strategy (no TPU, no TF_CONFIG cluster, no GPU)" in caplog.text


def test_auto_falls_back_when_tpu_evidence_but_resolver_fails(clean_environment, caplog):
    clean_environment.setenv("TPU_NAME", "local")
    with caplog.at_level(logging.INFO, logger="kmedimg.distribute"):
        strategy = distribute.get_strategy("auto")
    assert strategy is tf.distribute.get_strategy()
    assert "$TPU_NAME is set, but the TPU could not be initialised" in caplog.text
    assert "default CPU strategy" in caplog.text


@pytest.mark.parametrize(
    "variable, expected",
    [("COLAB_TPU_ADDR", "$COLAB_TPU_ADDR is set"), ("TPU_ACCELERATOR_TYPE", "$TPU_ACCELERATOR_TYPE")],
)
def test_tpu_evidence_from_environment(clean_environment, variable, expected):
    clean_environment.setenv(variable, "v4-8")
    assert expected in strategy_module._tpu_evidence(None)


def test_tpu_evidence_from_accel_devices(clean_environment, monkeypatch):
    monkeypatch.setattr(strategy_module, "_list_dir", lambda path: ["null", "accel0", "accel1"])
    assert "/dev/accel*" in strategy_module._tpu_evidence(None)
    monkeypatch.setattr(strategy_module, "_list_dir", lambda path: ["null", "tty"])
    assert strategy_module._tpu_evidence(None) == ""
    assert "tpu_address='my-tpu'" in strategy_module._tpu_evidence("my-tpu")


def test_auto_with_single_worker_tf_config_stays_local(clean_environment, monkeypatch):
    monkeypatch.setattr(strategy_module, "_list_dir", lambda path: [])
    clean_environment.setenv("TF_CONFIG", _tf_config(workers=1))
    assert distribute.get_strategy("auto") is tf.distribute.get_strategy()


def test_parse_tf_config_reads_cluster_and_task():
    cluster = distribute.parse_tf_config(_tf_config(workers=3, index=2))
    assert cluster.workers == ("127.0.0.1:20000", "127.0.0.1:20001", "127.0.0.1:20002")
    assert (cluster.task_type, cluster.task_index, cluster.num_workers) == ("worker", 2, 3)
    assert not cluster.is_chief
    assert distribute.parse_tf_config(_tf_config(workers=2, index=0)).is_chief
    with_chief = json.dumps(
        {"cluster": {"chief": ["h0:1"], "worker": ["h1:1"]}, "task": {"type": "chief", "index": 0}}
    )
    parsed = distribute.parse_tf_config(with_chief)
    assert parsed.num_workers == 2 and parsed.is_chief


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "needs the TF_CONFIG environment variable"),
        ("{not json", "not valid JSON"),
        (json.dumps({"task": {"type": "worker", "index": 0}}), "needs a 'cluster' object"),
        (json.dumps({"cluster": {"worker": ["h:1"], "ps": ["h:2"]}, "task": {"type": "worker", "index": 0}}),
         "parameter servers"),
        (json.dumps({"cluster": {"workers": ["h:1"]}, "task": {"type": "worker", "index": 0}}),
         "unknown job names"),
        (json.dumps({"cluster": {"worker": ["nohostport"]}, "task": {"type": "worker", "index": 0}}),
         r"cluster.worker must be a list of 'host:port'"),
        (json.dumps({"cluster": {"worker": ["h:1"]}}), "needs a 'task' object"),
        (json.dumps({"cluster": {"worker": ["h:1"]}, "task": {"type": "ps", "index": 0}}),
         "task.type must be one of"),
        (_tf_config(workers=2, index=2), r"task.index must be an integer in \[0, 2\).*Received: task.index=2"),
        (json.dumps({"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": "0"}}),
         "task.index must be an integer"),
    ],
)
def test_parse_tf_config_errors_name_the_field(text, message):
    with pytest.raises(ValueError, match=message):
        distribute.parse_tf_config(text)


def test_multiworker_kind_without_tf_config_is_a_clear_error(clean_environment):
    with pytest.raises(ValueError, match="kind='multiworker' needs the TF_CONFIG"):
        distribute.get_strategy("multiworker")


def test_cpu_defaults():
    defaults = distribute.platform_defaults(tf.distribute.get_strategy())
    assert defaults.platform == "cpu"
    assert defaults.precision_policy == "float32"
    assert defaults.jit_compile is False
    assert defaults.steps_per_execution == 1
    assert defaults.replicas == 1 and defaults.workers == 1
    assert not defaults.loss_scaling and not defaults.requires_gcs
    assert defaults.fit_shuffle is False
    assert any("XLA off" in note for note in defaults.notes)
    assert defaults.global_batch_size(32) == 32


def test_overrides_apply_and_are_validated():
    defaults = distribute.platform_defaults(
        None, precision_policy="mixed_bfloat16", jit_compile=True, steps_per_execution=8
    )
    assert (defaults.precision_policy, defaults.jit_compile, defaults.steps_per_execution) == (
        "mixed_bfloat16",
        True,
        8,
    )
    assert not defaults.loss_scaling
    assert distribute.platform_defaults(None, precision_policy="mixed_float16").loss_scaling
    assert distribute.platform_defaults(None, jit_compile=None).jit_compile is False
    with pytest.raises(ValueError, match="Allowed values: float32, mixed_float16, mixed_bfloat16"):
        distribute.platform_defaults(None, precision_policy="bf16")
    with pytest.raises(ValueError, match="Allowed values: jit_compile, precision_policy, steps_per_execution"):
        distribute.platform_defaults(None, batch_size=3)
    with pytest.raises(ValueError, match="steps_per_execution must be a positive integer"):
        distribute.platform_defaults(None, steps_per_execution=0)
    with pytest.raises(ValueError, match="jit_compile must be true, false or"):
        distribute.platform_defaults(None, jit_compile="always")


def test_single_device_mirrored_accepts_steps_per_execution():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    assert not distribute.is_multi_device_mirrored(strategy)
    distribute.check_compile_settings(strategy, steps_per_execution=16, jit_compile=True)
    assert distribute.platform_defaults(strategy).platform == "cpu"


def test_batch_and_learning_rate_arithmetic():
    defaults = dataclass_with_replicas(8)
    assert defaults.global_batch_size(16) == 128
    assert defaults.per_replica_batch_size(128) == 16
    with pytest.raises(ValueError, match="multiple of the 8 replicas.*Received: global_batch_size=100"):
        defaults.per_replica_batch_size(100)
    assert defaults.scaled_learning_rate(0.1, 256, 1024) == pytest.approx(0.4)
    assert defaults.scaled_learning_rate(0.1, 256, 1024, rule="sqrt") == pytest.approx(0.2)
    assert defaults.scaled_learning_rate(0.1, 256, 1024, rule="none") == pytest.approx(0.1)
    with pytest.raises(ValueError, match="Allowed values: linear, sqrt, none. Received: rule='log'"):
        defaults.scaled_learning_rate(0.1, 256, 1024, rule="log")
    with pytest.raises(ValueError, match="per_replica_batch_size must be a positive integer"):
        defaults.global_batch_size(0)


def dataclass_with_replicas(replicas):
    import dataclasses

    return dataclasses.replace(distribute.platform_defaults(None), replicas=replicas)


def test_tpu_path_check_refuses_local_paths():
    with pytest.raises(ValueError) as error:
        distribute.check_paths_for_tpu(
            "tpu", data="/home/me/data", run_dir="gs://bucket/runs", checkpoints="ckpt", tuner=None
        )
    message = str(error.value)
    assert message.startswith("TPU workers read only gs:// paths")
    assert "data, checkpoints are local paths" in message
    assert "stage_to_gcs.sh" in message
    assert message.endswith("Received: data='/home/me/data', checkpoints='ckpt'")
    with pytest.raises(ValueError, match="run_dir is a local path"):
        distribute.check_paths_for_tpu("tpu", run_dir="runs/a")


def test_tpu_path_check_passes_gcs_and_non_tpu():
    distribute.check_paths_for_tpu("tpu", data="gs://b/d", run_dir="gs://b/r", model=None)
    distribute.check_paths_for_tpu("cpu", data="/local")
    distribute.check_paths_for_tpu(tf.distribute.get_strategy(), data="/local")


def test_distribute_dataset_under_default_strategy_returns_plain_dataset():
    seen = []

    def dataset_fn(input_context):
        seen.append((input_context.num_input_pipelines, input_context.input_pipeline_id))
        return tf.data.Dataset.range(4).batch(input_context.get_per_replica_batch_size(2))

    dataset = distribute.distribute_dataset(tf.distribute.get_strategy(), dataset_fn)
    assert isinstance(dataset, tf.data.Dataset)
    assert seen == [(1, 0)]
    assert [batch.tolist() for batch in dataset.as_numpy_iterator()] == [[0, 1], [2, 3]]


def test_keras_patches_are_version_checked_and_idempotent(monkeypatch):
    assert _keras_patches.is_supported_keras() == (
        (3, 15) <= _keras_patches._keras_version() <= (3, 15)
    )
    monkeypatch.setattr(keras, "__version__", "3.99.0")
    monkeypatch.setitem(_keras_patches._state, "applied", False)
    assert _keras_patches.apply_multiworker_patches() is False


def test_keras_patches_leave_single_process_training_unchanged():
    """With the patches installed, fit under one-device strategies gives the same weights."""

    def train():
        keras.utils.set_random_seed(3)
        x = tf.random.stateless_uniform((32, 4), seed=(1, 2))
        y = tf.cast(tf.reduce_sum(x, axis=1, keepdims=True) > 2.0, "float32")
        strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
        with strategy.scope():
            model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
            model.compile("sgd", "binary_crossentropy", metrics=["accuracy"])
        history = model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
        return model.get_weights(), history.history["loss"]

    weights_before, loss_before = train()
    if not _keras_patches.is_supported_keras():
        pytest.skip("Keras version outside the patched range")
    assert _keras_patches.apply_multiworker_patches()
    weights_after, loss_after = train()
    for before, after in zip(weights_before, weights_after):
        assert before.tolist() == after.tolist()
    assert loss_before == loss_after


def test_jit_compile_auto_keeps_platform_default():
    assert distribute.platform_defaults(None, jit_compile="auto").jit_compile is False


def test_xla_layer_check_names_incompatible_augmentation():
    inner = keras.Sequential([keras.layers.RandomFlip(), keras.layers.RandomRotation(0.1, name="rot")])
    model = keras.Sequential([keras.Input((16, 16, 1)), inner, keras.layers.Flatten(), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match=r"MedicalAugmentation.*Received: layers=\[RandomRotation 'rot'\]"):
        distribute.check_layers_for_xla(model)
    clean = keras.Sequential([keras.Input((16, 16, 1)), keras.layers.RandomFlip(), keras.layers.Flatten()])
    distribute.check_layers_for_xla(clean)


def test_xla_incompatible_list_matches_reality():
    """Each listed layer really fails to compile under XLA here; RandomFlip compiles."""
    images = tf.random.uniform((2, 16, 16, 1))

    def compiles(layer):
        try:
            tf.function(lambda x: layer(x, training=True), jit_compile=True)(images)
        except tf.errors.InvalidArgumentError:
            return False
        return True

    assert compiles(keras.layers.RandomFlip())
    assert not compiles(keras.layers.RandomRotation(0.1))
    assert not compiles(keras.layers.RandomZoom(0.1))


def test_evaluation_dataset_sets_data_sharding():
    dataset = distribute.evaluation_dataset(tf.data.Dataset.range(6).batch(4))
    policy = dataset.options().experimental_distribute.auto_shard_policy
    assert policy == tf.data.experimental.AutoShardPolicy.DATA
    assert [batch.tolist() for batch in dataset.as_numpy_iterator()] == [[0, 1, 2, 3], [4, 5]]
