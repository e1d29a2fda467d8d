"""The `kmedimg` command: one thin module per subcommand.

`COMMANDS` lists every subcommand explicitly as `(name, module)`; each module in
`kmedimg.cli` defines `add_parser(subparsers)`, which adds its parser and sets
`handler`. A command module holds argument parsing and printing only: the work is
done by the library function it calls (`kmedimg.runs`, `kmedimg.data`, ...).
"""

import argparse
import importlib
import sys

from kmedimg import __version__

COMMANDS = [
    ("convert", "kmedimg.cli.convert"),
    ("inspect", "kmedimg.cli.inspect"),
    ("backbones", "kmedimg.cli.backbones"),
    ("advise", "kmedimg.cli.advise"),
    ("train", "kmedimg.cli.train"),
    ("lr-find", "kmedimg.cli.lr_find"),
    ("tune", "kmedimg.cli.tune"),
    ("evaluate", "kmedimg.cli.evaluate"),
    ("predict", "kmedimg.cli.predict"),
    ("explain", "kmedimg.cli.explain"),
    ("export", "kmedimg.cli.export"),
    ("demo", "kmedimg.cli.demo"),
]

# Optional extras a subcommand may need, by the top-level package that failed to import.
_EXTRAS = {"keras_tuner": "tune", "matplotlib": "report", "pydicom": "dicom",
           "nibabel": "nifti", "tensorflow_datasets": "tfds"}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="kmedimg", description="CNN transfer learning on medical images."
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            missing = getattr(error, "name", None) or ""
            if missing.split(".")[0] not in _EXTRAS:
                raise
            _add_unavailable_command(subparsers, name, missing)
            continue
        module.add_parser(subparsers)
    return parser


def _add_unavailable_command(subparsers, name, missing):
    """Keeps a subcommand whose optional dependency is missing visible, with the fix."""
    extra = _EXTRAS[missing.split(".")[0]]
    message = f"needs the missing package {missing!r}: pip install 'kmedimg[{extra}]'"

    def handler(args):
        raise ValueError(message)

    parser = subparsers.add_parser(name, help=f"(unavailable: {message})")
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    parser.set_defaults(handler=handler)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        print(__version__)
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
