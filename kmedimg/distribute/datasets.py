"""Input pipelines under a strategy: one per worker for training, DATA-sharded for evaluation."""

import tensorflow as tf


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
