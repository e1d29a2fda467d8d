"""`ResumableBackup`: `BackupAndRestore` plus the random-generator states."""

import keras
import tensorflow as tf

from kmedimg.core.run_directory import join, write_json
from kmedimg.training.model_state import (
    RANDOM_STATES_NAME, backup_epoch, restore_random_states, save_random_states, save_weights,
)


class ResumableBackup(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` that also saves and restores random-generator states.

    Its files are written safely: the free space is checked before the weights are
    written (HDF5 crashes the process on a full device), the weights go to a temporary
    file that is renamed, and the epoch file is written after them.

    Args:
        backup_dir: the stage's backup directory (local, `gs://` or `ram://`).
    """

    def __init__(self, backup_dir):
        super().__init__(backup_dir, save_freq="epoch", delete_checkpoint=False)
        self.random_states_path = join(backup_dir, RANDOM_STATES_NAME)

    def on_train_begin(self, logs=None):
        # Keras keeps the restored epoch on the model (`fit` starts from it) and never
        # clears it: the next stage's `fit` would skip epochs. Only this backup sets it.
        self.model._initial_epoch = None
        super().on_train_begin(logs)
        epoch = backup_epoch(self.backup_dir)
        if epoch:
            restore_random_states(self.model, self.random_states_path, epoch)

    def on_epoch_end(self, epoch, logs=None):
        tf.io.gfile.makedirs(self.backup_dir)
        save_random_states(self.model, self.random_states_path, epoch + 1)
        super().on_epoch_end(epoch, logs)

    def _save_model(self):
        tf.io.gfile.makedirs(self.backup_dir)
        save_weights(self.model, self._weights_path, with_optimizer=True)
        write_json(self._training_metadata_path,
                   {"epoch": self._current_epoch, "batch": self._last_batch_seen})
