"""The datasets of a recipe: manifest checks, training input per worker, evaluation input."""

import dataclasses
import math

import tensorflow as tf

from kmedimg import distribute
from kmedimg.data import pipeline
from kmedimg.training.stages import class_weights, sample_weight_fn


def read_training_manifest(config):
    """The dataset's `Manifest`, refusing a missing dataset or an empty train/val split."""
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


def image_size(config, manifest):
    """`(height, width)` of the model input: `data.image_size` or the records' size."""
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


def input_shape(config, manifest):
    """`(height, width, channels)` of the model input."""
    height, width = image_size(config, manifest)
    return (height, width, config.data.channels or manifest.channels)


def steps_per_epoch(config, manifest):
    """`training.steps_per_epoch`, or the full batches of the training split."""
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


def train_dataset(config, manifest, strategy, seed, skip_batches=0, weights=None):
    """The training input, one pipeline per worker (`distribute.distribute_dataset`).

    Args:
        config: the `RecipeConfig`.
        manifest: the dataset's `Manifest`.
        strategy: the `tf.distribute.Strategy`.
        seed: the shuffle seed: the order is a deterministic function of it.
        skip_batches: batches to skip (continues the order after a resumed epoch).
            Defaults to `0`.
        weights: per-class sample weights, or `None`. Defaults to `None`.

    Returns:
        A (distributed) dataset for `fit`.
    """
    size = image_size(config, manifest)
    channels = config.data.channels or manifest.channels

    def dataset_fn(input_context=None):
        dataset = pipeline.load(
            manifest, config.data.train_split, image_size=size,
            batch_size=config.data.batch_size, training=True, channels=channels,
            deterministic=True, seed=seed, input_context=input_context,
            **config.data.load_options,
        )
        if skip_batches:
            dataset = dataset.skip(skip_batches)
        if weights is not None:
            dataset = dataset.map(sample_weight_fn(weights, manifest.task))
        return dataset

    return distribute.distribute_dataset(strategy, dataset_fn)


def split_dataset(config, manifest, split):
    """One pass over `split` in order, for validation and evaluation."""
    dataset = pipeline.load(
        manifest, split, image_size=image_size(config, manifest),
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
    return distribute.evaluation_dataset(dataset)


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


def prepare_data(config, strategy=None, seed_offset=0, skip_batches=0):
    """Reads the manifest and builds the training and validation datasets.

    The training order is a deterministic function of `training.seed + seed_offset`;
    `skip_batches` continues that order after a resumed epoch.

    Args:
        config: the `RecipeConfig`.
        strategy: the `tf.distribute.Strategy`; `None` is the current one.
            Defaults to `None`.
        seed_offset: added to `training.seed` for the shuffle. Defaults to `0`.
        skip_batches: batches of the training order to skip. Defaults to `0`.

    Returns:
        A `PreparedData`.
    """
    strategy = strategy or tf.distribute.get_strategy()
    manifest = read_training_manifest(config)
    weights, note = class_weights(manifest, config.data.train_split, config.training)
    return PreparedData(
        manifest=manifest,
        task=manifest.task,
        num_classes=num_outputs(manifest),
        input_shape=input_shape(config, manifest),
        train=train_dataset(config, manifest, strategy, config.training.seed + seed_offset,
                            skip_batches, weights),
        val=split_dataset(config, manifest, config.data.val_split),
        steps_per_epoch=steps_per_epoch(config, manifest),
        validation_steps=config.training.validation_steps,
        class_weights=weights,
        notes=[note],
    )
