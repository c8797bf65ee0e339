"""Extra CLI subcommands. Every module here is imported by the CLI and registers its
subcommands with :func:`icp_influence.cli.add_command` (``register(subparsers)``)."""
import importlib
import pkgutil

for _m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")
