"""Probes: one module per capability, registered by decorator (see ``base.py``).

Every module of this package is imported here, so adding a probe is adding a module.
"""

import importlib
import pkgutil

from .base import PROBES, CliFlag, Probe, ProbeContext, get_probe, register_probe, to_jsonable

for _m in pkgutil.iter_modules(__path__):
    if _m.name not in {"base", "plots"}:
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["PROBES", "CliFlag", "Probe", "ProbeContext", "get_probe", "register_probe", "to_jsonable"]
