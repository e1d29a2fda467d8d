"""`train_and_evaluate(config)`: train a recipe, evaluate its splits, write `metrics.json`.

This is what `kmedimg train` runs: `kmedimg.training.Trainer` trains (resumably) into
the run directory, then the validation and test splits are evaluated with bootstrap
confidence intervals (`kmedimg.evaluation.evaluate_model`) and added to the training
summary in `metrics.json`.

Example:

```python
from kmedimg.config import load_config
from kmedimg.runs.train import train_and_evaluate

result = train_and_evaluate(load_config("recipes/quickstart.yaml", ["data.path=/tmp/phantoms"]))
result.metrics["test"]["metrics"]["roc_auc"]
```
"""

import dataclasses
import time

from kmedimg.core.run_directory import RunDirectory
from kmedimg.data import load
from kmedimg.evaluation import Threshold, choose_threshold, evaluate_model
from kmedimg.evaluation.inputs import model_input_spec
from kmedimg.training import Trainer


def train_and_evaluate(config, progress=True):
    """Trains `config`'s recipe, then evaluates it into the run's `metrics.json`.

    Running again with the same `training.run_dir` resumes where a killed run stopped
    (completed stages are skipped, the current stage restarts after its last finished
    epoch) and ends with the same weights as an uninterrupted run.

    Args:
        config: a `kmedimg.config.RecipeConfig`.
        progress: print stage headers and Keras progress bars. Defaults to `True`.

    Returns:
        A `kmedimg.training.RunResult` whose `metrics` also hold `val` and `test`.
    """
    started = time.time()
    trainer = Trainer(config, progress=progress)
    result = trainer.fit()
    trainer.say("[kmedimg] evaluating ...")
    metrics = {key: value for key, value in result.metrics.items()
               if key != "wall_time_seconds"}
    metrics.update(evaluate_splits(trainer.model, trainer.config, trainer.manifest))
    metrics["wall_time_seconds"] = round(time.time() - started, 2)
    RunDirectory(result.run_dir).write_json(RunDirectory.METRICS, metrics)
    return dataclasses.replace(result, metrics=metrics)


def evaluate_splits(model, config, manifest):
    """Validation and test metrics with bootstrap intervals (`kmedimg.evaluation`).

    The binary/multilabel operating point is chosen on the validation split
    (`evaluation.threshold_rule`), recorded as `operating_point` (what `kmedimg
    predict` decides with) and applied to the test split. Validation's own
    threshold-dependent metrics are computed at a fixed 0.5 and recorded as such; the
    summary table (`kmedimg.runs.tables.summary_rows`) shows only its threshold-free
    ones, since a threshold is never scored on the data that chose it.

    Args:
        model: the trained classifier.
        config: the run's `RecipeConfig`.
        manifest: the dataset's `Manifest`.

    Returns:
        `{"val": ..., "test": ..., "operating_point": Threshold dict}` (`test` is
        `None` with a `test_note` when the dataset has no test split).
    """
    evaluation = config.evaluation
    task = manifest.task
    outputs = int(model.outputs[0].shape[-1])
    common = dict(class_names=list(manifest.class_names), n_bootstrap=evaluation.bootstrap,
                  confidence=evaluation.confidence, seed=config.training.seed)
    val_split, test_split = config.data.val_split, config.data.test_split
    height, width, channels = model_input_spec(model)

    def records(split):
        # The reader `kmedimg evaluate` uses (shards in manifest order): the bootstrap
        # resamples by position, so the same order gives `evaluate` the same intervals.
        return load(manifest, split, image_size=(height, width), channels=channels,
                    batch_size=config.data.batch_size, with_ids=True)

    if task == "multiclass":
        val_threshold = Threshold.argmax()
    else:
        val_threshold = Threshold.fixed(0.5, outputs)
    val_result, predictions = evaluate_model(
        model, records(val_split), task, threshold=val_threshold,
        split=val_split, return_predictions=True, **common)
    results = {"val": val_result}
    if task == "multiclass":
        threshold = val_threshold
    elif evaluation.threshold_rule == "fixed":
        value = 0.5 if evaluation.threshold_target is None else evaluation.threshold_target
        threshold = Threshold.fixed(value, outputs)
    else:
        val = predictions[val_split]
        threshold = choose_threshold(
            val.labels, val.probs, evaluation.threshold_rule, task=task,
            target=evaluation.threshold_target, split=val_split)
    results["operating_point"] = threshold.to_dict()
    if test_split in manifest.splits and manifest.splits[test_split].count:
        results["test"] = evaluate_model(
            model, records(test_split), task, threshold=threshold,
            split=test_split, **common)
    else:
        results["test"] = None
        results["test_note"] = (
            f"no {test_split!r} split in the dataset, so the operating point chosen on "
            f"{val_split!r} is applied to nothing; only threshold-free validation metrics are "
            "shown. Re-convert with --test-fraction (e.g. 0.2) to get a test split.")
    return results
