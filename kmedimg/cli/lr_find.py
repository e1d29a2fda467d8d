"""`kmedimg lr-find RECIPE.yaml [--set key=value ...] [--data DIR] [--out PLOT.png]`."""

from kmedimg.config import load_config
from kmedimg.runs.lr_find import DEFAULT_PLOT, lr_find_run
from kmedimg.training.lr_finder import (
    DEFAULT_MAX_LR, DEFAULT_MIN_LR, DEFAULT_STEPS, SUGGESTION_RULE,
)


def add_parser(subparsers):
    """Adds the `lr-find` command to `subparsers`."""
    parser = subparsers.add_parser(
        "lr-find", help="sweep the learning rate of a recipe's first stage and suggest one",
        description="Learning-rate finder (Smith 2017; fastai's lr_find): train a fresh "
        "model of the recipe for a few hundred steps while the learning rate grows "
        "exponentially, stop when the loss diverges, plot the smoothed loss against the "
        f"learning rate and suggest one ({SUGGESTION_RULE}). Put the value in the recipe, "
        "or write `learning_rate: find` there to have `kmedimg train` run this first.",
    )
    parser.add_argument("recipe", help="recipe YAML file (see recipes/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a key, e.g. data.batch_size=16")
    parser.add_argument("--data", help="dataset directory (sets data.path)")
    parser.add_argument("--out", default=DEFAULT_PLOT,
                        help=f"the plot (PNG); the sweep goes beside it as .json. "
                        f"Defaults to ./{DEFAULT_PLOT}")
    parser.add_argument("--stage", type=int, default=0,
                        help="index of the recipe stage to sweep. Defaults to 0 (the first)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help=f"steps of the sweep. Defaults to {DEFAULT_STEPS}")
    parser.add_argument("--min-lr", type=float, default=DEFAULT_MIN_LR,
                        help=f"first learning rate. Defaults to {DEFAULT_MIN_LR:g}")
    parser.add_argument("--max-lr", type=float, default=DEFAULT_MAX_LR,
                        help=f"last learning rate. Defaults to {DEFAULT_MAX_LR:g}")
    parser.set_defaults(handler=_handle)


def _handle(args):
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.path={args.data}")
    config = load_config(args.recipe, overrides)
    result, path = lr_find_run(config, args.out, stage_index=args.stage, steps=args.steps,
                               min_lr=args.min_lr, max_lr=args.max_lr)
    stop = "the loss diverged" if result.diverged else "the sweep ended"
    print(f"swept {len(result.losses)} steps from lr {result.min_lr:g} to "
          f"{result.learning_rates[-1]:.3g} ({stop}); lowest smoothed loss at lr "
          f"{result.minimum_lr:.3g}")
    print(f"suggested learning rate: {result.suggestion:.3g} ({SUGGESTION_RULE})")
    print(f"plot: {path}")
    return 0
