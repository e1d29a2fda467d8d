"""Train a recipe's stages under a distribution strategy into a run directory.

`Trainer(config).fit()` (or `run(config)`) reads the dataset's manifest, builds the
model inside the strategy's scope (`kmedimg.distribute`), runs the recipe's stages
(each stage sets which blocks train, recompiles and fits), and writes through
`kmedimg.core.run_directory.RunDirectory`:

```
run_dir/
  config.yaml                 the resolved configuration (data.path absolute)
  history.csv                 one row per epoch over all stages (stage, epoch, lr, metrics)
  logs/<stage>/               TensorBoard logs
  checkpoints/best.weights.h5 best epoch by `training.monitor` (default val AUC), and
  checkpoints/best.json       the record of which epoch it holds
  model.keras                 the model with the best weights (takes raw pixels)
  metrics.json                the training summary (stages, best epoch, which epoch
                              model.keras holds, parameters, notes)
  state.json, backup/         resume state (`ResumeState`; a stage's backup is removed
                              once it completes)
```

Training stops there: `kmedimg.runs.train(config)` trains, then evaluates the
validation and test splits with bootstrap intervals into `metrics.json` (what
`kmedimg train` runs).

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
from kmedimg.training import Trainer

result = Trainer(load_config("recipes/quickstart.yaml", ["data.path=/tmp/phantoms"])).fit()
result.metrics["best"]["value"]
```
"""

from kmedimg.training.build import build_model, get_strategy, initial_weights, platform_settings
from kmedimg.training.datasets import (
    PreparedData, num_outputs, prepare_data, read_training_manifest, split_dataset,
)
from kmedimg.training.feature_cache import feature_cache_plan, split_at_head
from kmedimg.training.resume_state import ResumeState
from kmedimg.training.run_result import RunResult
from kmedimg.training.stage_loop import prepare_stage, run_stages
from kmedimg.training.stages import (
    apply_stage, block_lr_multipliers, class_weights, make_loss, make_metrics, make_schedule,
    set_batchnorm_momentum, stage_layout,
)
from kmedimg.training.trainer import Trainer, run

__all__ = [
    "PreparedData", "ResumeState", "RunResult", "Trainer", "apply_stage",
    "block_lr_multipliers", "build_model", "class_weights", "feature_cache_plan",
    "get_strategy", "initial_weights", "make_loss", "make_metrics", "make_schedule",
    "num_outputs", "platform_settings", "prepare_data", "prepare_stage",
    "read_training_manifest", "run", "run_stages", "set_batchnorm_momentum", "split_at_head",
    "split_dataset", "stage_layout",
]
