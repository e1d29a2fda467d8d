"""Keras callbacks that make a training run resumable after a kill.

Keras `BackupAndRestore` keeps weights, optimizer state and the epoch; these add what
it does not keep: random-generator states (`ResumableBackup`), `history.csv`
(`HistoryWriter`), the best value so far (`BestCheckpoint`) and early-stopping and
plateau counters, replayed from the history (`ResumableEarlyStopping`,
`ResumableReduceLROnPlateau`).
"""

from kmedimg.training.callbacks.best_checkpoint import BestCheckpoint
from kmedimg.training.callbacks.history_writer import HistoryWriter
from kmedimg.training.callbacks.resumable_backup import ResumableBackup
from kmedimg.training.callbacks.resumable_counters import (
    ResumableEarlyStopping, ResumableReduceLROnPlateau,
)

__all__ = [
    "BestCheckpoint", "HistoryWriter", "ResumableBackup", "ResumableEarlyStopping",
    "ResumableReduceLROnPlateau",
]
