"""`kmedimg tune` (transitional: forwards to the command code not yet moved here)."""

from kmedimg.tuning.command import add_tune_command as add_parser  # noqa: F401
