"""`kmedimg train` and the plain-text summary tables."""

import math

from kmedimg.training.runner import run

def format_table(rows, columns):
    """A plain-text table of dict rows (used by `kmedimg train` and `kmedimg demo`)."""
    cells = [[str(column) for column in columns]]
    for row in rows:
        cells.append([_cell(row.get(column)) for column in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["  ".join(text.ljust(width) for text, width in zip(line, widths)) for line in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _cell(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if math.isfinite(value) else str(value)
    return str(value)


def metric_with_interval(result, name):
    """`"0.912 [0.871, 0.944]"` for metric `name` of an `evaluate` result."""
    if not result:
        return None
    entry = result["metrics"].get(name)
    if entry is None:
        return None
    if entry.get("ci_low") is None:
        return f"{entry['value']:.3f}"
    return f"{entry['value']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"


def summary_rows(result_metrics):
    """One summary row per metric of a run's `metrics.json`."""
    names = ["roc_auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "f1"]
    rows = []
    for name in names:
        row = {"metric": name, "val": metric_with_interval(result_metrics.get("val"), name),
               "test": metric_with_interval(result_metrics.get("test"), name)}
        if row["val"] or row["test"]:
            rows.append(row)
    return rows


def add_train_command(subparsers):
    """`kmedimg train RECIPE.yaml [--set key=value ...] [--data DIR] [--out RUN_DIR]`."""
    parser = subparsers.add_parser(
        "train", help="run a recipe file end to end into a run directory",
        description="Run a recipe (YAML) end to end: data, model, stages, checkpoints, "
        "evaluation. Running again with the same --out resumes a killed run.",
    )
    parser.add_argument("recipe", help="recipe YAML file (see recipes/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a key, e.g. training.seed=3")
    parser.add_argument("--data", help="dataset directory (sets data.path)")
    parser.add_argument("--out", help="run directory (sets training.run_dir)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")

    def handler(args):
        from kmedimg.config import load_config

        overrides = list(args.overrides)
        if args.data:
            overrides.append(f"data.path={args.data}")
        if args.out:
            overrides.append(f"training.run_dir={args.out}")
        config = load_config(args.recipe, overrides)
        result = run(config, progress=not args.quiet)
        print()
        print(format_table(summary_rows(result.metrics), ["metric", "val", "test"]))
        print(f"\nrun directory: {result.run_dir}")
        return 0

    parser.set_defaults(handler=handler)
