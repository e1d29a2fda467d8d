"""`BestCheckpoint`: the full model's weights at the best monitored epoch."""

import keras

from kmedimg.core.run_directory import sha256_of_file, write_json
from kmedimg.training.model_state import save_weights_only


class BestCheckpoint(keras.callbacks.Callback):
    """Saves the *full* model's weights when `monitor` improves, with a record of them.

    Also when only the head is being fitted on cached features. The weights are written
    atomically (after a free-space check), then `record_path` (JSON) names the epoch
    they hold and the sha256 of the file, so a resumed run can tell whether the
    checkpoint on disk is the one the history calls best.

    Args:
        full_model: the classifier whose weights are saved.
        path: the `.weights.h5` file.
        monitor: the epoch-log key, e.g. `"val_auc"`.
        mode: `"max"` or `"min"`.
        best: the best value of earlier epochs (a resumed run). Defaults to `None`.
        record_path: the JSON record of the saved epoch. Defaults to `None` (none).
        stage_name: the stage being trained, for the record. Defaults to `None`.
        epoch_offset: epochs of the earlier stages, for the record. Defaults to `0`.
    """

    def __init__(self, full_model, path, monitor, mode, best=None, record_path=None,
                 stage_name=None, epoch_offset=0):
        super().__init__()
        self.full_model = full_model
        self.path = path
        self.monitor = monitor
        self.mode = mode
        self.best = best
        self.record_path = record_path
        self.stage_name = stage_name
        self.epoch_offset = epoch_offset

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise ValueError(
                f"`training.monitor` {self.monitor!r} is not in the epoch logs; available: "
                f"{sorted(logs or {})}. Received: training.monitor={self.monitor!r}"
            )
        value = float(value)
        better = self.best is None or (
            value > self.best if self.mode == "max" else value < self.best)
        if better:
            self.best = value
            save_weights_only(self.full_model, self.path)
            if self.record_path:
                write_json(self.record_path, {
                    "monitor": self.monitor, "value": value, "stage": self.stage_name,
                    "epoch": epoch, "global_epoch": self.epoch_offset + epoch,
                    "sha256": sha256_of_file(self.path),
                })
