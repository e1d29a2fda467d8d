"""`kmedimg demo` (transitional: forwards to the command code not yet moved here)."""

from kmedimg.demo import add_demo_command as add_parser  # noqa: F401
