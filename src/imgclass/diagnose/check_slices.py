"""Check ``slices``: systematic errors on subgroups (*Identification of Systematic Errors of Image Classifiers on
Rare Subgroups*, Domino): k-means clusters of a model's features whose accuracy falls far below the overall
(``slices.py``), with support, accuracy gap, confidence, a binomial p-value (Bonferroni-corrected over the clusters)
and thumbnails."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..results.models import Metric, ProbeResult
from .base import Check, DiagnoseContext, Flag, register_check


class SlicesResult(ProbeResult):
    probe = "slices"
    metrics = (Metric("n_slices", "low-accuracy slices", False), Metric("worst_gap", "largest accuracy gap", False))
    primary = "n_slices"

    n_evaluated: int
    n_clusters: int
    overall_accuracy: float | None
    n_slices: int
    worst_gap: float | None = None

    def protocol(self, params: dict) -> dict:
        return {"clusters": f"k-means (seeded) on L2-normalized pre-logit features, k = {self.n_clusters}",
                "slice": f"accuracy at least {params.get('min_gap')} below the overall, at least "
                         f"{params.get('min_support')} members, Bonferroni-corrected binomial p <= {params.get('alpha')}"}


@register_check
class SlicesCheck(Check):
    name = "slices"
    title = "Error slices"
    description = "clusters of a model's features where it is far less accurate (systematic errors on subgroups)"
    needs = frozenset({"labels", "features", "probs"})
    Result = SlicesResult

    @dataclass
    class Params:
        n_clusters: int | None = None  # default: about five times min_support members per cluster, 2..50
        min_support: int = 10
        min_gap: float = 0.1
        alpha: float = 0.05  # significance after Bonferroni correction over the clusters
        members_listed: int = 12

    def run(self, ctx: DiagnoseContext) -> tuple[dict, list[Flag]]:
        from .slices import default_clusters, error_slices

        p = self.params
        f, index = ctx.features("data")
        probs, ok = ctx.probs()
        keep = ok[index]
        f, index = f[keep], index[keep]
        y = ctx.labels()[index]
        pr = probs[index]
        correct = pr.argmax(1) == y
        conf = pr.max(1)
        k = p.n_clusters or default_clusters(len(f), min_support=p.min_support)
        found = error_slices(f, correct, confidence=conf, n_clusters=k, seed=ctx.seed, min_support=p.min_support,
                             min_gap=p.min_gap)
        k_used = min(int(k), len(f)) if len(f) else 0
        ds = ctx.dataset
        names = list(ds.classes.names)
        slices, flags = [], []
        for s in sorted(found, key=lambda s: -s.gap):
            p_adj = min(1.0, s.p_value * max(k_used, 1))
            if p_adj > p.alpha:
                continue
            members = index[np.asarray(s.indices, dtype=np.int64)]
            labels_in = np.bincount(y[np.asarray(s.indices)], minlength=len(names))
            top = [(names[c], int(labels_in[c])) for c in np.argsort(-labels_in)[:3] if labels_in[c]]
            slices.append({"cluster": int(s.cluster), "support": int(s.support), "accuracy": float(s.accuracy),
                           "gap": float(s.gap), "p_value": float(s.p_value), "p_adjusted": p_adj,
                           "mean_confidence": s.mean_confidence, "top_labels": top,
                           "members": [ds.sample_id(int(i)) for i in members[:p.members_listed]]})
            wrong = [int(i) for i, r in zip(members, np.asarray(s.indices)) if not correct[r]]
            flags += [Flag(self.name, f"slice_{int(s.cluster)}", i, ds.sample_id(i), float(s.accuracy),
                           given=int(ds.label(i)), suggested=int(probs[i].argmax()),
                           note=f"cluster {int(s.cluster)}: accuracy {s.accuracy:.2f} vs {correct.mean():.2f} overall, "
                                f"{s.support} images") for i in wrong]
        res = {"n_evaluated": int(len(f)), "n_clusters": k_used,
               "overall_accuracy": float(correct.mean()) if len(f) else None, "n_slices": len(slices),
               "worst_gap": slices[0]["gap"] if slices else None, "slices": slices}
        return res, flags

    def summary(self, r: ProbeResult) -> list[tuple[str, str]]:
        if not r["n_slices"]:
            return [("low-accuracy slices", f"none among {r['n_clusters']} clusters")]
        s = r["slices"][0]
        return [("low-accuracy slices", f"{r['n_slices']} of {r['n_clusters']} clusters"),
                ("worst slice", f"{s['support']} images, accuracy {s['accuracy']:.3f} "
                                f"(overall {r['overall_accuracy']:.3f}), mostly {s['top_labels'][0][0]}")]

    def render(self, r: ProbeResult, sec) -> None:
        from .render import render_gallery

        sec.p(f"{r['n_clusters']} k-means clusters of the model's pre-logit features; a slice is a cluster whose "
              f"accuracy is far below the overall {r.get('overall_accuracy') or 0:.3f} and significant after a "
              "Bonferroni correction over the clusters.")
        if r["slices"]:
            sec.table(["cluster", "images", "accuracy", "gap", "p (corrected)", "mean confidence", "labels"],
                      [(s["cluster"], s["support"], round(s["accuracy"], 4), round(s["gap"], 4),
                        f"{s['p_adjusted']:.2g}", "-" if s["mean_confidence"] is None else round(s["mean_confidence"], 3),
                        ", ".join(f"{n} {c}" for n, c in s["top_labels"])) for s in r["slices"]], numeric=False)
        else:
            sec.p("No slice: errors are spread over the clusters.")
        render_gallery(sec, r.get("gallery"), "Misclassified images of the slices (worst slice first)")
