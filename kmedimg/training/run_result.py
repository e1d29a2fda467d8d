"""`RunResult`: what a training run produced."""

import dataclasses


@dataclasses.dataclass
class RunResult:
    """What a run produced (`kmedimg.training.run`, `kmedimg.runs.train_and_evaluate`).

    Attributes:
        run_dir: the run directory.
        history: one dict per epoch (the rows of `history.csv`).
        metrics: the content of `metrics.json`: the training summary (recipe, stages,
            best epoch, parameters, platform, notes, wall time) and, after
            `kmedimg.runs.train`, the validation and test metrics.
        model_path: path of `model.keras`.
    """

    run_dir: str
    history: list
    metrics: dict
    model_path: str
