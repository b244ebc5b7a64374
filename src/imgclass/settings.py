"""``--set`` values, one parser for every command: ``eval`` and ``explain`` take ``GROUP.PARAM=VALUE``
(a probe's or a method's parameter), ``train`` takes ``KEY=VALUE``.

Values are Python literals (``20``, ``0.5``, ``(1, 3)``, ``{'width': 32}``, ``'text'``); ``true``/``false`` and
``none``/``null`` in any case are booleans and None; anything else is kept as the text it is (``2/255,8/255``).
"""

from __future__ import annotations

import ast
from typing import Any, Iterable

from .errors import UsageError

__all__ = ["parse_value", "parse_sets", "parse_flat_sets"]


def parse_value(raw: str) -> Any:
    s = raw.strip()
    low = s.lower()
    if low in {"true", "false"}:
        return low == "true"
    if low in {"none", "null"}:
        return None
    try:
        return ast.literal_eval(s)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return s


def _split(item: str, form: str) -> tuple[str, str]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"--set {item!r}: expected {form}")
    return key.strip(), raw


def parse_sets(items: Iterable[str], *, form: str = "PROBE.PARAM=VALUE",
               groups: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """``["calibration.n_bins=20"]`` -> ``{"calibration": {"n_bins": 20}}``; ``groups`` (if given) are the only
    first parts allowed."""
    allowed = None if groups is None else list(groups)
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, raw = _split(item, form)
        group, dot, param = key.partition(".")
        if not dot or not group or not param:
            raise UsageError(f"--set {item!r}: expected {form}")
        if allowed is not None and group not in allowed:
            raise UsageError(f"--set {item!r}: {group!r} is not among {', '.join(allowed) or 'the ones that run'}")
        out.setdefault(group, {})[param] = parse_value(raw)
    return out


def parse_flat_sets(items: Iterable[str], *, form: str = "KEY=VALUE") -> dict[str, Any]:
    """``["lr=0.05", "arch_kwargs={'width': 32}"]`` -> ``{"lr": 0.05, "arch_kwargs": {"width": 32}}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, raw = _split(item, form)
        out[key] = parse_value(raw)
    return out
