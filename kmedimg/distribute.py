"""One strategy selector and the per-platform training defaults.

`get_strategy` returns the `tf.distribute.Strategy` a run trains under (TPU, GPUs,
several workers or the default CPU strategy) and logs what it found and why;
`platform_defaults` gives the precision policy, `steps_per_execution`, `jit_compile`
and batch arithmetic that suit that strategy; `check_paths_for_tpu` stops a TPU run
that would read or write local files before it trains.

Known failures of the TF 2.21 / Keras 3.15 stack and what kmedimg does about each
(see `tpu/README.md`, "Known failures"):

- `model.fit` under `MultiWorkerMirroredStrategy` (keras-team/keras#20585): fixed by
  `kmedimg._keras_patches`, applied by `get_strategy("multiworker")`.
- `MirroredStrategy` over several devices with `steps_per_execution > 1`
  (keras-team/keras#19246; also under MultiWorkerMirroredStrategy) or `jit_compile=True`:
  safe defaults (1, False) and a
  clear `ValueError` if a recipe asks for them.
- XLA on CPU is 2-17x slower per step: `jit_compile` is never on by default on CPU.
- Keras warns that `shuffle=True` is ignored for tf.data input: pass
  `FIT_SHUFFLE` (False); the pipeline shuffles.
- Autoshard: training input goes through `distribute_dataset` (one pipeline per
  worker, sharded by `kmedimg.data.pipeline.load`); evaluation input that Keras
  distributes itself goes through `evaluation_dataset` (DATA sharding), so fewer
  files than workers never fails or starves a worker.
- Keras geometric augmentation layers cannot compile under XLA (and fail under
  bf16 on TPU, keras-team/keras#17508): `check_layers_for_xla` names them.

Example:

```python
strategy = get_strategy("auto")
defaults = platform_defaults(strategy)
keras.mixed_precision.set_global_policy(defaults.precision_policy)
global_batch = defaults.global_batch_size(per_replica_batch_size=32)
with strategy.scope():
    model = build_classifier("mobilenet_v2", 1, (96, 96, 1))
    model.compile(optimizer="adam", loss="binary_crossentropy",
                  steps_per_execution=defaults.steps_per_execution,
                  jit_compile=defaults.jit_compile)
```
"""

import dataclasses
import json
import logging
import math
import os

import tensorflow as tf

logger = logging.getLogger(__name__)

STRATEGY_KINDS = ("auto", "tpu", "gpu", "multiworker", "cpu")
PRECISION_POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
LEARNING_RATE_RULES = ("linear", "sqrt", "none")

# Keras ignores `shuffle` for tf.data input and warns on every fit; the pipeline
# shuffles its own records, so training passes this.
FIT_SHUFFLE = False

# One compiled call runs this many steps on a TPU, amortising the host round trip.
TPU_STEPS_PER_EXECUTION = 32

# Environment variables that say "this process runs next to a TPU".
_TPU_ENVIRONMENT = ("TPU_NAME", "COLAB_TPU_ADDR", "TPU_ACCELERATOR_TYPE", "TPU_WORKER_ID")

# A TPU system is initialised, and a MultiWorkerMirroredStrategy's collectives are
# configured, once per process: later calls (a notebook cell run twice, `training.run`
# after the user's own `get_strategy`) get the same strategy back.
_STRATEGY_CACHE = {}

_GCS_HINT = (
    "Copy the data with `tpu/stage_to_gcs.sh` and point data, checkpoint and run "
    "directories at a gs:// bucket the TPU service account can read and write."
)


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
    from kmedimg import _keras_patches

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


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    """The parts of `TF_CONFIG` a multi-worker run needs.

    Attributes:
        workers: `host:port` of every worker, in index order.
        task_type: this process's role, `"worker"` or `"chief"`.
        task_index: this process's index within its role.
        chief: `host:port` of the chief, if the cluster has one.
    """

    workers: tuple
    task_type: str
    task_index: int
    chief: str = None

    @property
    def num_workers(self):
        return len(self.workers) + (1 if self.chief else 0)

    @property
    def is_chief(self):
        return self.task_type == "chief" or (self.chief is None and self.task_index == 0)


def parse_tf_config(text):
    """Parses and validates a `TF_CONFIG` JSON string.

    Args:
        text: the value of `$TF_CONFIG`, e.g.
            `{"cluster": {"worker": ["10.0.0.1:12345", "10.0.0.2:12345"]},
            "task": {"type": "worker", "index": 0}}`.

    Returns:
        A `ClusterSpec`.

    Raises:
        ValueError: naming the missing or malformed field.
    """
    example = (
        'e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
        '"task": {"type": "worker", "index": 0}}'
    )
    if not text:
        raise ValueError(
            "kind='multiworker' needs the TF_CONFIG environment variable describing the "
            f"cluster and this task, {example}. Received: TF_CONFIG={text!r}"
        )
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON ({error}). Received: TF_CONFIG={text!r}")
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict):
        raise ValueError(f"TF_CONFIG needs a 'cluster' object, {example}. Received: TF_CONFIG={text!r}")
    cluster = config["cluster"]
    unknown = sorted(set(cluster) - {"worker", "chief", "evaluator", "ps"})
    if unknown:
        raise ValueError(
            "TF_CONFIG cluster has unknown job names; allowed: worker, chief, evaluator, ps. "
            f"Received: cluster keys={sorted(cluster)}"
        )
    if "ps" in cluster:
        raise ValueError(
            "TF_CONFIG lists parameter servers ('ps'); kmedimg trains with "
            "MultiWorkerMirroredStrategy, which takes only 'worker' (and optionally one "
            f"'chief'). Received: cluster keys={sorted(cluster)}"
        )
    workers = cluster.get("worker", [])
    chiefs = cluster.get("chief", [])
    for job, addresses in (("worker", workers), ("chief", chiefs)):
        if not isinstance(addresses, list) or not all(
            isinstance(address, str) and _is_host_port(address) for address in addresses
        ):
            raise ValueError(
                f"TF_CONFIG cluster.{job} must be a list of 'host:port' strings. "
                f"Received: cluster.{job}={addresses!r}"
            )
    if len(chiefs) > 1:
        raise ValueError(f"TF_CONFIG may list at most one chief. Received: cluster.chief={chiefs!r}")
    if not workers and not chiefs:
        raise ValueError(f"TF_CONFIG cluster lists no workers, {example}. Received: TF_CONFIG={text!r}")
    task = config.get("task")
    if not isinstance(task, dict):
        raise ValueError(f"TF_CONFIG needs a 'task' object, {example}. Received: TF_CONFIG={text!r}")
    task_type, task_index = task.get("type"), task.get("index")
    if task_type not in ("worker", "chief", "evaluator"):
        raise ValueError(
            "TF_CONFIG task.type must be one of worker, chief, evaluator. "
            f"Received: task.type={task_type!r}"
        )
    members = {"worker": workers, "chief": chiefs}.get(task_type, cluster.get("evaluator", []))
    if not isinstance(task_index, int) or isinstance(task_index, bool) or not (
        0 <= task_index < len(members)
    ):
        raise ValueError(
            f"TF_CONFIG task.index must be an integer in [0, {len(members)}) for "
            f"{len(members)} {task_type}(s). Received: task.index={task_index!r}"
        )
    return ClusterSpec(
        workers=tuple(workers),
        task_type=task_type,
        task_index=task_index,
        chief=chiefs[0] if chiefs else None,
    )


def _is_host_port(address):
    host, _, port = address.rpartition(":")
    return bool(host) and port.isdigit()


def platform_of(strategy):
    """The platform a strategy trains on: `"tpu"`, `"gpu"` or `"cpu"`.

    Args:
        strategy: a `tf.distribute.Strategy`, or `None` for the current one.

    Returns:
        `"tpu"`, `"gpu"` or `"cpu"`.
    """
    strategy = strategy or tf.distribute.get_strategy()
    if is_tpu_strategy(strategy):
        return "tpu"
    if isinstance(strategy, (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy)):
        devices = strategy.extended.worker_devices
        return "gpu" if any("GPU" in device.upper() for device in devices) else "cpu"
    return "gpu" if tf.config.list_logical_devices("GPU") else "cpu"


def is_tpu_strategy(strategy):
    """Whether `strategy` runs on TPUs (`TPUStrategy`, any version)."""
    return isinstance(strategy, (tf.distribute.TPUStrategy, tf.distribute.experimental.TPUStrategy))


def is_multi_device_mirrored(strategy):
    """Whether `strategy` mirrors over several devices within one process."""
    return (
        isinstance(strategy, tf.distribute.MirroredStrategy)
        and len(strategy.extended.worker_devices) > 1
    )


def num_workers(strategy):
    """How many worker processes (hosts) take part in `strategy`."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        jobs = strategy.cluster_resolver.cluster_spec().as_dict()
        return max(1, len(jobs.get("worker", [])) + len(jobs.get("chief", [])))
    if is_tpu_strategy(strategy):
        return getattr(strategy.extended, "num_hosts", 1)
    return 1


@dataclasses.dataclass(frozen=True)
class PlatformDefaults:
    """Training settings that suit one platform; each can be overridden by a recipe.

    Attributes:
        platform: `"tpu"`, `"gpu"` or `"cpu"`.
        strategy_name: the strategy's class name.
        replicas: `strategy.num_replicas_in_sync`.
        workers: number of worker processes (hosts).
        precision_policy: Keras dtype policy name: `mixed_bfloat16` on TPU,
            `mixed_float16` on GPU, `float32` on CPU.
        loss_scaling: whether `compile(auto_scale_loss=True)` matters (float16 only).
        steps_per_execution: steps per compiled call; large on TPU, 1 elsewhere
            (mirrored replicas fail with more, keras-team/keras#19246).
        jit_compile: XLA for the train step; on TPU always, on one GPU yes, never on
            CPU (2-17x slower per step here) nor over several mirrored devices.
        requires_gcs: data, checkpoints and run directories must be `gs://` paths.
        fit_shuffle: the `shuffle=` to pass to `model.fit` (the pipeline shuffles).
        notes: why each value was chosen, for the run log.
    """

    platform: str
    strategy_name: str
    replicas: int
    workers: int
    precision_policy: str
    loss_scaling: bool
    steps_per_execution: int
    jit_compile: bool
    requires_gcs: bool
    fit_shuffle: bool = FIT_SHUFFLE
    notes: tuple = ()

    def global_batch_size(self, per_replica_batch_size):
        """Global batch = per-replica batch x replicas in sync.

        Args:
            per_replica_batch_size: examples each replica sees per step.

        Returns:
            The batch size one optimizer step consumes over all replicas.
        """
        _check_positive_int("per_replica_batch_size", per_replica_batch_size)
        return per_replica_batch_size * self.replicas

    def per_replica_batch_size(self, global_batch_size):
        """The per-replica share of `global_batch_size` (must divide evenly)."""
        _check_positive_int("global_batch_size", global_batch_size)
        if global_batch_size % self.replicas:
            raise ValueError(
                f"global_batch_size must be a multiple of the {self.replicas} replicas in sync "
                f"so every replica gets the same static batch shape. Received: "
                f"global_batch_size={global_batch_size}"
            )
        return global_batch_size // self.replicas

    def scaled_learning_rate(self, base_learning_rate, base_batch_size, global_batch_size, rule="linear"):
        """Scales a learning rate tuned at `base_batch_size` to `global_batch_size`.

        The linear rule (Goyal et al. 2017, "Accurate, large minibatch SGD"):
        `lr = base_lr * global_batch / base_batch`; it holds for SGD-style
        optimisers up to a few thousand examples per step, best with a warm-up.
        `"sqrt"` (`lr = base_lr * sqrt(global/base)`) is the gentler rule often used
        with Adam; `"none"` keeps the base rate.

        Args:
            base_learning_rate: rate tuned at `base_batch_size`.
            base_batch_size: global batch size the rate was tuned at.
            global_batch_size: global batch size of this run.
            rule: `"linear"`, `"sqrt"` or `"none"`. Defaults to `"linear"`.

        Returns:
            The scaled learning rate (float).
        """
        return scale_learning_rate(base_learning_rate, base_batch_size, global_batch_size, rule)


def scale_learning_rate(base_learning_rate, base_batch_size, global_batch_size, rule="linear"):
    """See `PlatformDefaults.scaled_learning_rate`."""
    if rule not in LEARNING_RATE_RULES:
        raise ValueError(
            f"Unknown learning-rate scaling rule. Allowed values: {', '.join(LEARNING_RATE_RULES)}. "
            f"Received: rule={rule!r}"
        )
    if not (isinstance(base_learning_rate, (int, float)) and base_learning_rate > 0):
        raise ValueError(f"base_learning_rate must be > 0. Received: base_learning_rate={base_learning_rate!r}")
    _check_positive_int("base_batch_size", base_batch_size)
    _check_positive_int("global_batch_size", global_batch_size)
    ratio = global_batch_size / base_batch_size
    factor = {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[rule]
    return float(base_learning_rate) * factor


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer. Received: {name}={value!r}")


def platform_defaults(strategy=None, **overrides):
    """Per-platform training defaults for `strategy`, with recipe overrides applied.

    Args:
        strategy: a `tf.distribute.Strategy`; `None` means the current one.
            Defaults to `None`.
        **overrides: any of `precision_policy`, `steps_per_execution`,
            `jit_compile` (`None`, or `"auto"` for `jit_compile`, keeps the
            platform default). Combinations known to
            fail on this platform raise a `ValueError` that says why.

    Returns:
        A `PlatformDefaults`.

    Example:

    >>> defaults = platform_defaults(tf.distribute.get_strategy())
    >>> defaults.precision_policy, defaults.jit_compile
    ('float32', False)
    """
    strategy = strategy or tf.distribute.get_strategy()
    platform = platform_of(strategy)
    replicas = int(strategy.num_replicas_in_sync)
    multi_device = is_multi_device_mirrored(strategy)
    notes = []
    if platform == "tpu":
        policy, steps, jit = "mixed_bfloat16", TPU_STEPS_PER_EXECUTION, True
        notes.append(
            f"TPU: bfloat16 compute with float32 variables, {steps} steps per compiled call, XLA."
        )
    elif platform == "gpu":
        policy, steps, jit = "mixed_float16", 1, not multi_device
        notes.append("GPU: float16 compute with dynamic loss scaling.")
        if multi_device:
            notes.append("Several GPUs in one process: jit_compile off (replica device error).")
    else:
        policy, steps, jit = "float32", 1, False
        notes.append("CPU: float32; XLA off (measured 2-17x slower per step on CPU).")
    if multi_device or isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        notes.append("Mirrored replicas: steps_per_execution 1 (keras-team/keras#19246).")
    if replicas > 1:
        notes.append(f"Global batch = per-replica batch x {replicas} replicas.")

    allowed = {"precision_policy", "steps_per_execution", "jit_compile"}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ValueError(
            f"Unknown platform override. Allowed values: {', '.join(sorted(allowed))}. "
            f"Received: {', '.join(f'{key}={overrides[key]!r}' for key in unknown)}"
        )
    overrides = {key: value for key, value in overrides.items() if value is not None}
    if "precision_policy" in overrides:
        policy = overrides["precision_policy"]
        if policy not in PRECISION_POLICIES:
            raise ValueError(
                f"Unknown precision_policy. Allowed values: {', '.join(PRECISION_POLICIES)}. "
                f"Received: precision_policy={policy!r}"
            )
        notes.append(f"precision_policy={policy} set by the recipe.")
    if "steps_per_execution" in overrides:
        steps = overrides["steps_per_execution"]
        _check_positive_int("steps_per_execution", steps)
        notes.append(f"steps_per_execution={steps} set by the recipe.")
    if overrides.get("jit_compile") == "auto":
        overrides.pop("jit_compile")
    if "jit_compile" in overrides:
        jit = overrides["jit_compile"]
        if not isinstance(jit, bool):
            raise ValueError(f"jit_compile must be true, false or 'auto'. Received: jit_compile={jit!r}")
        notes.append(f"jit_compile={jit} set by the recipe.")
    check_compile_settings(strategy, steps_per_execution=steps, jit_compile=jit)
    return PlatformDefaults(
        platform=platform,
        strategy_name=type(strategy).__name__,
        replicas=replicas,
        workers=num_workers(strategy),
        precision_policy=policy,
        loss_scaling=policy == "mixed_float16",
        steps_per_execution=steps,
        jit_compile=jit,
        requires_gcs=platform == "tpu",
        notes=tuple(notes),
    )


def check_compile_settings(strategy, steps_per_execution=1, jit_compile=False):
    """Refuses `compile` settings known to fail under `strategy` on this stack.

    Under `MirroredStrategy` over several devices and under
    `MultiWorkerMirroredStrategy`, `steps_per_execution > 1` fails ("You must feed a
    value for placeholder tensor 'while/.../Placeholder'", keras-team/keras#19246,
    reproduced here with 2 logical CPUs and with 2 workers on localhost).
    `MirroredStrategy` over several devices also fails with `jit_compile=True`
    ("Trying to access resource ... located in device CPU:1 from device CPU:0").

    Args:
        strategy: a `tf.distribute.Strategy`.
        steps_per_execution: the value for `model.compile`. Defaults to `1`.
        jit_compile: the value for `model.compile`. Defaults to `False`.

    Raises:
        ValueError: for a combination known to fail, saying what works instead.
    """
    multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    if not (multi_worker or is_multi_device_mirrored(strategy)):
        return
    where = (
        "MultiWorkerMirroredStrategy"
        if multi_worker
        else f"MirroredStrategy over {len(strategy.extended.worker_devices)} devices in one process"
    )
    if steps_per_execution != 1:
        raise ValueError(
            f"steps_per_execution > 1 fails under {where} on Keras 3 (placeholder error, "
            "keras-team/keras#19246); use steps_per_execution=1. "
            f"Received: steps_per_execution={steps_per_execution!r}"
        )
    if jit_compile is True and not multi_worker:
        raise ValueError(
            f"jit_compile=True fails under {where} ('Trying to access resource ... "
            "replica_1' on another device); use jit_compile=False. "
            f"Received: jit_compile={jit_compile!r}"
        )


# Keras layers whose TensorFlow ops (ImageProjectiveTransformV3, dynamic ranges) have
# no XLA kernel: a model holding one cannot compile with jit_compile=True nor on a
# TPU ("Detected unsupported operations when trying to compile graph", reproduced
# here on CPU XLA in float32 and bfloat16; under bf16 on TPU, keras-team/keras#17508).
XLA_INCOMPATIBLE_LAYERS = (
    "RandomRotation",
    "RandomZoom",
    "RandomTranslation",
    "RandomShear",
    "RandomPerspective",
    "RandomElasticTransform",
    "RandAugment",
)


def check_layers_for_xla(model):
    """Refuses a model that cannot compile under XLA (TPU, `jit_compile=True`).

    Args:
        model: a Keras model; nested models are searched too.

    Raises:
        ValueError: naming each layer of `XLA_INCOMPATIBLE_LAYERS` found, with
            the XLA-clean replacement.
    """
    found = [
        f"{type(layer).__name__} {layer.name!r}"
        for layer in _walk_layers(model)
        if type(layer).__name__ in XLA_INCOMPATIBLE_LAYERS
    ]
    if found:
        raise ValueError(
            "The model cannot compile under XLA (TPU or jit_compile=True): these Keras "
            "augmentation layers use TensorFlow ops without an XLA kernel. Use "
            "kmedimg.layers.MedicalAugmentation (one float32 affine warp that compiles "
            "under XLA and bfloat16) or augment in tf.data instead. "
            f"Received: layers=[{', '.join(found)}]"
        )


def _walk_layers(layer):
    for child in getattr(layer, "layers", ()):
        yield child
        yield from _walk_layers(child)


def check_paths_for_tpu(strategy, **paths):
    """On a TPU, refuses local paths for data, checkpoints and run directories.

    TPU workers (TPU VM pods, TPU nodes) run the input pipeline and write
    checkpoints on hosts that do not see this machine's disk, so every path they
    touch must be a `gs://` URL. This check runs before any training.

    Args:
        strategy: a `tf.distribute.Strategy`, or the platform name (`"tpu"`).
            Non-TPU strategies accept any path.
        **paths: named paths, e.g. `data="gs://bucket/ds", run_dir="gs://bucket/runs"`;
            `None` values are skipped.

    Raises:
        ValueError: naming every local path.

    Example:

    >>> check_paths_for_tpu("cpu", data="/home/me/data")  # fine off TPU
    """
    on_tpu = strategy == "tpu" if isinstance(strategy, str) else is_tpu_strategy(strategy)
    if not on_tpu:
        return
    local = {
        name: str(path)
        for name, path in paths.items()
        if path is not None and not str(path).startswith("gs://")
    }
    if local:
        listed = ", ".join(f"{name}={path!r}" for name, path in local.items())
        raise ValueError(
            "TPU workers read only gs:// paths (they cannot see this machine's disk): "
            f"{', '.join(local)} {'is a local path' if len(local) == 1 else 'are local paths'}. "
            f"{_GCS_HINT} Received: {listed}"
        )


def evaluation_dataset(dataset):
    """Makes a one-pass evaluation dataset safe to hand to `fit`/`evaluate` on any strategy.

    Keras distributes a plain dataset with tf.data's AUTO autoshard policy, which
    shards by file across workers: with fewer files than workers it fails ("Could not
    apply FILE based sharding: the dataset only has 1 file(s)") or leaves a worker
    without data. DATA sharding has every worker read the files and keep its share
    of the batches, which works for any file count. No effect on a single worker.

    Args:
        dataset: a `tf.data.Dataset` (e.g. `pipeline.load(..., training=False)`).

    Returns:
        The dataset with `auto_shard_policy=DATA`.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def distribute_dataset(strategy, dataset_fn):
    """Builds one input pipeline per worker via `distribute_datasets_from_function`.

    Args:
        strategy: the `tf.distribute.Strategy`.
        dataset_fn: callable `(input_context) -> tf.data.Dataset` batched at
            `input_context.get_per_replica_batch_size(global_batch_size)` and
            sharded with `input_context.input_pipeline_id` (what
            `kmedimg.data.pipeline.load(..., input_context=...)` does).

    Returns:
        A distributed dataset for `model.fit`; under the default strategy, the
        plain dataset.
    """
    if not tf.distribute.has_strategy() and strategy is tf.distribute.get_strategy():
        return dataset_fn(tf.distribute.InputContext())
    return strategy.distribute_datasets_from_function(dataset_fn)
