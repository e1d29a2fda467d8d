"""Run a recipe end to end into a run directory.

`run(config)` reads the dataset's manifest, builds the model inside the strategy's
scope (`kmedimg.distribute`), runs the recipe's stages (each stage sets which blocks
train, recompiles and fits), and writes:

```
run_dir/
  config.yaml                 the resolved configuration
  history.csv                 one row per epoch over all stages (stage, epoch, lr, metrics)
  logs/<stage>/               TensorBoard logs
  checkpoints/best.weights.h5 best epoch by `training.monitor` (default val AUC)
  model.keras                 the model with the best weights (takes raw pixels)
  metrics.json                validation and test metrics with bootstrap intervals
  state.json, backup/         resume state (removed parts once a stage completes)
```

Runs are reproducible with a seed: `keras.utils.set_random_seed`, TensorFlow op
determinism and a seeded, ordered input pipeline. They are preemption-safe: Keras
`BackupAndRestore` saves weights and optimizer state after every epoch, kmedimg adds
what it does not keep (random-generator states of dropout/augmentation layers, the
data position, early-stopping and plateau state, the best value so far), so a run that
is killed and started again with the same `run_dir` ends with the same weights as an
uninterrupted one.

Example:

```python
from kmedimg.config import load_config
from kmedimg.training import run

result = run(load_config("recipes/quickstart.yaml", ["data.path=/tmp/phantoms"]))
result.metrics["test"]["metrics"]["roc_auc"]
```
"""

from kmedimg.training.checkpoints import read_history
from kmedimg.training.command import (
    add_train_command, format_table, metric_with_interval, summary_rows,
)
from kmedimg.training.feature_cache import feature_cache_plan, split_at_head
from kmedimg.training.runner import (
    PreparedData, RunResult, build_model, evaluate_splits, get_strategy, initial_weights,
    num_outputs, platform_settings, prepare_data, prepare_stage, run, run_stages,
)
from kmedimg.training.stages import (
    apply_stage, block_lr_multipliers, class_weights, make_loss, make_metrics, make_schedule,
    set_batchnorm_momentum, stage_layout,
)

__all__ = [
    "PreparedData", "RunResult", "add_train_command", "apply_stage", "block_lr_multipliers",
    "build_model", "class_weights", "evaluate_splits", "feature_cache_plan", "format_table",
    "get_strategy", "initial_weights", "make_loss", "make_metrics", "make_schedule",
    "metric_with_interval", "num_outputs", "platform_settings", "prepare_data",
    "prepare_stage", "read_history", "run", "run_stages", "set_batchnorm_momentum",
    "split_at_head", "stage_layout", "summary_rows",
]
