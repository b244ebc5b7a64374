"""The check protocol of ``imgclass diagnose``: a registry of checks, the context they share (the dataset, the
probabilities and features computed once, raw images in batches), and the flagged-sample rows of issues.csv."""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from ..data.base import ImageDataset
from ..errors import UsageError
from ..registry import Registry
from ..results.models import ProbeResult

__all__ = ["CHECKS", "Check", "DiagnoseContext", "Flag", "register_check"]

CHECKS: Registry[type["Check"]] = Registry("check")


def register_check(cls: type["Check"]) -> type["Check"]:
    if cls.Result.probe != cls.name:
        raise TypeError(f"check {cls.name!r}: its Result class names {cls.Result.probe!r}")
    CHECKS[cls.name] = cls
    return cls


@dataclass
class Flag:
    """One row of issues.csv: a sample a check flags."""

    check: str
    issue: str  # e.g. label_issue, near_duplicate, dark
    index: int  # position in the diagnosed dataset (or in --against for leakage partners)
    sample_id: str
    score: float | None  # the check's score (its direction is stated in the results)
    given: int | None = None
    suggested: int | None = None
    partner: str | None = None  # the other image of a duplicate pair (its sample id)
    partner_index: int | None = None
    partner_in: str = "data"  # "data" or "against": the dataset the partner belongs to
    note: str = ""


class Check(abc.ABC):
    """A data check: ``run(ctx)`` returns (JSON-able result, flags); ``render`` writes its report section."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    description: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset()  # of "labels", "probs", "features", "against", "human"
    Result: ClassVar[type[ProbeResult]] = ProbeResult

    @dataclass
    class Params:
        pass

    def __init__(self, **params: Any):
        from ..probes.base import build_params

        self.params = build_params(self.Params, params, owner=f"check {self.name!r}")

    @abc.abstractmethod
    def run(self, ctx: "DiagnoseContext") -> tuple[dict, list[Flag]]:
        """Measure; the result dict and the flagged samples."""

    @abc.abstractmethod
    def render(self, result: ProbeResult, section) -> None:
        """The check's report section."""

    def summary(self, result: ProbeResult) -> list[tuple[str, str]]:
        return []


@dataclass
class DiagnoseContext:
    """What checks share. Probabilities and features are computed on first use and kept for every check."""

    dataset: ImageDataset
    against: ImageDataset | None = None
    models: list = field(default_factory=list)  # Classifier objects
    probs_file: str | None = None
    cv: dict | None = None  # {"k", "recipe", "settings", "out", "model", "spec"}: cross-validated probabilities
    seed: int = 0
    batch_size: int = 128
    workers: int | None = None
    device: str | None = None
    on_error: str = "skip"
    progress: bool = True
    thumbnails: int = 24  # images per gallery
    _cache: dict = field(default_factory=dict)
    skipped: dict = field(default_factory=dict)  # "data" / "against" -> {index: {path, reason}}
    notes: list[str] = field(default_factory=list)

    def which(self, name: str) -> ImageDataset:
        if name == "against":
            if self.against is None:
                raise UsageError("this check needs --against DATA2 (e.g. the training set)")
            return self.against
        return self.dataset

    def engine(self, model_index: int = 0):
        key = ("engine", model_index)
        if key not in self._cache:
            from ..engine import Engine

            self._cache[key] = Engine(self.models[model_index], batch_size=self.batch_size, workers=self.workers,
                                      device=self.device, on_error=self.on_error, progress=self.progress)
        return self._cache[key]

    def labels(self) -> np.ndarray:
        return np.asarray(self.dataset.labels, dtype=np.int64)

    def probs(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(N, K) probabilities over the dataset's classes and the (N,) bool mask of samples that have them
        (unreadable files have none); averaged over the models, or read from --probs. None without either."""
        if "probs" in self._cache:
            return self._cache["probs"]
        out = None
        n, k = len(self.dataset), len(self.dataset.classes)
        if self.probs_file is not None:
            from .label_issues import check_probs

            try:
                p = np.load(self.probs_file, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise UsageError(f"--probs {self.probs_file}: not a readable .npy file ({e})") from None
            if p.ndim != 2 or p.shape != (n, k):
                raise UsageError(f"--probs {self.probs_file}: shape {p.shape}, expected ({n}, {k}): one row per sample "
                                 f"of {self.dataset.spec} in dataset order, one column per class")
            _, p = check_probs(self.labels(), p, n_classes=k, source=f"--probs {self.probs_file}")
            out = (p.astype(np.float64), np.ones(n, dtype=bool))
        elif self.cv is not None:
            from .crossval import cross_val_probs

            cv = self.cv
            p, ok, records = cross_val_probs(cv["spec"], k=cv["k"], recipe=cv["recipe"], settings=cv["settings"],
                                             out=cv["out"], model=cv["model"], seed=self.seed,
                                             batch_size=self.batch_size, workers=self.workers, device=self.device,
                                             progress=self.progress)
            self.cv["folds"] = records
            out = (p, ok)
        elif self.models:
            total = np.zeros((n, k))
            seen = np.zeros(n, dtype=bool)
            for m in range(len(self.models)):
                pred = self.engine(m).predict(self.dataset)
                probs = torch.softmax(pred.logits.double(), 1).numpy()
                total[pred.indices] += probs
                seen[pred.indices] = True
                self._note_skipped("data", pred.skipped)
            total[seen] /= len(self.models)
            out = (total, seen)
        self._cache["probs"] = out
        return out

    def features(self, which: str = "data") -> tuple[np.ndarray, np.ndarray]:
        """(n, D) float32 pre-logit features of the first model and the dataset indices they belong to."""
        key = ("features", which)
        if key not in self._cache:
            if not self.models:
                raise UsageError("this check needs a model's features: give --model SPEC")
            eng = self.engine(0)
            clf = eng.classifier

            def fn(b):
                with torch.no_grad():
                    return {"f": clf.features(eng.to_float(b.images)).float()}

            res = eng.map(self.which(which), fn, desc=f"features ({which})")
            self._note_skipped(which, res.skipped)
            f = res.outputs.get("f", torch.empty(0, 0)).cpu().numpy()
            self._cache[key] = (f, np.asarray(res.indices, dtype=np.int64))
        return self._cache[key]

    def iter_images(self, which: str = "data", *, batch_size: int = 256) -> Iterator[tuple[np.ndarray, list]]:
        """Decoded images as they are in the files (uint8 (3, H, W) tensors), in batches of dataset indices;
        unreadable files are recorded in ``skipped`` (or raise with on_error="fail")."""
        from tqdm.auto import tqdm

        ds = self.which(which)
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=list,
                                             num_workers=self.workers if self.workers is not None else 2)
        bar = tqdm(total=len(ds), desc=f"reading images ({which})", unit="img", disable=not self.progress,
                   leave=False, dynamic_ncols=True)
        for samples in loader:
            ok = [s for s in samples if s.image is not None]
            bad = [{"index": s.index, "path": s.path, "reason": s.error} for s in samples if s.image is None]
            if bad and self.on_error == "fail":
                from ..engine import BadImageError

                raise BadImageError(bad[0]["path"] or str(bad[0]["index"]), bad[0]["reason"])
            self._note_skipped(which, bad)
            bar.update(len(samples))
            if ok:
                yield np.array([s.index for s in ok], dtype=np.int64), [s.image for s in ok]
        bar.close()

    def _note_skipped(self, which: str, skipped: list[dict]) -> None:
        ds = self.which(which)
        for s in skipped:
            i = int(s["index"])
            self.skipped.setdefault(which, {})[i] = {"path": s.get("path") or ds.sample_id(i),
                                                     "reason": s.get("reason")}
