"""`kmedimg tune RECIPE.yaml`: search a recipe's hyper-parameters with Keras Tuner."""

import argparse

from kmedimg.config import TUNER_NAMES, load_config
from kmedimg.tuning import run_search, settings_for


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1. Received: {text}")
    return value


def add_parser(subparsers):
    """Adds `kmedimg tune` to the `kmedimg` command."""
    parser = subparsers.add_parser(
        "tune",
        help="search learning rate, dropout, freeze depth (and more) with Keras Tuner",
        description=(
            "Search the hyper-parameters of a recipe file (its `tune:` section) with Keras "
            "Tuner. The project is DIRECTORY/PROJECT_NAME (runs/tune/<recipe stem>), the same "
            "on every run, so re-running continues an interrupted search; it ends with "
            "trials.csv, a plot and best_recipe.yaml (full-length epochs) for `kmedimg train`."
        ),
    )
    parser.add_argument("recipe", help="recipe YAML file")
    parser.add_argument("--tuner", choices=TUNER_NAMES, default=None,
                        help="search strategy (default: the file's tune.tuner, else hyperband)")
    parser.add_argument("--max-trials", type=_positive_int, default=None,
                        help="trial budget of bayesian/random/grid search")
    parser.add_argument("--max-epochs", type=_positive_int, default=None,
                        help="epochs of one complete trial (the recipe's stages are scaled)")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete the project and start the search afresh")
    parser.add_argument("--directory", default=None,
                        help="parent directory of tuning projects (default: the file's "
                             "tune.directory, else runs/tune under the working directory)")
    parser.add_argument("--project-name", default=None,
                        help="project name (default: the recipe file's stem)")
    parser.add_argument("--data", default=None, help="dataset directory (overrides data.path)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a recipe key, e.g. training.seed=1")
    role = parser.add_mutually_exclusive_group()
    role.add_argument("--chief", dest="role", action="store_const", const="chief",
                      help="serve the search to workers (Keras Tuner chief)")
    role.add_argument("--worker", dest="role", action="store_const", const="worker",
                      help="run trials for a chief")
    parser.add_argument("--oracle-address", default="127.0.0.1:8000",
                        help="HOST:PORT the chief listens on / workers dial (default %(default)s)")
    parser.add_argument("--tuner-id", default=None,
                        help="stable worker id, so a restarted worker resumes its trial")
    parser.set_defaults(handler=_run, role=None)


def _run(args):
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.path={args.data}")
    config = load_config(args.recipe, overrides=overrides)
    settings = settings_for(
        config, tuner=args.tuner, max_trials=args.max_trials, max_epochs=args.max_epochs,
        project_name=args.project_name, directory=args.directory,
    )
    run_search(
        config, settings=settings, recipe_path=args.recipe, overwrite=args.overwrite,
        role=args.role, oracle_address=args.oracle_address, tuner_id=args.tuner_id,
    )
    return 0
