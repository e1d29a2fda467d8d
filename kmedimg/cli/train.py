"""`kmedimg train RECIPE.yaml [--set key=value ...] [--data DIR] [--out RUN_DIR]`."""

from kmedimg.config import load_config
from kmedimg.runs.tables import format_table, operating_point_line, summary_rows
from kmedimg.runs.train import train_and_evaluate


def add_parser(subparsers):
    """Adds the `train` command to `subparsers`."""
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
    parser.set_defaults(handler=_handle)


def _handle(args):
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.path={args.data}")
    if args.out:
        overrides.append(f"training.run_dir={args.out}")
    result = train_and_evaluate(load_config(args.recipe, overrides), progress=not args.quiet)
    print()
    print(format_table(summary_rows(result.metrics), ["metric", "val", "test"]))
    line = operating_point_line(result.metrics)
    if line:
        print(line)
    if result.metrics.get("test_note"):
        print(result.metrics["test_note"])
    print(f"\nrun directory: {result.run_dir}")
    return 0
