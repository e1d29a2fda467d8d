"""`kmedimg explain` (transitional: forwards to the command code not yet moved here)."""

from kmedimg.evaluation.explain import add_explain_command as add_parser  # noqa: F401
