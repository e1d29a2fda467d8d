"""One stage's compile (`prepare_stage`) and the plain loop over a recipe's stages."""

from kmedimg.optimizers import make_optimizer
from kmedimg.training.build import platform_settings
from kmedimg.training.datasets import read_training_manifest, steps_per_epoch as epoch_steps
from kmedimg.training.stages import (
    apply_stage, block_lr_multipliers, make_loss, make_metrics, make_schedule,
)


def prepare_stage(model, stage, config, steps_per_epoch=None, task=None, compile_model=None):
    """Sets what trains in `stage` and compiles for it (a new optimizer every stage).

    Args:
        model: the classifier.
        stage: a `recipes.Stage`.
        config: the `RecipeConfig` (optimizer, loss and regularisation settings).
        steps_per_epoch: for the cosine schedule; `None` derives it from the config
            and manifest. Defaults to `None`.
        task: the dataset's task; `None` reads it from the manifest. Defaults to `None`.
        compile_model: the model to compile (the head model when features are
            cached); `None` compiles `model`. Defaults to `None`.

    Returns:
        The `apply_stage` layout dict.
    """
    training = config.training
    if steps_per_epoch is None or task is None:
        manifest = read_training_manifest(config)
        steps_per_epoch = steps_per_epoch or epoch_steps(config, manifest)
        task = task or manifest.task
    layout = apply_stage(model, stage)
    settings = platform_settings(config)
    optimizer = make_optimizer(
        stage.optimizer or training.optimizer,
        make_schedule(stage, steps_per_epoch),
        weight_decay=training.weight_decay,
        lr_multipliers=block_lr_multipliers(model, stage),
    )
    outputs = int(model.outputs[0].shape[-1])
    (compile_model or model).compile(
        optimizer=optimizer,
        loss=make_loss(task, training),
        metrics=make_metrics(task, outputs),
        steps_per_execution=settings.steps_per_execution,
        jit_compile=settings.jit_compile,
    )
    return layout


def run_stages(model, recipe, config, x, validation_data=None, steps_per_epoch=None,
               validation_steps=None, callbacks=None, verbose=0, **fit_kwargs):
    """Runs every stage of `recipe` on `model` with the given data (no run directory).

    Each stage applies its trainable blocks, recompiles and fits; the `callbacks` are
    passed to every stage's `fit`. This is the plain loop `Trainer` and the tuner
    share; `Trainer` adds checkpoints, resumption and feature caching.

    Returns:
        A list of `keras.callbacks.History`, one per stage.
    """
    histories = []
    for stage in recipe.stages:
        prepare_stage(model, stage, config, steps_per_epoch=steps_per_epoch)
        histories.append(model.fit(
            x, validation_data=validation_data, epochs=stage.epochs,
            steps_per_epoch=steps_per_epoch, validation_steps=validation_steps,
            callbacks=list(callbacks or []), shuffle=False, verbose=verbose, **fit_kwargs,
        ))
    return histories


def stage_report(stage, layout, plan, plan_reason, resume_epoch):
    """The stage's entry of `metrics.json["stages"]` (`epochs_run` is added at its end)."""
    return {
        "name": stage.name,
        "epochs": stage.epochs,
        "learning_rate": stage.learning_rate,
        "schedule": stage.schedule,
        "freeze_depth": stage.freeze_depth,
        "frozen_blocks": layout["frozen_blocks"],
        "num_blocks": layout["num_blocks"],
        "trainable_blocks": layout["trainable_blocks"],
        "trainable_params": layout["trainable_params"],
        "train_batchnorm": stage.train_batchnorm,
        "block_lr_decay": stage.block_lr_decay,
        "cached_features": bool(plan),
        "cache_note": plan_reason if stage.cache_features else None,
        "resumed_after_epoch": resume_epoch,
    }
