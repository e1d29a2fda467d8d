"""`kmedimg backbones` (transitional: forwards to the command code not yet moved here)."""

from kmedimg.models.command import add_parser as add_parser  # noqa: F401
