"""`kmedimg evaluate RUN_DIR`: metrics with 95% CIs at a validation-chosen operating point."""

import sys

from kmedimg.evaluation.prediction import TTA_MODES
from kmedimg.evaluation.thresholds import CHOSEN_RULES
from kmedimg.runs.evaluate import evaluate_run


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "evaluate", help="metrics with 95%% CIs at a validation-chosen operating point, and report.html",
        description="Chooses the operating point on the validation split, applies it to SPLIT, "
                    "writes RUN_DIR/evaluation/ and RUN_DIR/report.html.")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run directory holding model.keras")
    parser.add_argument("--data", default=None, help="dataset directory (default: the run's data.path)")
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument("--val-split", default=None,
                        help="split the operating point is chosen on (default: the run's, else val)")
    parser.add_argument("--allow-train-operating-point", action="store_true",
                        help="let --val-split be the training split (optimistic threshold)")
    parser.add_argument("--tta", default="none", choices=TTA_MODES,
                        help="test-time augmentation; its effect is reported (default: none)")
    parser.add_argument("--threshold-rule", default=None, choices=CHOSEN_RULES + ("fixed",),
                        help="operating-point rule (default: the run's evaluation.threshold_rule)")
    parser.add_argument("--target", type=float, default=None,
                        help="target sensitivity/specificity, or the fixed threshold")
    parser.add_argument("--bootstrap", type=int, default=None,
                        help="bootstrap replicates (default: the run's, else 1000)")
    parser.add_argument("--batch-size", type=int, default=64, help="default: 64")
    parser.add_argument("--no-report", action="store_true", help="skip report.html")
    parser.set_defaults(handler=_run)


def _run(args):
    written = evaluate_run(args.run_dir, data=args.data, split=args.split, val_split=args.val_split,
                           tta=args.tta, n_bootstrap=args.bootstrap,
                           threshold_rule=args.threshold_rule, threshold_target=args.target,
                           batch_size=args.batch_size, report=not args.no_report,
                           allow_train_operating_point=args.allow_train_operating_point)
    result = written.pop("evaluation")
    headline = "roc_auc" if result["task"] == "binary" else "macro_roc_auc"
    entry = result["metrics"][headline]
    low = "" if entry["ci_low"] is None else f" (95% CI {entry['ci_low']:.3f}-{entry['ci_high']:.3f})"
    print(f"{result['split']}: {result['num_samples']} cases, {headline} {entry['value']:.3f}{low}")
    for name, path in written.items():
        print(f"  {name}: {path}")
    if (result.get("grad_cam") or {}).get("warning"):
        print(f"kmedimg evaluate: warning: {result['grad_cam']['warning']}", file=sys.stderr)
    return 0
