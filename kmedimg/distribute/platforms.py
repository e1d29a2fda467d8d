"""Which platform a strategy runs on, and `platform_defaults` for it."""

import tensorflow as tf

from kmedimg.distribute.defaults import PlatformDefaults, check_positive_int

PRECISION_POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")

# One compiled call runs this many steps on a TPU, amortising the host round trip.
TPU_STEPS_PER_EXECUTION = 32


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

    policy, steps, jit = _apply_overrides(overrides, policy, steps, jit, notes)
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


def _apply_overrides(overrides, policy, steps, jit, notes):
    """`(policy, steps, jit)` with the recipe's overrides checked and applied (noted)."""
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
        check_positive_int("steps_per_execution", steps)
        notes.append(f"steps_per_execution={steps} set by the recipe.")
    if overrides.get("jit_compile") == "auto":
        overrides.pop("jit_compile")
    if "jit_compile" in overrides:
        jit = overrides["jit_compile"]
        if not isinstance(jit, bool):
            raise ValueError(f"jit_compile must be true, false or 'auto'. Received: jit_compile={jit!r}")
        notes.append(f"jit_compile={jit} set by the recipe.")
    return policy, steps, jit


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
