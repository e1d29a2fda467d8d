"""A live, one-row-per-trial table of a running search."""

import math
import sys
import time

from kmedimg.core.progress import format_duration


def format_value(value):
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e4:
            return f"{value:.4g}"
        return f"{value:.2e}"
    return str(value)


class TrialTable:
    """Prints a header once and a row whenever a trial ends.

    Args:
        objective: Name of the objective metric. Defaults to `"val_auc"`.
        direction: `"max"` or `"min"`, to track the best so far. Defaults to `"max"`.
        stream: Where to print. Defaults to `sys.stdout`.
        worker: Label of this process in the rows (chief/worker runs), or `None`.
            Defaults to `None`.
    """

    def __init__(self, objective="val_auc", direction="max", stream=None, worker=None):
        self.objective = objective
        self.direction = direction
        self.stream = stream or sys.stdout
        self.worker = worker
        self.started = {}
        self.best = None
        self.columns = None
        self.rows = 0
        self.search_started = None
        self.durations = []
        self.begun = 0

    def begin(self, trial, worker=None, total=None):
        """Prints the trial's start with its values, the search's elapsed time and ETA."""
        self.started[trial.trial_id] = time.monotonic()
        self.search_started = self.search_started or time.monotonic()
        self.begun += 1
        values = " ".join(
            f"{name.replace('tuner/', '')}={format_value(value)}"
            for name, value in trial.hyperparameters.values.items()
            if name not in ("tuner/trial_id", "tuner/initial_epoch")
        )
        worker = worker or self.worker
        worker = f" on {worker}" if worker else ""
        print(f"  > trial {trial.trial_id}{self._timing(total)} started{worker}: {values}",
              file=self.stream, flush=True)

    def _timing(self, total):
        """` (3/10; elapsed 04:10; ~01:23 per trial; ETA 11:04)`: the search so far.

        Empty when the number of trials (`total`) is unknown.
        """
        if not total:
            return ""
        parts = [f"{self.begun}/{total}"]
        parts.append(f"elapsed {format_duration(time.monotonic() - self.search_started)}")
        if self.durations:
            mean = sum(self.durations) / len(self.durations)
            parts.append(f"~{format_duration(mean)} per trial")
            parts.append(f"ETA {format_duration(mean * max(0, total - self.begun + 1))}")
        return f" ({'; '.join(parts)})"

    def _header(self, names):
        self.columns = names
        cells = ["trial", "status", self.objective, "best"] + names + ["seconds"]
        if self.worker:
            cells.append("worker")
        self._print(cells)

    def end(self, trial, worker=None):
        values = trial.hyperparameters.values
        # Hyperband's trial_id/initial_epoch describe warm starts, which kmedimg does not
        # use (each trial runs its recipe from the start; see TrialHooks.run_trial).
        hidden = ("tuner/trial_id", "tuner/initial_epoch")
        names = [name.replace("tuner/", "") for name in values if name not in hidden]
        if self.columns is None or any(name not in self.columns for name in names):
            self._header(names)
        by_name = {name.replace("tuner/", ""): value for name, value in values.items()}
        score = trial.score
        if score is not None and not math.isnan(score):
            better = self.best is None or (
                score > self.best if self.direction == "max" else score < self.best
            )
            if better:
                self.best = score
        seconds = time.monotonic() - self.started.pop(trial.trial_id, time.monotonic())
        self.durations.append(seconds)
        cells = [
            trial.trial_id,
            str(trial.status).replace("TrialStatus.", ""),
            "-" if score is None else format_value(float(score)),
            "-" if self.best is None else format_value(float(self.best)),
        ]
        cells += [format_value(by_name.get(name, "")) for name in self.columns]
        cells.append(f"{seconds:.1f}")
        if self.worker:
            cells.append(worker or self.worker)
        self._print(cells)
        if trial.message and score is None:
            last = [line for line in str(trial.message).strip().splitlines() if line.strip()]
            print(f"    trial {trial.trial_id} failed: {last[-1] if last else trial.message}",
                  file=self.stream, flush=True)
        self.rows += 1

    def _print(self, cells):
        print("  ".join(f"{cell:>10}" for cell in cells), file=self.stream, flush=True)
