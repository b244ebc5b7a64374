"""Probes: one module per capability, registered by decorator (see ``base.py``)."""

from .base import PROBES, CliFlag, Probe, ProbeContext, get_probe, register_probe, to_jsonable
from . import accuracy, calibration  # noqa: F401  (registration)

__all__ = ["PROBES", "CliFlag", "Probe", "ProbeContext", "get_probe", "register_probe", "to_jsonable"]
