"""`ResumeState`: how far a run got, saved in the run directory's `state.json`."""

import dataclasses

from kmedimg.core.run_directory import RunDirectory


def best_epoch(rows, monitor, mode):
    """The history row with the best `monitor` value as a `best` dict, or `None`.

    Args:
        rows: `history.csv` rows.
        monitor: the epoch-log key, e.g. `"val_auc"`.
        mode: `"max"` or `"min"`.

    Returns:
        `{"monitor", "value", "stage", "epoch", "global_epoch"}` or `None` when no row
        has `monitor`.
    """
    scored = [row for row in rows if row.get(monitor) is not None]
    if not scored:
        return None
    row = (max if mode == "max" else min)(scored, key=lambda item: item[monitor])
    return {"monitor": monitor, "value": row[monitor], "stage": row["stage"],
            "epoch": row["epoch"], "global_epoch": row["global_epoch"]}


def describe_epoch(best):
    """`stage 'finetune' epoch 3 (global 5), val_auc=0.91` for a `best_epoch` dict."""
    return (f"stage {best['stage']!r} epoch {best['epoch']} (global {best['global_epoch']}), "
            f"{best['monitor']}={best['value']:.4g}")


@dataclasses.dataclass
class ResumeState:
    """What a run directory says about how far its run got (`state.json`).

    Keras `BackupAndRestore` keeps the running stage's weights, optimizer state and
    epoch in `backup/<stage>/`; `history.csv` keeps the epoch logs (from which early
    stopping, plateau counters and the best value so far are replayed). This is the
    rest: which stages are complete, with their reports, and where the run was when it
    last (re)started a stage. A run started again with the same directory skips the
    completed stages and continues from the end weights of the last one.

    Attributes:
        completed: stage name -> `{"epochs_run": int, "report": dict}`, in stage order.
        current_stage: the stage being trained, `None` before the first and after the
            last one.
        resumed_after_epoch: epochs of `current_stage` restored from its backup when it
            (re)started.
        best: the best epoch of the completed stages (see `best_epoch`), or `None`.
        manifest_fingerprint: sha256 of the dataset's `dataset.json` when the run
            started; a resumed run refuses a dataset that changed. `None` for runs
            written before it was recorded.
    """

    completed: dict = dataclasses.field(default_factory=dict)
    current_stage: str = None
    resumed_after_epoch: int = 0
    best: dict = None
    manifest_fingerprint: str = None

    @classmethod
    def load(cls, directory):
        """The state of `directory` (a `RunDirectory`); a fresh state when it has none."""
        data = directory.read_json(RunDirectory.STATE) or {}
        fields = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in fields})

    def save(self, directory):
        """Writes `state.json` of `directory` (atomically)."""
        directory.write_json(RunDirectory.STATE, dataclasses.asdict(self))

    def is_completed(self, stage_name):
        return stage_name in self.completed

    @property
    def last_completed(self):
        """The name of the last completed stage, or `None`."""
        return next(reversed(self.completed), None)

    @property
    def epochs_completed(self):
        """Epochs run by the completed stages (the first `global_epoch` of the next)."""
        return sum(entry["epochs_run"] for entry in self.completed.values())

    @property
    def stage_reports(self):
        """The reports of the completed stages, in stage order."""
        return [entry["report"] for entry in self.completed.values()]

    def start_stage(self, stage_name, resumed_after_epoch):
        self.current_stage = stage_name
        self.resumed_after_epoch = int(resumed_after_epoch)

    def complete_stage(self, stage_name, epochs_run, report, best=None):
        self.completed[stage_name] = {"epochs_run": int(epochs_run), "report": report}
        self.current_stage = None
        self.resumed_after_epoch = 0
        self.best = best

    def drop_from(self, stage_name):
        """Forgets `stage_name` and every later completed stage (to train them again)."""
        names = list(self.completed)
        for name in names[names.index(stage_name):]:
            del self.completed[name]
        self.current_stage = None
        self.resumed_after_epoch = 0
