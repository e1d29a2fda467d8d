"""The `kmedimg` command.

Each subcommand lives next to the code it drives and is listed explicitly in
`SUBCOMMANDS` as "module:function"; the function receives the argparse subparsers
object and adds its parser, setting `handler` as the default.
"""

import argparse
import importlib
import sys

SUBCOMMANDS = [
    "kmedimg.data.cli:add_convert_command",
    "kmedimg.data.cli:add_inspect_command",
    "kmedimg.models.command:add_parser",
    "kmedimg.tuning.command:add_tune_command",
    "kmedimg.evaluation.evaluate:add_evaluate_command",
    "kmedimg.evaluation.predict:add_predict_command",
    "kmedimg.evaluation.explain:add_explain_command",
    "kmedimg.evaluation.export:add_export_command",
    "kmedimg.training:add_train_command",
    "kmedimg.recipes:add_advise_command",
    "kmedimg.demo:add_demo_command",
]


def build_parser():
    parser = argparse.ArgumentParser(
        prog="kmedimg", description="CNN transfer learning on medical images."
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for entry in SUBCOMMANDS:
        module_name, function_name = entry.split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            _add_unavailable_command(subparsers, entry, error)
            continue
        getattr(module, function_name)(subparsers)
    return parser


# Optional extras a subcommand may need, by the package that failed to import.
_EXTRAS = {"keras_tuner": "tune", "tensorboard": "tune", "matplotlib": "report",
           "pydicom": "dicom", "nibabel": "nifti"}


def _add_unavailable_command(subparsers, entry, error):
    """Keeps a subcommand whose optional dependency is missing visible, with the fix."""
    command = entry.split(":")[1].replace("add_", "").replace("_command", "")
    missing = getattr(error, "name", None) or str(error)
    extra = _EXTRAS.get(str(missing).split(".")[0])
    hint = f"pip install 'kmedimg[{extra}]'" if extra else "reinstall kmedimg"
    message = f"needs the missing package {missing!r}: {hint}"

    def handler(args):
        raise ValueError(message)

    parser = subparsers.add_parser(command, help=f"(unavailable: {message})")
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    parser.set_defaults(handler=handler)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        import kmedimg

        print(kmedimg.__version__)
        return 0
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return args.handler(args) or 0
    except (ValueError, FileNotFoundError) as error:
        print(f"kmedimg {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
