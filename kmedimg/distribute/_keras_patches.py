"""Two targeted fixes that make `model.fit` work under MultiWorkerMirroredStrategy.

Keras 3 (3.15.1 here; earlier 3.x releases reported too) fails at the first `fit` under a multi-worker
`tf.distribute.MultiWorkerMirroredStrategy` (open upstream: keras-team/keras#20585,
tensorflow/tensorflow#72388):

1. `TensorFlowTrainer._maybe_symbolic_build` reduces the first *data batch* with
   `strategy.reduce("MEAN", (x, y), axis=None)`; the collective reduce cannot
   convert the `(x, y)` structure of `PerReplica` values ("Attempt to convert a
   value (PerReplica...) with an unsupported type"). The batch is only needed for
   its shapes and dtypes, so the fix builds from this worker's first local replica
   batch instead.
2. `reduce_per_replica(..., reduction="mean")` reduces every log value with
   `strategy.reduce("MEAN", value, axis=0)` in multi-worker mode; losses and
   metric results are scalars ("Invalid reduction dimension 0 for input with 0
   dimensions"). The fix reduces across replicas only (`axis=None`), which is the
   mean the logs mean.

Both replacements behave exactly like the originals for every other strategy.
`apply_multiworker_patches()` installs them once per process and only for Keras
versions they were checked against; for other versions it logs a warning and
leaves Keras alone (tf_keras is not affected).
"""

import logging

import keras
import tensorflow as tf

logger = logging.getLogger(__name__)

# Keras versions whose trainer has the two code paths patched here, verified by
# reading keras/src/backend/tensorflow/trainer.py and running the 2-process tests
# (tests/test_distribute_processes.py). Widen only after running them on a version.
PATCHED_KERAS_VERSIONS = ((3, 15), (3, 15))

_state = {"applied": False}


def _keras_version():
    parts = []
    for piece in keras.__version__.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def is_supported_keras():
    """Whether the installed Keras is one the patches were checked against."""
    low, high = PATCHED_KERAS_VERSIONS
    return low <= _keras_version() <= high


def apply_multiworker_patches():
    """Installs the two MultiWorkerMirroredStrategy fixes (idempotent).

    Returns:
        True when the patches are installed (now or before), False when this Keras
        version is outside `PATCHED_KERAS_VERSIONS` and nothing was changed.
    """
    if _state["applied"]:
        return True
    if not is_supported_keras():
        logger.warning(
            "Keras %s is outside the versions kmedimg's MultiWorkerMirroredStrategy fixes "
            "were checked against (%s - %s); not patching. If fit fails with 'Attempt to "
            "convert a value (PerReplica...)', see keras-team/keras#20585.",
            keras.__version__,
            ".".join(map(str, PATCHED_KERAS_VERSIONS[0])),
            ".".join(map(str, PATCHED_KERAS_VERSIONS[1])),
        )
        return False
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original_reduce = tf_trainer.reduce_per_replica
    original_build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and _in_multi_worker_mode(strategy):
            return tf.nest.map_structure(
                lambda value: strategy.reduce("MEAN", value, axis=None), values
            )
        return original_reduce(values, strategy, reduction)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if iterator is None or strategy is None or not _in_multi_worker_mode(strategy):
            return original_build(self, iterator=iterator, data_batch=data_batch)
        for _, _, batches in iterator:
            data_batch = _first_local_replica(strategy, next(batches))
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    tf_trainer.reduce_per_replica = reduce_per_replica
    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    _state["applied"] = True
    logger.info("Applied kmedimg's MultiWorkerMirroredStrategy fixes to Keras %s.", keras.__version__)
    return True


def _in_multi_worker_mode(strategy):
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and bool(
        strategy.extended._in_multi_worker_mode()
    )


def _first_local_replica(strategy, batch):
    def local(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    return tf.nest.map_structure(local, batch)
