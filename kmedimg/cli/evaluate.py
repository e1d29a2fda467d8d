"""`kmedimg evaluate` (transitional: forwards to the command code not yet moved here)."""

from kmedimg.evaluation.evaluate import add_evaluate_command as add_parser  # noqa: F401
