"""`run(config)`: a recipe end to end into a run directory, and its building blocks."""

import dataclasses
import datetime
import logging
import math
import time

import keras
import tensorflow as tf

from kmedimg import models
from kmedimg import recipes as recipes_lib
from kmedimg.config import RecipeConfig, save_config
from kmedimg.optimizers import make_optimizer
from kmedimg.training.checkpoints import (
    BEST_NAME, HISTORY_NAME, METRICS_NAME, MODEL_NAME, STATE_NAME, BestCheckpoint,
    HistoryWriter, ResumableBackup, ResumableEarlyStopping, ResumableReduceLROnPlateau,
    backup_epoch, join_path, load_model_state, read_history, read_json, save_model_state,
    write_json,
)
from kmedimg.training.feature_cache import compute_features, feature_cache_plan, feature_dataset
from kmedimg.training.stages import (
    RANDOM_INIT_BATCHNORM_MOMENTUM, apply_stage, block_lr_multipliers, class_weights,
    make_loss, make_metrics, make_schedule, sample_weight_fn, set_batchnorm_momentum,
)

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class RunResult:
    """What `run` produced.

    Attributes:
        run_dir: the run directory.
        history: one dict per epoch (the rows of `history.csv`).
        metrics: the content of `metrics.json`.
        model_path: path of `model.keras`.
    """

    run_dir: str
    history: list
    metrics: dict
    model_path: str


def get_strategy(config):
    """The `tf.distribute.Strategy` of `config.distribute` (see `kmedimg.distribute`)."""
    from kmedimg import distribute

    return distribute.get_strategy(config.distribute.kind, config.distribute.tpu_address)


def platform_settings(config, strategy=None):
    """`kmedimg.distribute.platform_defaults` with the recipe's overrides applied."""
    from kmedimg import distribute

    strategy = strategy or tf.distribute.get_strategy()
    jit = config.training.jit_compile
    return distribute.platform_defaults(
        strategy,
        precision_policy=config.distribute.precision,
        steps_per_execution=config.training.steps_per_execution,
        jit_compile=None if jit == "auto" else jit,
    )


def _manifest(config):
    from kmedimg.data import pipeline

    if not config.data.path:
        raise ValueError(
            "No dataset: set `data.path` in the recipe or pass --data DIR. "
            "Received: data.path=None"
        )
    manifest = pipeline.read_manifest(config.data.path)
    for key in ("train_split", "val_split"):
        split = getattr(config.data, key)
        if split not in manifest.splits or not manifest.splits[split].count:
            raise ValueError(
                f"{config.data.path}: no (or an empty) split {split!r}; available: "
                f"{sorted(manifest.splits)}. Write the dataset with a validation fraction or "
                f"set data.{key}. Received: data.{key}={split!r}"
            )
    return manifest


def num_outputs(manifest):
    """Model outputs for a dataset: 1 for binary, the class count otherwise."""
    return 1 if manifest.task == "binary" else manifest.num_classes


@dataclasses.dataclass
class PreparedData:
    """The datasets of a recipe, ready for `fit` (see `prepare_data`).

    Attributes:
        manifest: the dataset's `Manifest`.
        task: `"binary"`, `"multiclass"` or `"multilabel"`.
        num_classes: model outputs (1 for binary, else the class count).
        input_shape: `(height, width, channels)` of the model input.
        train: the training dataset (repeating, shuffled, with sample weights when
            classes are weighted), distributed over the strategy's replicas.
        val: the validation dataset (one pass).
        steps_per_epoch: training steps per epoch.
        validation_steps: `None` (the whole split) or the configured value.
        class_weights: per-class weights or `None`.
        notes: sentences for the run log.
    """

    manifest: object
    task: str
    num_classes: int
    input_shape: tuple
    train: object
    val: object
    steps_per_epoch: int
    validation_steps: object
    class_weights: object
    notes: list


def _steps_per_epoch(config, manifest):
    if config.training.steps_per_epoch:
        return config.training.steps_per_epoch
    count = manifest.splits[config.data.train_split].count
    if count < config.data.batch_size:
        raise ValueError(
            f"{config.data.path}: split {config.data.train_split!r} has {count} images, fewer "
            f"than one batch; lower data.batch_size. Received: data.batch_size="
            f"{config.data.batch_size}"
        )
    return count // config.data.batch_size


def _train_dataset_fn(config, manifest, seed, skip_batches, weights):
    from kmedimg.data import pipeline

    image_size = _image_size(config, manifest)
    channels = config.data.channels or manifest.channels

    def dataset_fn(input_context=None):
        dataset = pipeline.load(
            manifest, config.data.train_split, image_size=image_size,
            batch_size=config.data.batch_size, training=True, channels=channels,
            deterministic=True, seed=seed, input_context=input_context,
            **config.data.load_options,
        )
        if skip_batches:
            dataset = dataset.skip(skip_batches)
        if weights is not None:
            dataset = dataset.map(sample_weight_fn(weights, manifest.task))
        return dataset

    return dataset_fn


def _eval_dataset(config, manifest, split):
    from kmedimg.data import pipeline

    dataset = pipeline.load(
        manifest, split, image_size=_image_size(config, manifest),
        batch_size=config.data.batch_size, training=False,
        channels=config.data.channels or manifest.channels, deterministic=True,
        **config.data.load_options,
    )
    # A known length lets Keras end validation without an "input ran out of data"
    # warning (the interleaved record files have unknown cardinality).
    batches = math.ceil(manifest.splits[split].count / config.data.batch_size)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(batches))
    # Keras distributes this dataset itself; DATA sharding works with fewer files
    # than workers (AUTO/FILE fails there under MultiWorkerMirroredStrategy).
    from kmedimg import distribute

    return distribute.evaluation_dataset(dataset)


def _distribute(strategy, dataset_fn):
    from kmedimg import distribute

    return distribute.distribute_dataset(strategy, dataset_fn)


def prepare_data(config, strategy=None, seed_offset=0, skip_batches=0):
    """Reads the manifest and builds the training and validation datasets.

    The training order is a deterministic function of `training.seed + seed_offset`;
    `skip_batches` continues that order after a resumed epoch.

    Returns:
        A `PreparedData`.
    """
    strategy = strategy or tf.distribute.get_strategy()
    manifest = _manifest(config)
    weights, note = class_weights(manifest, config.data.train_split, config.training)
    height, width = _image_size(config, manifest)
    channels = config.data.channels or manifest.channels
    train = _distribute(strategy, _train_dataset_fn(
        config, manifest, config.training.seed + seed_offset, skip_batches, weights))
    return PreparedData(
        manifest=manifest,
        task=manifest.task,
        num_classes=num_outputs(manifest),
        input_shape=(height, width, channels),
        train=train,
        val=_eval_dataset(config, manifest, config.data.val_split),
        steps_per_epoch=_steps_per_epoch(config, manifest),
        validation_steps=config.training.validation_steps,
        class_weights=weights,
        notes=[note],
    )


def initial_weights(config, recipe):
    """`(weights for build_classifier, notes)`: what the recipe starts from."""
    weights = config.model.weights
    if recipe.init == "random":
        notes = []
        if weights:
            notes.append(
                f"recipe {recipe.name} starts from random weights; model.weights={weights!r} "
                "is not used"
            )
        return None, notes
    if weights is None:
        return None, [
            f"WARNING: recipe {recipe.name} expects pretrained weights but model.weights is "
            "null: the backbone starts from random weights"
        ]
    if weights == "imagenet":
        return weights, ["backbone initialised from ImageNet weights"]
    return weights, [f"backbone initialised from {weights}"]


def build_model(config, num_classes, input_shape, task="binary", recipe=None, dtype_policy=None):
    """Builds the classifier of `config` with the recipe's initial weights.

    Call inside the strategy's scope.

    Args:
        config: a `RecipeConfig`.
        num_classes: model outputs (1 for binary).
        input_shape: `(height, width, channels)`.
        task: the dataset's task. Defaults to `"binary"`.
        recipe: the `Recipe` (decides random vs pretrained init); `None` builds the one
            named in `config`. Defaults to `None`.
        dtype_policy: policy when `model.dtype_policy` is not set (the platform's).
            Defaults to `None`.

    Returns:
        A `keras.Model` taking raw pixels.
    """
    recipe = recipe or recipes_lib.get_recipe(config.recipe.name, **config.recipe.options)
    weights, notes = initial_weights(config, recipe)
    model = models.build_classifier(
        config.model.backbone,
        num_classes,
        tuple(input_shape),
        weights=weights,
        head=config.model.head,
        dropout=config.model.dropout,
        hidden_units=config.model.hidden_units,
        task=task,
        augmentation=config.model.augmentation,
        dtype_policy=config.model.dtype_policy or dtype_policy,
        input_dtype=config.model.input_dtype,
        grey_weights=config.model.grey_weights,
        # BatchNormalization follows the training flag; each stage decides per layer
        # (frozen blocks and `train_batchnorm=False` set BN non-trainable, which
        # Keras 3 runs in inference mode).
        backbone_training="follow",
    )
    momentum = config.training.batchnorm_momentum
    if momentum is None and recipe.init == "random":
        momentum = RANDOM_INIT_BATCHNORM_MOMENTUM
    if momentum is not None:
        count = set_batchnorm_momentum(model, momentum)
        if count:
            notes.append(f"BatchNormalization momentum {momentum} ({count} layers)")
    for note in notes:
        logger.warning(note) if note.startswith("WARNING") else logger.info(note)
    model.kmedimg_init_notes = notes
    return model



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
    manifest = None
    if steps_per_epoch is None or task is None:
        manifest = _manifest(config)
        steps_per_epoch = steps_per_epoch or _steps_per_epoch(config, manifest)
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
    passed to every stage's `fit`. This is the plain loop `run` and the tuner share;
    `run` adds checkpoints, resumption, feature caching and evaluation.

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


def _default_run_dir(config):
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return join_path("runs", f"{config.recipe.name}-{stamp}")


def _monitor_mode(training):
    if training.monitor_mode != "auto":
        return training.monitor_mode
    return "min" if "loss" in training.monitor else "max"


def _image_size(config, manifest):
    size = config.data.image_size
    if size is None:
        if not (manifest.height and manifest.width):
            raise ValueError(
                f"{manifest.directory}: the records have different sizes; set "
                "`data.image_size`. Received: data.image_size=None"
            )
        return (int(manifest.height), int(manifest.width))
    if isinstance(size, int):
        return (size, size)
    return (int(size[0]), int(size[-1]))


def _check_resumable(run_dir, config):
    """Refuses to resume a run directory written by a different configuration."""
    stored_path = join_path(run_dir, "config.yaml")
    if not (tf.io.gfile.exists(stored_path) and tf.io.gfile.exists(join_path(run_dir, STATE_NAME))):
        return
    from kmedimg.config import read_yaml

    stored = read_yaml(stored_path) or {}
    ignore = {("training", "verbose")}
    for section, values in config.to_dict().items():
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            old = (stored.get(section) or {}).get(key)
            if (section, key) not in ignore and old != value:
                raise ValueError(
                    f"{run_dir} holds a run with {section}.{key}={old!r}; resuming it with "
                    f"{section}.{key}={value!r} would mix two runs. Use another "
                    f"`training.run_dir` (--out) or delete {run_dir}. "
                    f"Received: {section}.{key}={value!r}"
                )


def evaluate_splits(model, config, manifest):
    """Validation and test metrics with bootstrap intervals (`kmedimg.evaluation`).

    The binary/multilabel operating point is chosen on the validation split
    (`evaluation.threshold_rule`) and applied to the test split; validation itself is
    reported at a fixed 0.5 (a threshold is never scored on the data that chose it).
    """
    from kmedimg.evaluation import metrics as metrics_lib
    from kmedimg.evaluation.evaluate import evaluate_model

    evaluation = config.evaluation
    task = manifest.task
    outputs = int(model.outputs[0].shape[-1])
    common = dict(class_names=list(manifest.class_names), n_bootstrap=evaluation.bootstrap,
                  confidence=evaluation.confidence, seed=config.training.seed)
    val_split, test_split = config.data.val_split, config.data.test_split
    if task == "multiclass":
        val_threshold = metrics_lib.Threshold.argmax()
    else:
        val_threshold = metrics_lib.Threshold.fixed(0.5, outputs)
    val_result, predictions = evaluate_model(
        model, _eval_dataset(config, manifest, val_split), task, threshold=val_threshold,
        split=val_split, return_predictions=True, **common)
    results = {"val": val_result}
    if task == "multiclass":
        threshold = val_threshold
    elif evaluation.threshold_rule == "fixed":
        value = 0.5 if evaluation.threshold_target is None else evaluation.threshold_target
        threshold = metrics_lib.Threshold.fixed(value, outputs)
    else:
        val = predictions[val_split]
        threshold = metrics_lib.choose_threshold(
            val.labels, val.probs, evaluation.threshold_rule, task=task,
            target=evaluation.threshold_target, split=val_split)
    if test_split in manifest.splits and manifest.splits[test_split].count:
        results["test"] = evaluate_model(
            model, _eval_dataset(config, manifest, test_split), task, threshold=threshold,
            split=test_split, **common)
    else:
        results["test"] = None
        results["test_note"] = f"no {test_split!r} split in the dataset; only validation reported"
    return results


def _with_run_dir(config):
    return dataclasses.replace(
        config,
        training=dataclasses.replace(
            config.training, run_dir=config.training.run_dir or _default_run_dir(config)
        ),
    )


def run(config, progress=True):
    """Runs `config`'s recipe and writes the run directory (see the module docstring).

    Running again with the same `training.run_dir` resumes where a killed run stopped
    (completed stages are skipped, the current stage restarts after its last finished
    epoch) and ends with the same weights as an uninterrupted run.

    Args:
        config: a `kmedimg.config.RecipeConfig`.
        progress: print stage headers and Keras progress bars. Defaults to `True`.

    Returns:
        A `RunResult`.
    """
    if not isinstance(config, RecipeConfig):
        raise ValueError(
            "`config` must be a kmedimg.config.RecipeConfig (use load_config(path)). "
            f"Received: config={type(config).__name__}"
        )
    started = time.time()
    config = _with_run_dir(config)
    training = config.training
    run_dir = training.run_dir
    say = print if progress else logger.info
    recipe = recipes_lib.get_recipe(config.recipe.name, **config.recipe.options)
    manifest = _manifest(config)

    strategy = get_strategy(config)
    from kmedimg import distribute

    distribute.check_paths_for_tpu(strategy, data=config.data.path, run_dir=run_dir)
    settings = platform_settings(config, strategy)

    tf.io.gfile.makedirs(join_path(run_dir, "checkpoints"))
    _check_resumable(run_dir, config)
    save_config(config, join_path(run_dir, "config.yaml"))
    state_path = join_path(run_dir, STATE_NAME)
    state = read_json(state_path) or {"completed": {}}
    write_json(state_path, state)
    history_path = join_path(run_dir, HISTORY_NAME)

    keras.utils.set_random_seed(training.seed)
    determinism_note = None
    if training.deterministic and settings.jit_compile:
        # Keras silently compiles without XLA once op determinism is on.
        determinism_note = (
            "op determinism not enabled: the step compiles with XLA (jit_compile), which "
            "Keras turns off under op determinism; seeds still fix data order and init"
        )
    elif training.deterministic:
        tf.config.experimental.enable_op_determinism()

    steps_per_epoch = _steps_per_epoch(config, manifest)
    weights, weight_note = class_weights(manifest, config.data.train_split, training)
    height, width = _image_size(config, manifest)
    input_shape = (height, width, config.data.channels or manifest.channels)
    with strategy.scope():
        model = build_model(config, num_outputs(manifest), input_shape, manifest.task,
                            recipe=recipe, dtype_policy=settings.precision_policy)
    if settings.jit_compile or settings.platform == "tpu":
        # Before any training: name the layers XLA cannot compile.
        distribute.check_layers_for_xla(model)
    notes = [weight_note, *settings.notes, *model.kmedimg_init_notes]
    if determinism_note:
        notes.append(determinism_note)
    for note in notes:
        say(f"[kmedimg] {note}")

    monitor = training.monitor
    mode = _monitor_mode(training)
    best_path = join_path(run_dir, BEST_NAME)
    history_rows = read_history(history_path)
    val_dataset = _eval_dataset(config, manifest, config.data.val_split)
    stage_reports = []
    epoch_offset = 0
    last_completed = None
    trained_here = False

    for index, stage in enumerate(recipe.stages):
        stage_backup = join_path(run_dir, "backup", stage.name)
        stage_end = join_path(run_dir, "backup", f"{stage.name}.end.weights.h5")
        done = state["completed"].get(stage.name)
        if done:
            epoch_offset += done["epochs_run"]
            stage_reports.append(done["report"])
            last_completed = stage.name
            continue
        if last_completed is not None and not trained_here:
            # Resuming: continue from where the previous, completed stage ended.
            load_model_state(
                model, join_path(run_dir, "backup", f"{last_completed}.end.weights.h5"))

        with strategy.scope():
            plan, plan_reason = feature_cache_plan(model, stage)
            train_model = plan[1] if plan else model
            layout = prepare_stage(model, stage, config, steps_per_epoch=steps_per_epoch,
                                   task=manifest.task, compile_model=train_model)
        resume_epoch = backup_epoch(stage_backup) if training.backup else 0
        report = {
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
        say(
            f"[kmedimg] stage {index + 1}/{len(recipe.stages)} {stage.name!r}: "
            f"{layout['frozen_blocks']}/{layout['num_blocks']} backbone blocks frozen, "
            f"{layout['trainable_params']:,} trainable parameters, lr {stage.learning_rate:g} "
            f"({stage.schedule}), {stage.epochs} epochs"
            + (f"; resuming after epoch {resume_epoch}" if resume_epoch else "")
        )
        if stage.cache_features:
            say(f"[kmedimg]   feature cache {'on' if plan else 'off'}: {plan_reason}")

        earlier_rows = [row for row in history_rows
                        if row["stage"] == stage.name and row["epoch"] < resume_epoch]
        scores = [row[monitor] for row in history_rows
                  if row.get(monitor) is not None
                  and (row["stage"] != stage.name or row["epoch"] < resume_epoch)]
        best_so_far = (max(scores) if mode == "max" else min(scores)) if scores else None
        callbacks = []
        if training.backup:
            callbacks.append(ResumableBackup(stage_backup))
        callbacks.append(HistoryWriter(history_path, stage.name, epoch_offset, resume_epoch,
                                        history_rows))
        callbacks.append(BestCheckpoint(model, best_path, monitor, mode, best_so_far))
        if training.early_stopping_patience is not None:
            callbacks.append(ResumableEarlyStopping(
                earlier_rows, monitor=monitor, mode=mode,
                patience=training.early_stopping_patience,
            ))
        if stage.schedule == "plateau":
            callbacks.append(ResumableReduceLROnPlateau(
                earlier_rows, monitor=monitor, mode=mode, factor=0.1, patience=2,
                min_lr=stage.learning_rate * 1e-3,
            ))
        if training.tensorboard:
            callbacks.append(keras.callbacks.TensorBoard(
                join_path(run_dir, "logs", stage.name), write_graph=False))

        skip = resume_epoch * steps_per_epoch
        seed = training.seed + 1000 * index
        if plan:
            feature_model, _ = plan
            say("[kmedimg]   computing the backbone features once ...")
            train_x, train_y = compute_features(
                feature_model, _eval_dataset(config, manifest, config.data.train_split))
            val_x, val_y = compute_features(feature_model, val_dataset)
            train_input = feature_dataset(train_x, train_y, config.data.batch_size, seed,
                                           weights, manifest.task, skip)
            validation = tf.data.Dataset.from_tensor_slices((val_x, val_y)).batch(
                config.data.batch_size)
        else:
            train_input = _distribute(
                strategy, _train_dataset_fn(config, manifest, seed, skip, weights))
            validation = val_dataset

        train_model.fit(
            train_input,
            epochs=stage.epochs,
            steps_per_epoch=steps_per_epoch,
            validation_data=validation,
            validation_steps=training.validation_steps,
            callbacks=callbacks,
            shuffle=False,
            verbose=training.verbose if progress else 0,
        )
        history_rows = read_history(history_path)
        report["epochs_run"] = sum(1 for row in history_rows if row["stage"] == stage.name)
        stage_reports.append(report)
        save_model_state(model, stage_end)
        state["completed"][stage.name] = {"epochs_run": report["epochs_run"], "report": report}
        write_json(state_path, state)
        if tf.io.gfile.exists(stage_backup):
            tf.io.gfile.rmtree(stage_backup)
        trained_here = True
        last_completed = stage.name
        epoch_offset += report["epochs_run"]

    best = None
    scored = [row for row in history_rows if row.get(monitor) is not None]
    if scored:
        best_row = (max if mode == "max" else min)(scored, key=lambda row: row[monitor])
        best = {"monitor": monitor, "value": best_row[monitor], "stage": best_row["stage"],
                "epoch": best_row["epoch"], "global_epoch": best_row["global_epoch"]}
    if training.restore_best and tf.io.gfile.exists(best_path):
        load_model_state(model, best_path)
    model_path = join_path(run_dir, MODEL_NAME)
    model.save(model_path)

    say("[kmedimg] evaluating ...")
    metrics = {
        "recipe": recipe.name,
        "backbone": config.model.backbone,
        "task": manifest.task,
        "class_names": list(manifest.class_names),
        "best": best,
        "evaluated_weights": "best" if training.restore_best and best else "last",
        "stages": stage_reports,
        "trainable_params": max((s["trainable_params"] for s in stage_reports), default=0),
        "total_params": int(model.count_params()),
        "steps_per_epoch": steps_per_epoch,
        "batch_size": config.data.batch_size,
        "seed": training.seed,
        "platform": settings.platform,
        "notes": notes,
        **evaluate_splits(model, config, manifest),
    }
    metrics["wall_time_seconds"] = round(time.time() - started, 2)
    write_json(join_path(run_dir, METRICS_NAME), metrics)
    return RunResult(run_dir=run_dir, history=history_rows, metrics=metrics, model_path=model_path)
