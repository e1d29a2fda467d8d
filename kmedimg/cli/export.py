"""`kmedimg export RUN_DIR`: the model as .keras, SavedModel or TFLite, checked by its runtime."""

from kmedimg.evaluation.export import DEFAULT_MAX_FLIP_RATE, FORMATS, QUANTIZATIONS
from kmedimg.runs.export import export_run


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "export", help="export a run's model as .keras, SavedModel or TFLite (raw pixels in)",
        description="Exports the model and checks the export's predictions with its own runtime "
                    "on held-out images of the run's dataset (not the calibration images): "
                    "more than --max-flip-rate changed decisions at the run's operating "
                    "point fails the export (exit status 3).")
    parser.add_argument("run", metavar="RUN_DIR", help="a run directory or a .keras file")
    parser.add_argument("--format", default="keras", choices=FORMATS, help="default: keras")
    parser.add_argument("--quantize", default="none", choices=QUANTIZATIONS,
                        help="TFLite quantisation (default: none)")
    parser.add_argument("--out", default=None,
                        help="output folder (default: RUN_DIR/export/<format>)")
    parser.add_argument("--calibration-data", default=None,
                        help="dataset directory for int8 calibration (default: the run's data)")
    parser.add_argument("--calibration-split", default="train", help="default: train")
    parser.add_argument("--calibration-samples", type=int, default=200, help="default: 200")
    parser.add_argument("--check-data", default=None,
                        help="dataset directory of the held-out check images (default: the run's)")
    parser.add_argument("--check-split", default=None, help="default: val, else test")
    parser.add_argument("--check-samples", type=int, default=200, help="default: 200")
    parser.add_argument("--max-flip-rate", type=float, default=DEFAULT_MAX_FLIP_RATE,
                        help="largest share of held-out decisions the export may change "
                             f"(default: {DEFAULT_MAX_FLIP_RATE})")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an export already in the output folder")
    parser.set_defaults(handler=_run)


def _run(args):
    record = export_run(args.run, args.format, args.quantize, out=args.out,
                        calibration_data=args.calibration_data,
                        calibration_split=args.calibration_split,
                        calibration_samples=args.calibration_samples,
                        check_data=args.check_data, check_split=args.check_split,
                        check_samples=args.check_samples, max_flip_rate=args.max_flip_rate,
                        overwrite=args.overwrite)
    check = record["check"]
    flips = "" if check["flips"] is None else (
        f", {check['flips']} decision flips (tolerance {check['max_flip_rate']:.1%})")
    print(f"{record['path']}  ({check['runtime']}: max |dp| = {check['max_abs_difference']:.2g}"
          f"{flips} on {check['images_from']})")
    return 0
