"""`HistoryWriter`: one `history.csv` row per epoch over all stages of a run."""

import keras

from kmedimg.core.run_directory import write_history


def current_learning_rate(optimizer):
    """The optimizer's learning rate now, as a float."""
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


class HistoryWriter(keras.callbacks.Callback):
    """Appends one row per epoch to `history.csv` (rows of earlier stages are kept).

    Args:
        path: the run's `history.csv`.
        stage_name: the stage being trained.
        epoch_offset: epochs of the earlier stages (the `global_epoch` of epoch 0).
        resume_epoch: the epoch the stage resumes after (0 when it starts afresh).
        rows: the history rows read from `path`.
    """

    def __init__(self, path, stage_name, epoch_offset, resume_epoch, rows):
        super().__init__()
        self.path = path
        self.stage_name = stage_name
        self.epoch_offset = epoch_offset
        # Rows after the restored epoch were written by the killed process after its
        # last backup; they are replayed, so drop them.
        self.rows = [
            row for row in rows
            if row["stage"] != stage_name or row["epoch"] < resume_epoch
        ]

    def on_epoch_begin(self, epoch, logs=None):
        self.learning_rate = current_learning_rate(self.model.optimizer)

    def on_epoch_end(self, epoch, logs=None):
        row = {
            "stage": self.stage_name,
            "epoch": epoch,
            "global_epoch": self.epoch_offset + epoch,
            # The rate at the start of the epoch (the schedule moves every step).
            "learning_rate": self.learning_rate,
        }
        row.update({key: float(value) for key, value in (logs or {}).items()
                    if key != "learning_rate"})
        self.rows.append(row)
        write_history(self.path, self.rows)
