"""Spec strings: ``scheme:target?key=value&key=value``, shared by the CLI and the API."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from .errors import UsageError, unknown_name

__all__ = ["Spec", "parse_spec", "SpecError"]


class SpecError(UsageError):
    """A spec string is malformed, names an unknown scheme, or has a bad option."""


@dataclass(frozen=True)
class Spec:
    scheme: str
    target: str
    options: dict[str, str] = field(default_factory=dict)
    text: str = ""

    def __str__(self) -> str:
        return self.text

    def pop_options(self) -> "Options":
        return Options(self, dict(self.options))


class Options:
    """Typed access to a spec's options; ``finish()`` rejects any option nobody read."""

    def __init__(self, spec: Spec, opts: dict[str, str]):
        self.spec = spec
        self._opts = opts

    def __contains__(self, key: str) -> bool:
        return key in self._opts

    def set(self, key: str, value: str) -> None:
        """Add (or replace) an option still to be read, e.g. one handed on from an outer spec."""
        self._opts[key] = value

    def str(self, key: str, default: str | None = None) -> str | None:
        return self._opts.pop(key, default)

    def bool(self, key: str, default: bool) -> bool:
        v = self._opts.pop(key, None)
        if v is None:
            return default
        if v.lower() in {"1", "true", "yes", "on"}:
            return True
        if v.lower() in {"0", "false", "no", "off"}:
            return False
        raise SpecError(f"{self.spec.text}: option {key}={v!r} is not a boolean (true/false)")

    def int(self, key: str, default: int | None = None) -> int | None:
        v = self._opts.pop(key, None)
        if v is None:
            return default
        try:
            return int(v)
        except ValueError:
            raise SpecError(f"{self.spec.text}: option {key}={v!r} is not an integer") from None

    def float(self, key: str, default: float | None = None) -> float | None:
        v = self._opts.pop(key, None)
        if v is None:
            return default
        try:
            return float(v)
        except ValueError:
            raise SpecError(f"{self.spec.text}: option {key}={v!r} is not a number") from None

    def floats(self, key: str, n: int | None = None) -> tuple[float, ...] | None:
        v = self._opts.pop(key, None)
        if v is None:
            return None
        try:
            vals = tuple(float(x) for x in v.split(","))
        except ValueError:
            raise SpecError(f"{self.spec.text}: option {key}={v!r} is not a comma-separated list of numbers") from None
        if n is not None and len(vals) == 1:
            vals = vals * n
        if n is not None and len(vals) != n:
            raise SpecError(f"{self.spec.text}: option {key} needs {n} values, got {len(vals)}")
        return vals

    def finish(self) -> None:
        if self._opts:
            raise SpecError(f"{self.spec.text}: unknown option(s) {', '.join(sorted(self._opts))}")


def parse_spec(text: str, known: dict[str, object], *, infer=None) -> Spec:
    """Split ``text`` into scheme, target and options.

    ``known`` maps the valid schemes (for the error message). A string without a known scheme is
    passed to ``infer`` (which may guess a scheme from a path) before it is rejected.
    """
    if not isinstance(text, str) or not text:
        raise SpecError(f"empty spec; known schemes: {', '.join(sorted(known))}")
    body, opts = text, {}
    if "?" in text:
        body, query = text.rsplit("?", 1)
        opts = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=False))
    scheme, sep, target = body.partition(":")
    if sep and scheme in known:
        return Spec(scheme, target, opts, text)
    if not sep and body in known:
        return Spec(body, "", opts, text)
    if infer is not None:
        guessed = infer(body)
        if guessed is not None:
            return Spec(guessed, body, opts, text)
    shown = scheme if sep else body
    raise SpecError(f"{text!r}: {unknown_name('scheme', shown, known)}")
