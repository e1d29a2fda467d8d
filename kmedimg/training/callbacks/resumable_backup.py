"""`ResumableBackup`: `BackupAndRestore` plus the random-generator states."""

import keras
import tensorflow as tf

from kmedimg.core.run_directory import (
    check_free_space, join, read_json, sha256_of_file, write_atomically, write_json,
)
from kmedimg.training.model_state import (
    RANDOM_STATES_NAME, backup_epoch, h5_bytes_needed, restore_random_states,
    save_random_states,
)


class ResumableBackup(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` that also saves and restores random-generator states.

    Its files are written safely: the free space is checked before the weights are
    written (HDF5 crashes the process on a full device), the weights go to a temporary
    file that is renamed after the epoch file recorded its sha256.

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
        # Keras writes the weights in place, then the epoch; a kill between the two (or
        # during the first) leaves a backup that is not what its epoch file says. Here
        # the epoch file is written first and names the sha256 of the new weights and
        # of the previous ones; the weights are renamed into place after it, so either
        # hash tells which epoch the file on disk holds (`reconcile_backup`).
        tf.io.gfile.makedirs(self.backup_dir)
        previous = read_json(self._training_metadata_path)
        if previous:
            previous.pop("previous", None)

        def write(temporary):
            self.model.save_weights(temporary)
            write_json(self._training_metadata_path, {
                "epoch": self._current_epoch, "batch": self._last_batch_seen,
                "sha256": sha256_of_file(temporary), "previous": previous,
            })

        check_free_space(self._weights_path, h5_bytes_needed(self.model, with_optimizer=True))
        write_atomically(self._weights_path, write, suffix=".weights.h5")
