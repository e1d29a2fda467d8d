"""`kmedimg demo [--out DIR] [--backbone NAME] [--recipe auto|NAME] [--quick]`."""

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
            "Synthetic phantoms -> TFRecords -> pretrain a small backbone -> the §9 "
            "advisor's recipe on a small, different target set vs from_scratch -> summary "
            "table. Offline; a few minutes on 2 CPU cores."
        ),
    )
    parser.add_argument("--out", default="kmedimg-demo", help="output directory")
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE,
                        help=f"backbone (default {DEFAULT_BACKBONE})")
    parser.add_argument("--recipe", default="auto",
                        help="'auto' (the advisor's choice) or a recipe name")
    parser.add_argument("--similarity", choices=recipes.SIMILARITIES, default="low",
                        help="similarity to tell the advisor (default low)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny budget (seconds, for tests)")
    parser.set_defaults(handler=_handle)


def _handle(args):
    started = time.time()
    rows, _ = run_demo(args.out, backbone=args.backbone, recipe=args.recipe,
                       similarity=args.similarity, budget="quick" if args.quick else "full",
                       seed=args.seed)
    print("\n" + format_table(rows, list(DEMO_COLUMNS)))
    print(f"\nTotal {time.time() - started:.0f} s. Run directories (metrics.json, "
          f"history.csv, model.keras, TensorBoard logs): {os.path.join(args.out, 'runs')}")
    return 0
