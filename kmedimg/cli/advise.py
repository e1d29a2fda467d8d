"""`kmedimg advise` (transitional: forwards to the command code not yet moved here)."""

from kmedimg.recipes import add_advise_command as add_parser  # noqa: F401
