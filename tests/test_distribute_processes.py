"""Real multi-device and multi-process training from TFRecords on this machine.

- 2 workers of MultiWorkerMirroredStrategy on 127.0.0.1 train a LeNet-5 from a
  one-shard TFRecord split and end with identical weights.
- MirroredStrategy over 2 logical CPUs follows the single-device loss trajectory
  at the same global batch.
- On 2 logical CPUs, `platform_defaults` refuses the settings that fail there.

Every process is started with a deadline and killed (by its own pid) if it
overruns or a sibling fails.
"""

import json
import pathlib
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from kmedimg.data.synthetic import make_phantom_dataset

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PROCESS_TIMEOUT = 150  # seconds; the runs below take ~10-25 s each on 2 busy cores


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    directory = tmp_path_factory.mktemp("phantoms")
    # One shard file per split: the case where file-based autosharding fails or
    # leaves the second worker without data.
    make_phantom_dataset(
        str(directory), num_images=80, image_size=32, val_fraction=0.2, test_fraction=0.0, num_shards=1
    )
    return directory


def free_ports(count):
    sockets = []
    try:
        for _ in range(count):
            handle = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            handle.bind(("127.0.0.1", 0))
            sockets.append(handle)
        return [handle.getsockname()[1] for handle in sockets]
    finally:
        for handle in sockets:
            handle.close()


def run_together(commands, workdir, timeout=PROCESS_TIMEOUT):
    """Runs commands concurrently; returns their stderr texts; kills all on failure."""
    env = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO_ROOT), "KERAS_BACKEND": "tensorflow"}
    import os

    env = {**os.environ, **env}
    env.pop("TF_CONFIG", None)
    processes, logs = [], []
    try:
        for number, command in enumerate(commands):
            log = open(workdir / f"process{number}.stderr", "w+")
            logs.append(log)
            processes.append(
                subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir)
            )
        deadline = time.monotonic() + timeout
        while any(process.poll() is None for process in processes):
            failed = [p for p in processes if p.poll() not in (None, 0)]
            if failed or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    for number, process in enumerate(processes):
        if process.returncode != 0:
            pytest.fail(
                f"process {number} ({' '.join(map(str, commands[number]))}) ended with "
                f"{process.returncode} (killed after {timeout} s if negative):\n"
                + outputs[number][-3000:]
            )
    return outputs


def training_command(mode, data, out, **options):
    command = [sys.executable, "-m", "kmedimg.distribute._distributed_run", "--mode", mode, "--data", str(data),
               "--out", str(out)]
    for key, value in options.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    return command


def test_two_workers_on_localhost_end_with_identical_weights(phantoms, tmp_path):
    ports = ",".join(map(str, free_ports(2)))
    outs = [tmp_path / f"worker{index}.json" for index in range(2)]
    logs = run_together(
        [
            training_command("multiworker", phantoms, outs[index], worker_index=index, ports=ports,
                             steps=4, global_batch=16)
            for index in range(2)
        ],
        tmp_path,
    )
    results = [json.loads(out.read_text()) for out in outs]
    for result, log in zip(results, logs):
        assert result["replicas"] == 2
        assert len(result["losses"]) == 4 and np.all(np.isfinite(result["losses"]))
        # One shard file for two input pipelines: load shards by record and says so.
        assert "sharding by record" in log
    assert results[0]["weights_sha256"] == results[1]["weights_sha256"]
    assert all(result["strategy_cached"] for result in results)
    # Evaluation on a one-file validation split (evaluation_dataset: DATA sharding).
    assert np.isfinite(results[0]["val_loss"])
    assert results[0]["val_loss"] == pytest.approx(results[1]["val_loss"], rel=1e-6)
    weights = [np.load(str(out) + ".weights.npz") for out in outs]
    for name in weights[0].files:
        np.testing.assert_array_equal(weights[0][name], weights[1][name])
    # The logged loss is the all-reduced mean: the same on both workers.
    assert results[0]["losses"] == pytest.approx(results[1]["losses"], rel=1e-6)


def test_mirrored_over_two_logical_cpus_matches_one_device(phantoms, tmp_path):
    # OneDeviceStrategy, not the default strategy: with any strategy set, Keras takes
    # one batch to build the model and restarts the iterator, which reshuffles.
    single, mirrored = tmp_path / "single.json", tmp_path / "mirrored.json"
    run_together(
        [
            training_command("onedevice", phantoms, single, steps=5, global_batch=16),
            training_command("mirrored", phantoms, mirrored, steps=5, global_batch=16, devices=2),
        ],
        tmp_path,
    )
    one, two = json.loads(single.read_text()), json.loads(mirrored.read_text())
    assert (one["replicas"], two["replicas"]) == (1, 2)
    assert one["initial_weights_sha256"] == two["initial_weights_sha256"]
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-4, atol=1e-5)
    assert len(set(np.round(one["losses"], 4))) > 1  # the loss moved: a real trajectory
    weights_one = np.load(str(single) + ".weights.npz")
    weights_two = np.load(str(mirrored) + ".weights.npz")
    for name in weights_one.files:
        np.testing.assert_allclose(weights_two[name], weights_one[name], rtol=1e-3, atol=1e-5)


MIRRORED_DEFAULTS_SCRIPT = textwrap.dedent(
    """
    import json
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from kmedimg import distribute
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    defaults = distribute.platform_defaults(strategy)
    errors = {}
    for name, overrides in {"steps": {"steps_per_execution": 4}, "jit": {"jit_compile": True}}.items():
        try:
            distribute.platform_defaults(strategy, **overrides)
        except ValueError as error:
            errors[name] = str(error)
    print(json.dumps({"replicas": defaults.replicas, "steps": defaults.steps_per_execution,
                      "jit": defaults.jit_compile, "platform": defaults.platform,
                      "global": defaults.global_batch_size(8), "errors": errors}))
    """
)


def test_defaults_and_refusals_on_two_logical_cpus(tmp_path):
    script = tmp_path / "mirrored_defaults.py"
    script.write_text(MIRRORED_DEFAULTS_SCRIPT)
    (output,) = run_together([[sys.executable, str(script)]], tmp_path)
    report = json.loads(output.strip().splitlines()[-1])
    assert report["replicas"] == 2 and report["global"] == 16
    assert (report["steps"], report["jit"], report["platform"]) == (1, False, "cpu")
    assert "keras-team/keras#19246" in report["errors"]["steps"]
    assert report["errors"]["steps"].endswith("Received: steps_per_execution=4")
    assert "use jit_compile=False" in report["errors"]["jit"]


RECIPE_WORKER_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    index, ports, data, out = int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3], sys.argv[4]
    os.environ["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
        "task": {"type": "worker", "index": index}})
    import keras, numpy as np
    from kmedimg import runs
    from kmedimg.config import config_from_dict
    config = config_from_dict({
        "data": {"path": data, "image_size": 32, "batch_size": 16},
        "model": {"backbone": "lenet5"},
        "recipe": {"name": "two_stage", "head_epochs": 1, "finetune_epochs": 1},
        "distribute": {"kind": "multiworker"},
        "training": {"run_dir": f"{out}/run{index}", "steps_per_epoch": 2, "verbose": 0,
                     "tensorboard": False},
        "evaluation": {"bootstrap": 10},
    })
    result = runs.train_and_evaluate(config, progress=False)
    weights = keras.saving.load_model(result.model_path).get_weights()
    np.savez(f"{out}/weights{index}.npz", *weights)
    """
)


@pytest.mark.slow
def test_two_workers_run_a_recipe_end_to_end(phantoms, tmp_path):
    """`runs.train_and_evaluate` of a two-stage recipe under 2 workers: same model on both."""
    script = tmp_path / "recipe_worker.py"
    script.write_text(RECIPE_WORKER_SCRIPT)
    ports = ",".join(map(str, free_ports(2)))
    run_together(
        [[sys.executable, str(script), str(index), ports, str(phantoms), str(tmp_path)] for index in range(2)],
        tmp_path,
        timeout=600,
    )
    first, second = (np.load(tmp_path / f"weights{index}.npz") for index in range(2))
    for name in first.files:
        np.testing.assert_array_equal(first[name], second[name])
    for index in range(2):
        assert (tmp_path / f"run{index}" / "metrics.json").exists()
