"""`kmedimg predict` (transitional: forwards to the command code not yet moved here)."""

from kmedimg.evaluation.predict import add_predict_command as add_parser  # noqa: F401
