"""Extra CLI subcommands. Every module here is imported by the CLI and registers its
subcommands with :func:`icp_influence.cli.add_command` (``register(subparsers)``)."""
from ..registry import import_submodules

import_submodules(__name__)
