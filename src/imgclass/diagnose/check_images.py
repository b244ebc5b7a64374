"""Checks ``image_properties`` (cleanvision's dark, light, blurry, low information, grayscale, odd size and aspect
ratio, exactly as cleanvision scores them: ``properties.py``) and ``outliers`` (the average cosine distance to the
k nearest neighbours in a model's feature space, as cleanlab's ``OutOfDistribution`` scores it: ``outliers.py``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..results.models import Metric, ProbeResult
from .base import Check, DiagnoseContext, Flag, register_check


class ImagePropertiesResult(ProbeResult):
    probe = "image_properties"
    metrics = (Metric("n_flagged_images", "images with a property issue", False),)
    primary = "n_flagged_images"

    n_evaluated: int
    counts: dict[str, int]
    thresholds: dict[str, float]
    n_flagged_images: int

    def headline(self) -> dict[str, float | None]:
        return {"n_flagged_images": float(self.n_flagged_images), **{f"count@{k}": float(v)
                                                                    for k, v in self.counts.items()}}

    def protocol(self, params: dict) -> dict:
        return {"definitions": "cleanvision 0.3.7 issue scores (low = has the issue), flagged below the threshold",
                "thresholds": self.thresholds}


@register_check
class ImagePropertiesCheck(Check):
    name = "image_properties"
    title = "Image properties"
    description = "dark, light, blurry, low-information, grayscale, odd size and aspect ratio (cleanvision's scores)"
    needs = frozenset()
    Result = ImagePropertiesResult

    @dataclass
    class Params:
        thresholds: dict | None = None  # per issue, overriding cleanvision's defaults
        listed: int = 50

    def run(self, ctx: DiagnoseContext) -> tuple[dict, list[Flag]]:
        from .properties import DEFAULT_THRESHOLDS, ISSUE_TYPES, concat_properties, image_properties, \
            property_issues, property_scores

        parts, idx = [], []
        for indices, images in ctx.iter_images("data", batch_size=128):
            parts.append(image_properties(images))
            idx.append(indices)
        index = np.concatenate(idx) if idx else np.empty(0, dtype=np.int64)
        scores = property_scores(concat_properties(parts))
        # only the user's overrides: odd_size's default threshold depends on the data (1.0 when nearly every image
        # has the same size), which property_issues decides
        issues = property_issues(scores, thresholds=self.params.thresholds or None)
        thresholds = {**DEFAULT_THRESHOLDS, **(self.params.thresholds or {})}
        if "odd_size" not in (self.params.thresholds or {}) and "size" in scores and len(index):
            from .properties import size_scores  # the threshold cleanvision derives from the data

            thresholds["odd_size"] = size_scores(scores["size"])[1]
        ds = ctx.dataset
        flags, listed = [], {}
        for kind in ISSUE_TYPES:
            rows = np.flatnonzero(issues[kind])
            rows = rows[np.argsort(scores[kind][rows], kind="stable")]
            listed[kind] = [{"sample_id": ds.sample_id(int(index[r])), "score": float(scores[kind][r])}
                            for r in rows[:self.params.listed]]
            flags += [Flag(self.name, kind, int(index[r]), ds.sample_id(int(index[r])), float(scores[kind][r]))
                      for r in rows]
        any_issue = np.zeros(len(index), dtype=bool)
        for kind in ISSUE_TYPES:
            any_issue |= issues[kind]
        res = {"n_evaluated": int(len(index)), "counts": {k: int(issues[k].sum()) for k in ISSUE_TYPES},
               "thresholds": {k: float(thresholds[k]) for k in ISSUE_TYPES if k in thresholds},
               "n_flagged_images": int(any_issue.sum()), "flagged": listed,
               "score_quantiles": {k: np.quantile(scores[k], [0.01, 0.5]).tolist() if len(index) else []
                                   for k in ISSUE_TYPES}}
        return res, flags

    def summary(self, r: ProbeResult) -> list[tuple[str, str]]:
        shown = ", ".join(f"{k} {v}" for k, v in r["counts"].items() if v) or "none"
        return [("images with an issue", f"{r['n_flagged_images']} of {r['n_evaluated']} ({shown})")]

    def render(self, r: ProbeResult, sec) -> None:
        from .render import render_gallery

        sec.p("Scores as cleanvision defines them (in [0, 1]; low = has the issue); an image is flagged below the "
              "threshold.")
        sec.table(["issue", "flagged", "threshold"],
                  [(k, v, r["thresholds"].get(k, "-")) for k, v in r["counts"].items()])
        render_gallery(sec, r.get("gallery"), "Flagged images (lowest score first within each issue)")


class OutliersResult(ProbeResult):
    probe = "outliers"
    metrics = (Metric("n_outliers", "outliers", False),)
    primary = "n_outliers"

    n_evaluated: int
    n_outliers: int
    k: int
    threshold: float | None = None

    def protocol(self, params: dict) -> dict:
        return {"score": "exp(-mean cosine distance to the k nearest neighbours in the model's pre-logit features) "
                         "(cleanlab OutOfDistribution)", "k": self.k,
                "flag": "distance above Q3 + (1/threshold - 1) IQR (cleanlab Datalab)", "threshold": self.threshold}


@register_check
class OutliersCheck(Check):
    name = "outliers"
    title = "Outliers"
    description = "k-nearest-neighbour distance in a model's feature space (cleanlab's outlier score)"
    needs = frozenset({"features"})
    Result = OutliersResult

    @dataclass
    class Params:
        k: int = 10
        threshold: float | None = None  # default: cleanlab Datalab's
        listed: int = 50

    def run(self, ctx: DiagnoseContext) -> tuple[dict, list[Flag]]:
        from .outliers import knn_outlier_scores, outlier_issues

        f, index = ctx.features("data")
        k = min(self.params.k, max(1, len(f) - 1))
        scores = knn_outlier_scores(f, k=k) if len(f) > 1 else np.ones(len(f))
        flagged = outlier_issues(scores, threshold=self.params.threshold) if len(f) > 1 else np.zeros(len(f), bool)
        rows = np.flatnonzero(flagged)
        rows = rows[np.argsort(scores[rows], kind="stable")]
        ds = ctx.dataset
        res = {"n_evaluated": int(len(f)), "n_outliers": int(len(rows)), "k": int(k),
               "threshold": self.params.threshold,
               "outliers": [{"sample_id": ds.sample_id(int(index[r])), "score": float(scores[r])}
                            for r in rows[:self.params.listed]],
               "score_quantiles": np.quantile(scores, [0.01, 0.05, 0.5]).tolist() if len(f) else []}
        flags = [Flag(self.name, "outlier", int(index[r]), ds.sample_id(int(index[r])), float(scores[r]),
                      given=int(ds.label(int(index[r]))) if ds.labeled else None) for r in rows]
        return res, flags

    def summary(self, r: ProbeResult) -> list[tuple[str, str]]:
        return [("outliers", f"{r['n_outliers']} of {r['n_evaluated']} (k = {r['k']})")]

    def render(self, r: ProbeResult, sec) -> None:
        from .render import render_gallery

        sec.p(f"Outlier score: exp(-mean cosine distance to the {r['k']} nearest neighbours among the other images' "
              "features), as cleanlab's OutOfDistribution computes it; lower is more unusual. Flagged as cleanlab's "
              "Datalab does (distance far above the upper quartile).")
        sec.kv(self.summary(r))
        render_gallery(sec, r.get("gallery"), "Most unusual images")
