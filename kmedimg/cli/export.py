"""`kmedimg export RUN_DIR`: the model as .keras, SavedModel or TFLite, checked by its runtime."""

from kmedimg.evaluation.export import FORMATS, QUANTIZATIONS
from kmedimg.runs.export import export_run


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "export", help="export a run's model as .keras, SavedModel or TFLite (raw pixels in)",
        description="Exports the model and checks the export's predictions with its own runtime.")
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
    parser.set_defaults(handler=_run)


def _run(args):
    record = export_run(args.run, args.format, args.quantize, out=args.out,
                        calibration_data=args.calibration_data,
                        calibration_split=args.calibration_split,
                        calibration_samples=args.calibration_samples)
    check = record["check"]
    print(f"{record['path']}  ({check['runtime']}: max |dp| = {check['max_abs_difference']:.2g} "
          f"on {check['images']} images)")
    return 0
