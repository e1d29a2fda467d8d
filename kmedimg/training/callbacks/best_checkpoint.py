"""`BestCheckpoint`: the full model's weights at the best monitored epoch."""

import keras

from kmedimg.training.model_state import save_weights_only


class BestCheckpoint(keras.callbacks.Callback):
    """Saves the *full* model's weights when `monitor` improves.

    Also when only the head is being fitted on cached features.

    Args:
        full_model: the classifier whose weights are saved.
        path: the `.weights.h5` file.
        monitor: the epoch-log key, e.g. `"val_auc"`.
        mode: `"max"` or `"min"`.
        best: the best value of earlier epochs (a resumed run). Defaults to `None`.
    """

    def __init__(self, full_model, path, monitor, mode, best=None):
        super().__init__()
        self.full_model = full_model
        self.path = path
        self.monitor = monitor
        self.mode = mode
        self.best = best

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise ValueError(
                f"`training.monitor` {self.monitor!r} is not in the epoch logs; available: "
                f"{sorted(logs or {})}. Received: training.monitor={self.monitor!r}"
            )
        value = float(value)
        better = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        if better:
            self.best = value
            save_weights_only(self.full_model, self.path)
