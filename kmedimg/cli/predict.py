"""`kmedimg predict MODEL INPUT...`: probabilities for images, DICOM folders or a split, as CSV."""

import sys
import time

from kmedimg.core.run_directory import write_text
from kmedimg.evaluation.prediction import TTA_MODES
from kmedimg.evaluation.predictions_csv import predictions_csv
from kmedimg.runs.inference import OPERATING_POINTS
from kmedimg.runs.predict import predict_run


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "predict", help="probabilities for images, DICOM folders or a TFRecord split, as CSV",
        description="Writes one CSV row per input with the probability of every class and the "
                    "decision at the run's validation-chosen operating point (else 0.5/argmax). "
                    "Input files that cannot be read are listed on stderr with their reason "
                    "and the others are still predicted; the exit status is then 1.")
    parser.add_argument("model", metavar="MODEL", help="a run directory or a .keras file")
    parser.add_argument("inputs", metavar="INPUT", nargs="+",
                        help="image files (PNG/JPEG/TIFF), .npy, DICOM files, folders of them, "
                             "or a dataset directory (TFRecords + dataset.json)")
    parser.add_argument("--out", default="-", help="CSV path (default: stdout)")
    parser.add_argument("--split", default="test",
                        help="split to predict when INPUT is a dataset directory (default: test)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch (default: 64)")
    parser.add_argument("--operating-point", default="training", choices=OPERATING_POINTS,
                        help="decide at the threshold chosen on val at training time, or at "
                             "the last `kmedimg evaluate`'s (default: training)")
    parser.add_argument("--tta", default="none", choices=TTA_MODES,
                        help="test-time augmentation (default: none)")
    parser.set_defaults(handler=_run)


def _run(args):
    start = time.perf_counter()
    table = predict_run(args.model, args.inputs, split=args.split, batch_size=args.batch_size,
                        tta=args.tta, operating_point=args.operating_point)
    source = table.pop("threshold_source")
    failed = table.pop("failed")
    print(_decision_note(table["threshold"], source), file=sys.stderr)
    text = predictions_csv(**table)
    if args.out == "-":
        sys.stdout.write(text)
    else:
        write_text(args.out, text)
        count = len(table["ids"])
        seconds = time.perf_counter() - start
        print(f"{count} predictions -> {args.out} ({count / seconds:.1f} inputs/s)")
    if not failed:
        return 0
    print(f"kmedimg predict: {len(failed)} of {len(failed) + len(table['ids'])} input files "
          "could not be read and were not predicted:", file=sys.stderr)
    for path, reason in failed:
        print(f"  {path}: {reason}", file=sys.stderr)
    return 1


def _decision_note(threshold, source):
    if not threshold:
        return ("decisions: no operating point stored with the model; 0.5 (argmax for "
                "several classes)")
    if threshold.get("rule") == "argmax":
        return "decisions: the most probable class (argmax)"
    values = ", ".join(f"{value:.3f}" for value in threshold.get("values", []))
    return (f"decisions: threshold {values} ({threshold.get('rule')}, chosen on "
            f"{threshold.get('chosen_on')}) from {source}")
