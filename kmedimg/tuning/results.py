"""What a finished search leaves behind: a CSV of trials, a plot, the best values."""

import csv
import json
import math
import os

TRIALS_CSV = "trials.csv"
TRIALS_PLOT = "objective_vs_hyperparameters.png"
BEST_JSON = "best_hyperparameters.json"


def trial_rows(oracle):
    """One dict per trial of `oracle` (the chief's or a single process's), by trial id."""
    rows = []
    for trial_id in sorted(oracle.trials):
        trial = oracle.trials[trial_id]
        row = {
            "trial_id": trial_id,
            "status": str(trial.status).replace("TrialStatus.", ""),
            "score": trial.score,
            "best_step": trial.best_step,
        }
        for name, value in trial.hyperparameters.values.items():
            row[name.replace("tuner/", "tuner_")] = value
        rows.append(row)
    return rows


def hyperparameter_names(rows):
    reserved = {"trial_id", "status", "score", "best_step"}
    names = []
    for row in rows:
        for name in row:
            if name not in reserved and name not in names:
                names.append(name)
    return names


def write_trials_csv(rows, path):
    """Writes the trial rows as CSV (one column per hyper-parameter)."""
    columns = ["trial_id", "status", "score", "best_step"] + hyperparameter_names(rows)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: ("" if value is None else value) for key, value in row.items()})
    return path


def plot_objective(rows, path, objective="val_auc", log_scale=("learning_rate", "weight_decay")):
    """One panel per searched hyper-parameter: the objective of every scored trial."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    names = [
        name for name in hyperparameter_names(rows)
        if not name.startswith("tuner_") and len({str(row.get(name)) for row in rows}) > 1
    ] or [name for name in hyperparameter_names(rows) if not name.startswith("tuner_")]
    scored = [row for row in rows if _is_number(row["score"])]
    columns = max(1, min(3, len(names)))
    lines = max(1, math.ceil(len(names) / columns))
    figure, axes = pyplot.subplots(lines, columns, figsize=(4 * columns, 3.2 * lines),
                                   squeeze=False)
    for index, name in enumerate(names):
        axis = axes[index // columns][index % columns]
        points = [(row.get(name), row["score"]) for row in scored if row.get(name) is not None]
        if points and all(_is_number(x) for x, _ in points):
            axis.scatter([x for x, _ in points], [y for _, y in points])
            if name in log_scale and all(x > 0 for x, _ in points):
                axis.set_xscale("log")
        elif points:
            labels = sorted({str(x) for x, _ in points})
            axis.scatter([labels.index(str(x)) for x, _ in points], [y for _, y in points])
            axis.set_xticks(range(len(labels)))
            axis.set_xticklabels(labels, rotation=30)
        axis.set_xlabel(name)
        axis.set_ylabel(objective)
        axis.grid(alpha=0.3)
    for index in range(len(names), lines * columns):
        axes[index // columns][index % columns].axis("off")
    figure.suptitle(f"{objective} per trial ({len(scored)} scored)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return path


def write_best(best_values, score, trial_id, path):
    with open(path, "w") as handle:
        json.dump({"trial_id": trial_id, "score": score, "hyperparameters": best_values},
                  handle, indent=2)
    return path


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def export_results(oracle, out_dir, objective="val_auc"):
    """Writes `trials.csv` and the objective plot into `out_dir`; returns their paths.

    The plot needs matplotlib (a core dependency); without it the plot
    path is `None` and the CSV is still written.
    """
    os.makedirs(out_dir, exist_ok=True)
    rows = trial_rows(oracle)
    csv_path = write_trials_csv(rows, os.path.join(out_dir, TRIALS_CSV))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return csv_path, None
    plot_path = plot_objective(rows, os.path.join(out_dir, TRIALS_PLOT), objective=objective)
    return csv_path, plot_path
