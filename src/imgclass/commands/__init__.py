"""Subcommands beyond ``eval``: each module here defines ``add_command(subparsers)``.

``add_command`` adds one subcommand whose handler (``set_defaults(func=...)``) returns an exit code.
The CLI imports every module of this package, so adding a command is adding a module.
"""

import importlib
import pkgutil


def add_all(subparsers) -> None:
    for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        importlib.import_module(f"{__name__}.{m.name}").add_command(subparsers)
