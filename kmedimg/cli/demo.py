"""`kmedimg demo [--out DIR] [--backbone NAME] [--recipe auto|NAME] [--seed S] [--quick]`."""

import os
import time

from kmedimg import recipes
from kmedimg.runs.demo import DEFAULT_BACKBONE, DEMO_COLUMNS, run_demo
from kmedimg.runs.tables import format_table


def add_parser(subparsers):
    """Adds the `demo` command to `subparsers`."""
    parser = subparsers.add_parser(
        "demo", help="offline end-to-end transfer-learning demo on synthetic phantoms",
        description=(
            "Synthetic chest-X-ray phantoms from two 'hospitals' -> TFRecords -> pretrain a "
            "small backbone on 1600 site-A images -> the §9 advisor's recipe on 100 site-B "
            "images vs from_scratch on the same 100 -> summary table, verdict and the "
            "transfer run's report.html. Offline; a few minutes on 2 CPU cores."
        ),
    )
    parser.add_argument("--out", default="kmedimg-demo", help="output directory")
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE,
                        help=f"backbone (default {DEFAULT_BACKBONE})")
    parser.add_argument("--recipe", default="auto",
                        help="'auto' (the advisor's choice) or a recipe name")
    parser.add_argument("--similarity", choices=recipes.SIMILARITIES, default="high",
                        help="similarity of site B to site A to tell the advisor (default high)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny budget (seconds, for tests)")
    parser.set_defaults(handler=_handle)


def _handle(args):
    started = time.time()
    result = run_demo(args.out, backbone=args.backbone, recipe=args.recipe,
                      similarity=args.similarity, budget="quick" if args.quick else "full",
                      seed=args.seed)
    print("\n" + format_table(result.rows, list(DEMO_COLUMNS)))
    print(f"\nTotal {time.time() - started:.0f} s. Run directories (metrics.json, "
          f"history.csv, model.keras, TensorBoard logs): {os.path.dirname(result.runs['source'])}")
    for note in result.notes:
        print("\n" + note)
    return 0
