"""`kmedimg export` (transitional: forwards to the command code not yet moved here)."""

from kmedimg.evaluation.export import add_export_command as add_parser  # noqa: F401
