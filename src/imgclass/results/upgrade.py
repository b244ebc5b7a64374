"""Versioned upgrades of results.json: ``UPGRADES[v]`` turns a version-``v`` dict into version ``v + 1``."""

from __future__ import annotations

import copy
from typing import Callable

from .models import SCHEMA_VERSION, ResultsError

__all__ = ["UPGRADES", "upgrade"]


def _v1_to_v2(d: dict) -> dict:
    """0.1.0 -> 0.2.0: runs gain a kind and a (missing) per-sample file; headline numbers and protocols are derived
    by the typed results, so nothing else changes."""
    d = dict(d)
    d.setdefault("kind", "eval")
    d.setdefault("samples", None)
    d.pop("headline", None)
    d.pop("protocols", None)
    d["schema_version"] = 2
    return d


UPGRADES: dict[int, Callable[[dict], dict]] = {1: _v1_to_v2}


def upgrade(raw: dict, *, source: str = "results", copy_input: bool = True) -> dict:
    """Bring a results dict to the current schema version (a copy, unless ``copy_input`` is False for a dict nobody
    else holds, e.g. one just parsed from a file)."""
    v = raw.get("schema_version")
    if not isinstance(v, int) or isinstance(v, bool):
        raise ResultsError(f"{source}: no schema_version (not a results.json of imgclass?)")
    if v > SCHEMA_VERSION:
        raise ResultsError(f"{source}: results schema version {v} is newer than this imgclass reads "
                            f"(up to {SCHEMA_VERSION}): upgrade imgclass")
    if v < 1 or any(k not in UPGRADES for k in range(v, SCHEMA_VERSION)):
        raise ResultsError(f"{source}: unknown results schema version {v} (known: 1..{SCHEMA_VERSION})")
    d = copy.deepcopy(raw) if v < SCHEMA_VERSION and copy_input else dict(raw)
    for k in range(v, SCHEMA_VERSION):
        d = UPGRADES[k](d)
    d.pop("headline", None)  # derived on load from the typed results
    d.pop("protocols", None)
    return d
