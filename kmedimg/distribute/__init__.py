"""One strategy selector and the per-platform training defaults.

`get_strategy` returns the `tf.distribute.Strategy` a run trains under (TPU, GPUs,
several workers or the default CPU strategy) and logs what it found and why;
`platform_defaults` gives the precision policy, `steps_per_execution`, `jit_compile`
and batch arithmetic that suit that strategy; `check_paths_for_tpu` stops a TPU run
that would read or write local files before it trains.

Known failures of the TF 2.21 / Keras 3.15 stack and what kmedimg does about each
(see `tpu/README.md`, "Known failures"):

- `model.fit` under `MultiWorkerMirroredStrategy` (keras-team/keras#20585): fixed by
  `kmedimg.distribute._keras_patches`, applied by `get_strategy("multiworker")`.
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

from kmedimg.distribute.checks import (
    XLA_INCOMPATIBLE_LAYERS, check_layers_for_xla, check_paths_for_tpu, tpu_sees_local_disk,
)
from kmedimg.distribute.datasets import distribute_dataset, evaluation_dataset
from kmedimg.distribute.defaults import (
    FIT_SHUFFLE, LEARNING_RATE_RULES, PlatformDefaults, scale_learning_rate,
)
from kmedimg.distribute.platforms import (
    PRECISION_POLICIES, TPU_STEPS_PER_EXECUTION, check_compile_settings, is_multi_device_mirrored,
    is_tpu_strategy, num_workers, platform_defaults, platform_of,
)
from kmedimg.distribute.strategy import STRATEGY_KINDS, get_strategy
from kmedimg.distribute.tf_config import ClusterSpec, parse_tf_config

__all__ = [
    "FIT_SHUFFLE", "LEARNING_RATE_RULES", "PRECISION_POLICIES", "STRATEGY_KINDS",
    "TPU_STEPS_PER_EXECUTION", "XLA_INCOMPATIBLE_LAYERS", "ClusterSpec", "PlatformDefaults",
    "check_compile_settings", "check_layers_for_xla", "check_paths_for_tpu",
    "distribute_dataset", "evaluation_dataset", "get_strategy", "is_multi_device_mirrored",
    "is_tpu_strategy", "num_workers", "parse_tf_config", "platform_defaults", "platform_of",
    "scale_learning_rate", "tpu_sees_local_disk",
]
