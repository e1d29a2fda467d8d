"""`get_strategy`: the `tf.distribute.Strategy` a run trains under, and why."""

import logging
import os

import tensorflow as tf

from kmedimg.distribute import _keras_patches
from kmedimg.distribute.tf_config import parse_tf_config

logger = logging.getLogger("kmedimg.distribute")

STRATEGY_KINDS = ("auto", "tpu", "gpu", "multiworker", "cpu")

# Environment variables that say "this process runs next to a TPU".
_TPU_ENVIRONMENT = ("TPU_NAME", "COLAB_TPU_ADDR", "TPU_ACCELERATOR_TYPE", "TPU_WORKER_ID")

# A TPU system is initialised, and a MultiWorkerMirroredStrategy's collectives are
# configured, once per process: later calls (a notebook cell run twice, `training.run`
# after the user's own `get_strategy`) get the same strategy back.
_STRATEGY_CACHE = {}


def get_strategy(kind="auto", tpu_address=None):
    """Returns the distribution strategy to train under.

    - `"tpu"`: resolves the TPU (`tpu="local"` on TPU VMs and current Colab TPU
      runtimes; a TPU name or `grpc://host:8470` address for TPU nodes and pods),
      connects, initialises it and returns a `tf.distribute.TPUStrategy`.
    - `"gpu"`: `tf.distribute.MirroredStrategy` over the visible GPUs.
    - `"multiworker"`: `tf.distribute.MultiWorkerMirroredStrategy` from the
      `TF_CONFIG` environment variable (validated first), with the Keras fixes of
      `kmedimg._keras_patches` applied.
    - `"cpu"`: the default strategy.
    - `"auto"`: a reachable TPU, else several workers when `TF_CONFIG` lists more
      than one, else GPUs, else the CPU; logs what it found and why.

    Args:
        kind: one of `"auto"`, `"tpu"`, `"gpu"`, `"multiworker"`, `"cpu"`.
            Defaults to `"auto"`.
        tpu_address: TPU name or grpc address; `None` uses `$TPU_NAME` when set,
            else `"local"`. Defaults to `None`.

    Returns:
        A `tf.distribute.Strategy`.

    Raises:
        ValueError: unknown `kind`, malformed `TF_CONFIG`, or an explicit `kind`
            whose hardware is not there.

    Example:

    >>> strategy = get_strategy("cpu")
    >>> strategy.num_replicas_in_sync
    1
    """
    if kind not in STRATEGY_KINDS:
        raise ValueError(
            f"Unknown strategy kind. Allowed values: {', '.join(STRATEGY_KINDS)}. "
            f"Received: kind={kind!r}"
        )
    if kind == "auto":
        return _auto_strategy(tpu_address)
    if kind == "tpu":
        try:
            return _tpu_strategy(tpu_address)
        except (ValueError, RuntimeError, OSError, tf.errors.OpError) as error:
            raise ValueError(
                "kind='tpu' but no TPU could be initialised "
                f"(tpu={_tpu_target(tpu_address)!r}): {_first_line(error)}. On a TPU VM or "
                "Colab TPU runtime use tpu_address='local' and the `tensorflow-tpu` wheel; "
                "for a TPU node give its name or grpc://host:8470; use kind='auto' to fall "
                f"back to GPU/CPU. Received: kind={kind!r}, tpu_address={tpu_address!r}"
            ) from error
    if kind == "gpu":
        gpus = tf.config.list_logical_devices("GPU")
        if not gpus:
            raise ValueError(
                "kind='gpu' but TensorFlow sees no GPU (check `nvidia-smi` and that "
                "`tensorflow[and-cuda]` is installed, not `tensorflow-cpu`). "
                f"Received: kind={kind!r}"
            )
        logger.info("Strategy: MirroredStrategy over %d GPU(s).", len(gpus))
        return tf.distribute.MirroredStrategy([gpu.name for gpu in gpus])
    if kind == "multiworker":
        return _multiworker_strategy(parse_tf_config(os.environ.get("TF_CONFIG")))
    logger.info("Strategy: default (CPU) strategy, as requested.")
    return tf.distribute.get_strategy()


def _auto_strategy(tpu_address):
    tpu_reason = _tpu_evidence(tpu_address)
    if tpu_reason:
        try:
            strategy = _tpu_strategy(tpu_address)
        except (ValueError, RuntimeError, OSError, tf.errors.OpError) as error:
            logger.warning(
                "Strategy auto: %s, but the TPU could not be initialised (%s); trying "
                "GPU/CPU.",
                tpu_reason,
                _first_line(error),
            )
        else:
            logger.info("Strategy auto: TPUStrategy (%s).", tpu_reason)
            return strategy
    cluster = parse_tf_config(os.environ.get("TF_CONFIG")) if os.environ.get("TF_CONFIG") else None
    if cluster and cluster.num_workers > 1:
        logger.info(
            "Strategy auto: MultiWorkerMirroredStrategy (TF_CONFIG lists %d workers; this is "
            "worker %d).",
            cluster.num_workers,
            cluster.task_index,
        )
        return _multiworker_strategy(cluster)
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        logger.info("Strategy auto: MirroredStrategy over %d GPU(s) (no TPU found).", len(gpus))
        return tf.distribute.MirroredStrategy([gpu.name for gpu in gpus])
    logger.info("Strategy auto: default CPU strategy (no TPU, no TF_CONFIG cluster, no GPU).")
    return tf.distribute.get_strategy()


def _tpu_target(tpu_address):
    return tpu_address or os.environ.get("TPU_NAME") or "local"


def _tpu_evidence(tpu_address):
    """Why we think a TPU is attached, or "" when nothing suggests one."""
    if tpu_address:
        return f"tpu_address={tpu_address!r} was given"
    for name in _TPU_ENVIRONMENT:
        if os.environ.get(name):
            return f"${name} is set"
    if any(name.startswith("accel") for name in _list_dir("/dev")):
        return "/dev/accel* devices exist (TPU VM)"
    return ""


def _list_dir(path):
    try:
        return os.listdir(path)
    except OSError:
        return []


def _tpu_strategy(tpu_address):
    target = _tpu_target(tpu_address)
    if ("tpu", target) in _STRATEGY_CACHE:
        return _STRATEGY_CACHE["tpu", target]
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=target)
    if target != "local":
        # TPU nodes and pods are remote: the host connects to their gRPC servers.
        tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    strategy = tf.distribute.TPUStrategy(resolver)
    _STRATEGY_CACHE["tpu", target] = strategy
    return strategy


def _multiworker_strategy(cluster):
    if "multiworker" in _STRATEGY_CACHE:
        return _STRATEGY_CACHE["multiworker"]
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    _STRATEGY_CACHE["multiworker"] = strategy
    _keras_patches.apply_multiworker_patches()
    logger.info(
        "Strategy: MultiWorkerMirroredStrategy, worker %d of %d, %d replicas in sync.",
        cluster.task_index,
        cluster.num_workers,
        strategy.num_replicas_in_sync,
    )
    return strategy


def _first_line(error):
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
