"""`kmedimg train` (transitional: forwards to the command code not yet moved here)."""

from kmedimg.training import add_train_command as add_parser  # noqa: F401
