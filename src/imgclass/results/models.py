"""Typed results: one pydantic model per probe result, and the whole results.json around them.

A probe's result class declares the fields it always writes (typed), its headline numbers
(:class:`Metric`: what they are, which direction is better) and the protocol that produced them;
everything else a probe writes (curves, galleries, per-class tables) is kept as validated JSON
beside the declared fields. Readers (the report, the run store, ``runs compare``, the leaderboard)
go through these classes, never through ad hoc dict keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, field_validator

from ..errors import ImgclassError

__all__ = ["Metric", "ProbeResult", "Results", "SCHEMA_VERSION", "Number", "ResultsError", "result_type"]

SCHEMA_VERSION = 2  # 1: imgclass 0.1.0; 2 (0.2.0): kind, headline, protocols, samples file

Number = float | int


@dataclass(frozen=True)
class Metric:
    """A headline number of a probe: its key in :meth:`ProbeResult.headline`, a label and its direction."""

    key: str
    label: str
    higher_is_better: bool = True


class ResultsError(ImgclassError):
    """A results.json that cannot be read: missing, truncated, of an unknown version, or invalid."""


class ProbeResult(BaseModel):
    """Base of every probe's result. Dict-style access (``r["top1"]``, ``r.get(...)``) reads fields and extras."""

    model_config = ConfigDict(extra="allow", validate_assignment=False)

    probe: ClassVar[str] = ""
    # the headline numbers the probe always reports; probes with per-epsilon or per-method numbers add more in
    # ``headline()`` with keys of the form ``NAME@PART``
    metrics: ClassVar[tuple[Metric, ...]] = ()
    primary: ClassVar[str | None] = None  # the number a leaderboard column shows

    warnings: list[str] = Field(default_factory=list)

    # dict-style reading, so renderers read typed results and plain dicts alike
    def __getitem__(self, key: str) -> Any:
        if key in type(self).model_fields:
            return getattr(self, key)
        extra = self.__pydantic_extra__ or {}
        if key in extra:
            return extra[key]
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and (key in type(self).model_fields or key in (self.__pydantic_extra__ or {}))

    def keys(self) -> Iterator[str]:
        return iter(self.to_dict())

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def headline(self) -> dict[str, float | None]:
        """The probe's numbers worth comparing across runs (finite floats or None), keyed by metric name."""
        out = {}
        for m in self.metrics:
            v = self.get(m.key)
            out[m.key] = _number(v)
        return out

    def metric_info(self, key: str) -> Metric:
        """What a headline key means: declared metrics, or ``NAME@PART`` of a declared ``NAME``."""
        base = key.split("@", 1)[0]
        for m in self.metrics:
            if m.key == key:
                return m
            if m.key == base:
                return Metric(key, f"{m.label} @ {key.split('@', 1)[1]}", m.higher_is_better)
        return Metric(key, key, True)

    def protocol(self, params: dict) -> dict:
        """How the numbers were produced (``params``: the probe's parameters as run), for tables' headers."""
        return {}


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    spec: str
    source: str | None = None
    num_classes: int | None = None
    weights_sha256: str | None = None  # of the weights as evaluated (tensor names, dtypes, shapes and bytes)
    # runs of one model: seeds of one training recipe share a group (leaderboard rows aggregate over it)
    group: str | None = None
    group_label: str | None = None


class DataInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    spec: str
    n_samples: int
    n_classes: int | None = None
    files_sha256: str | None = None


class Results(BaseModel):
    """A results.json: what ran, on what, how, and each probe's typed result (``probes[name]``)."""

    model_config = ConfigDict(extra="allow")

    schema_version: int = SCHEMA_VERSION
    kind: str = "eval"  # eval, train, diagnose...
    imgclass_version: str
    created: str
    command: list[str] | None = None
    seed: int = 0
    model: ModelInfo
    data: DataInfo
    settings: dict = Field(default_factory=dict)
    environment: dict = Field(default_factory=dict)
    probe_params: dict[str, dict] = Field(default_factory=dict)
    probes: dict[str, SerializeAsAny[ProbeResult]] = Field(default_factory=dict)
    timing: dict[str, Number | None] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
    samples: str | None = None  # the per-sample file beside results.json (samples.npz), if written

    @field_validator("probes", mode="before")
    @classmethod
    def _typed_probes(cls, value: Any) -> Any:
        """Each probe's result validated by that probe's own result class."""
        if not isinstance(value, dict):
            return value
        return {name: result_type(name).model_validate(r) if isinstance(r, dict) else r for name, r in value.items()}

    def headline(self) -> dict[str, float | None]:
        """Every probe's headline numbers, keyed ``PROBE.METRIC``."""
        return {f"{name}.{k}": v for name, r in self.probes.items() for k, v in r.headline().items()}

    def protocols(self) -> dict[str, dict]:
        return {name: r.protocol(self.probe_params.get(name, {})) for name, r in self.probes.items()}

    def to_dict(self) -> dict:
        """The JSON form (what results.json holds), headline numbers and protocols included."""
        d = self.model_dump(mode="json")
        d["headline"] = self.headline()
        d["protocols"] = self.protocols()
        return d


def result_type(probe: str) -> type[ProbeResult]:
    """The result class of a probe by name (the base class for a probe this installation does not know)."""
    from ..diagnose import CHECKS
    from ..probes import PROBES

    cls = PROBES.get(probe) or CHECKS.get(probe)
    return getattr(cls, "Result", ProbeResult) if cls is not None else ProbeResult
