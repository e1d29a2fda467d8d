"""Early stopping and plateau callbacks that resume their counters from the history.

Both classes are one-line compositions of the same replay mixin, so they share a file.
"""

import keras

from kmedimg.training.callbacks.history_writer import current_learning_rate


def _replay(callback, model, rows, monitor):
    """Feeds earlier epochs' logs to a stateful callback so it resumes its counters.

    The learning rate restored by the backup is kept (a replayed plateau step must not
    lower it twice) and a replayed early stop does not stop the resumed run.
    """
    callback.set_model(model)
    variable_rate = isinstance(model.optimizer._learning_rate, keras.Variable)
    learning_rate = current_learning_rate(model.optimizer)
    for row in rows:
        logs = {key: value for key, value in row.items() if value is not None}
        if monitor in logs:
            callback.on_epoch_end(row["epoch"], logs)
    if variable_rate:
        model.optimizer.learning_rate = learning_rate
    model.stop_training = False


class _ReplaysCounters:
    """Mixin: after the callback's own reset, replays the history rows of a resumed run."""

    def __init__(self, previous_rows, **kwargs):
        super().__init__(**kwargs)
        self.previous_rows = previous_rows

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.previous_rows:
            _replay(self, self.model, self.previous_rows, self.monitor)


class ResumableEarlyStopping(_ReplaysCounters, keras.callbacks.EarlyStopping):
    """`EarlyStopping` whose patience counter continues after a resumed epoch.

    Args:
        previous_rows: this stage's history rows before the resumed epoch.
        **kwargs: `keras.callbacks.EarlyStopping` arguments.
    """


class ResumableReduceLROnPlateau(_ReplaysCounters, keras.callbacks.ReduceLROnPlateau):
    """`ReduceLROnPlateau` whose wait counter continues after a resumed epoch.

    Args:
        previous_rows: this stage's history rows before the resumed epoch.
        **kwargs: `keras.callbacks.ReduceLROnPlateau` arguments.
    """
