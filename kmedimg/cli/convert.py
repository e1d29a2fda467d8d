"""`kmedimg convert` (transitional: forwards to the command code not yet moved here)."""

from kmedimg.data.cli import add_convert_command as add_parser  # noqa: F401
