"""`PlatformDefaults`: the training settings that suit one platform."""

import dataclasses
import math

LEARNING_RATE_RULES = ("linear", "sqrt", "none")

# Keras ignores `shuffle` for tf.data input and warns on every fit; the pipeline
# shuffles its own records, so training passes this.
FIT_SHUFFLE = False


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
        check_positive_int("per_replica_batch_size", per_replica_batch_size)
        return per_replica_batch_size * self.replicas

    def per_replica_batch_size(self, global_batch_size):
        """The per-replica share of `global_batch_size` (must divide evenly)."""
        check_positive_int("global_batch_size", global_batch_size)
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
    check_positive_int("base_batch_size", base_batch_size)
    check_positive_int("global_batch_size", global_batch_size)
    ratio = global_batch_size / base_batch_size
    factor = {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[rule]
    return float(base_learning_rate) * factor


def check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer. Received: {name}={value!r}")
