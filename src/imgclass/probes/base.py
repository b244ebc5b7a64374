"""The probe protocol: ``run(ctx) -> result dict`` and ``render(result, section)``; a registry by decorator."""

from __future__ import annotations

import abc
import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np
import torch

from ..data.base import ImageDataset
from ..engine import Engine, Predictions
from ..errors import ParameterError
from ..models.classifier import Classifier
from ..registry import Registry
from ..results.models import Metric, ProbeResult
from ..results.samples import SampleTable

__all__ = ["Probe", "ProbeContext", "CliFlag", "PROBES", "register_probe", "get_probe", "to_jsonable", "Metric",
           "ProbeResult", "listed_params", "build_params"]

PROBES: Registry[type["Probe"]] = Registry("probe")


def register_probe(cls: type["Probe"]) -> type["Probe"]:
    """Class decorator: make a probe available by its ``name``; a probe that lacks ``run`` or ``render`` is refused."""
    if not getattr(cls, "name", None):
        raise TypeError(f"{cls.__name__} needs a 'name'")
    if cls.Result is not ProbeResult and cls.Result.probe != cls.name:
        raise TypeError(f"probe {cls.name!r}: its Result class {cls.Result.__name__} names probe {cls.Result.probe!r}")
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise TypeError(f"probe {cls.name!r} ({cls.__name__}) does not implement {missing}")
    PROBES[cls.name] = cls
    return cls


def get_probe(name: str, **params: Any) -> "Probe":
    return PROBES[name](**params)


@dataclass
class ProbeContext:
    """What a probe may use: the model, the data, the batched engine, the seed."""

    classifier: Classifier
    dataset: ImageDataset
    engine: Engine
    seed: int = 0
    shared: dict = field(default_factory=dict)
    samples: SampleTable | None = None  # per-sample outputs (samples.npz); None: not recorded

    def predictions(self) -> Predictions:
        return self.engine.predict(self.dataset)

    def record_samples(self, probe: str, indices: np.ndarray, **arrays: Any) -> None:
        """Keep a probe's per-sample arrays (first axis: the samples at dataset ``indices``) for samples.npz."""
        if self.samples is not None:
            self.samples.add(probe, np.asarray(indices, dtype=np.int64),
                             **{k: v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for k, v in arrays.items()})

    def generator(self, salt: str) -> np.random.Generator:
        """A numpy generator that depends only on the run seed and the probe's own salt."""
        import zlib

        return np.random.default_rng([self.seed, zlib.crc32(salt.encode())])


@dataclass(frozen=True)
class CliFlag:
    """A probe parameter exposed as an ``imgclass eval`` flag (e.g. ``--eps 2/255,8/255`` -> ``eps``).

    ``parse`` turns the flag's string into the parameter's value; the flag only applies when the probe runs.
    """

    flag: str
    param: str
    help: str
    parse: Callable[[str], Any] = str


class Probe(abc.ABC):
    """Base class: subclasses set ``name``, ``title``, a ``Params`` dataclass, and implement ``run``/``render``.

    ``cli_flags`` lists parameters that deserve their own ``imgclass eval`` flag; every parameter is
    also reachable as ``--set NAME.PARAM=VALUE``.
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    description: ClassVar[str] = ""
    cli_flags: ClassVar[tuple[CliFlag, ...]] = ()
    needs_labels: ClassVar[bool] = True  # False: the probe also runs on unlabeled data (a flat folder of images)
    Result: ClassVar[type[ProbeResult]] = ProbeResult  # the typed result (headline metrics, protocol)

    @dataclass
    class Params:
        pass

    def __init__(self, **params: Any):
        self.params = build_params(self.Params, params, owner=f"probe {self.name!r}")

    def param_dict(self) -> dict:
        return to_jsonable(dataclasses.asdict(self.params))

    @abc.abstractmethod
    def run(self, ctx: ProbeContext) -> dict:
        """Measure: the probe's JSON-able result."""

    @abc.abstractmethod
    def render(self, result: ProbeResult, section) -> None:
        """Write the probe's report section from its (typed) result."""

    def summary(self, result: ProbeResult) -> list[tuple[str, str]]:
        """(label, value) pairs for the CLI table and the report summary."""
        return []


def build_params(params_cls, params: dict, *, owner: str):
    """``params_cls(**params)`` for a probe or a check: unknown names are a ParameterError with the close matches
    and the list; list parameters given as one string are split (``listed_params``)."""
    fields = {f.name for f in dataclasses.fields(params_cls)}
    unknown = set(params) - fields
    if unknown:
        import difflib

        close = sorted({c for u in unknown for c in difflib.get_close_matches(u, fields, n=2)})
        hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
        raise ParameterError(f"{owner} has no parameter(s) {', '.join(sorted(unknown))}{hint}; "
                             f"parameters: {', '.join(sorted(fields)) or 'none'}")
    return params_cls(**listed_params(params_cls, params))


def listed_params(params_cls, params: dict) -> dict:
    """A list parameter given one string (``--set adaptation.methods=norm`` or ``=norm,tent``) becomes the tuple of
    its comma-separated names, not the characters of the string; parameters that also take a string keep it, and a
    Params class with its own ``__post_init__`` reads strings itself."""
    out = dict(params)
    if hasattr(params_cls, "__post_init__"):
        return out
    for f in dataclasses.fields(params_cls):
        v = out.get(f.name)
        if not isinstance(v, str):
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        takes_str = "str |" in str(f.type) or "| str" in str(f.type) or str(f.type) in ("str", "str | None")
        if isinstance(default, (tuple, list)) and not takes_str:
            out[f.name] = tuple(x.strip() for x in v.split(",") if x.strip())
    return out


def to_jsonable(obj: Any) -> Any:
    """Tensors, numpy values and dataclasses to plain JSON types (floats keep full precision)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj
