"""The `kmedimg` command: one thin module per subcommand.

`COMMANDS` lists every subcommand explicitly as `(name, module)`; each module in
`kmedimg.cli` defines `add_parser(subparsers)`, which adds its parser and sets
`handler`. A command module holds argument parsing and printing only: the work is
done by the library function it calls (`kmedimg.runs`, `kmedimg.data`, ...).

Exit status: 0 success; 1 some inputs failed and were listed (`predict`); 2 an
expected error (bad argument, input or file: one line, no traceback); 3 an export
failed its check; 70 an unexpected error (a bug: the traceback and a request to
report it). `kmedimg --debug COMMAND ...` shows the traceback of expected errors too.
"""

import argparse
import importlib
import os
import sys
import traceback

from kmedimg import __version__
from kmedimg.core.errors import KmedimgError
from kmedimg.core.model_files import check_model_file, model_file_of, refused_class_error
from kmedimg.data.manifest_files import read_error

COMMANDS = [
    ("convert", "kmedimg.cli.convert"),
    ("inspect", "kmedimg.cli.inspect"),
    ("backbones", "kmedimg.cli.backbones"),
    ("weights", "kmedimg.cli.weights"),
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
_EXTRAS = {"keras_tuner": "tune", "pydicom": "dicom", "nibabel": "nifti",
           "tensorflow_datasets": "tfds"}

# Failures a user can fix from the message alone: printed as one line. OSError covers
# a missing file, permission denied and a full disk (its message names the path).
EXPECTED_ERRORS = (KmedimgError, ValueError, OSError, MemoryError)
# TensorFlow's file-system errors (tf.io.gfile: local, gs://, ram://), by name, and any
# TensorFlow error raised by its file I/O module ("Not a directory"): the CLI need not
# import TensorFlow to recognise them.
_TF_FILE_ERRORS = ("NotFoundError", "PermissionDeniedError", "AlreadyExistsError")
_TF_FILE_IO = os.path.join("tensorflow", "python", "lib", "io")
UNEXPECTED_EXIT = 70
# The argument naming the model (a run directory or a .keras file) of the commands that
# open one: the file is checked first, and Keras refusing a class in it is explained.
_MODEL_ARGUMENTS = {"evaluate": "run_dir", "predict": "model", "explain": "model",
                    "export": "run"}
ISSUES_URL = "https://github.com/kmedimg/kmedimg/issues"


def build_parser():
    parser = argparse.ArgumentParser(
        prog="kmedimg", description="CNN transfer learning on medical images."
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of every error (before COMMAND)")
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
        if _model_path(args):
            check_model_file(_model_path(args))
        return args.handler(args) or 0
    except KeyboardInterrupt:
        print(f"kmedimg {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the one place every failure is reported
        return _report(args, error)


def _model_path(args):
    """The model file a command opens (`RUN_DIR/model.keras` for a run directory), or None."""
    path = getattr(args, _MODEL_ARGUMENTS.get(args.command, ""), None)
    if not path:
        return None
    return model_file_of(path)


def _is_expected(error):
    if isinstance(error, EXPECTED_ERRORS):
        return True
    kind = type(error)
    if not kind.__module__.startswith("tensorflow"):
        return False
    frames = traceback.extract_tb(error.__traceback__)
    return kind.__name__ in _TF_FILE_ERRORS or any(_TF_FILE_IO in frame.filename
                                                  for frame in frames[-3:])


def _one_line(error):
    text = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, OSError) and error.filename and str(error.filename) not in text:
        text = f"{text}: {error.filename}"
    if isinstance(error, MemoryError):
        text = f"out of memory ({text}); try a smaller --batch-size or image size"
    return text


def _report(args, error):
    """Prints `error` (one line if expected, else the traceback) and returns the exit status."""
    refused = _model_path(args) and refused_class_error(_model_path(args), error)
    # A corrupt shard met inside tf.data (train, evaluate, predict) is named, not a traceback.
    error = refused or read_error(error) or error
    if not _is_expected(error):
        traceback.print_exc()
        print(f"kmedimg {args.command}: unexpected error {type(error).__name__}: this is a bug; "
              f"please report it with the command and the traceback above at {ISSUES_URL}",
              file=sys.stderr)
        return UNEXPECTED_EXIT
    if args.debug:
        traceback.print_exc()
    print(f"kmedimg {args.command}: error: {_one_line(error)}", file=sys.stderr)
    return getattr(error, "exit_code", 2)


if __name__ == "__main__":
    sys.exit(main())
