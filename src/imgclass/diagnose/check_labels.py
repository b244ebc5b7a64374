"""Check ``label_issues``: confident learning (Northcutt et al. 2021) on out-of-sample probabilities, with
cleanlab's semantics (``label_issues.py``): the flagged samples, their ranking, the estimated joint and noise
matrix, and the number of label errors per (given, true) class pair."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UsageError
from ..results.models import Metric, ProbeResult
from .base import Check, DiagnoseContext, Flag, register_check


class LabelIssuesResult(ProbeResult):
    probe = "label_issues"
    metrics = (Metric("n_issues", "label issues", False), Metric("fraction", "share of samples flagged", False),
               Metric("estimated_noise_rate", "estimated label noise rate", False))
    primary = "n_issues"

    n_evaluated: int
    n_issues: int
    fraction: float | None
    filter_by: str
    rank_by: str
    estimated_noise_rate: float | None = None

    def protocol(self, params: dict) -> dict:
        return {"filter_by": self.filter_by, "rank_by": self.rank_by,
                "probabilities": "out-of-sample (models not trained on the data, a file, or cross-validation)",
                "reference": "cleanlab.filter.find_label_issues (cleanlab 2.9 semantics)"}


@register_check
class LabelIssuesCheck(Check):
    name = "label_issues"
    title = "Label issues"
    description = "confident learning on out-of-sample probabilities (cleanlab's filter_by rules and rankings)"
    needs = frozenset({"labels", "probs"})
    Result = LabelIssuesResult

    @dataclass
    class Params:
        filter_by: str = "prune_by_noise_rate"
        rank_by: str = "self_confidence"
        listed: int = 200  # issues listed in results.json (all of them are in issues.csv)

    def run(self, ctx: DiagnoseContext) -> tuple[dict, list[Flag]]:
        from .label_issues import FILTER_BY, RANK_BY, label_issues

        p = self.params
        if p.filter_by not in FILTER_BY:
            raise UsageError(f"label_issues: filter_by {p.filter_by!r} is not one of {', '.join(FILTER_BY)}")
        if p.rank_by not in RANK_BY:
            raise UsageError(f"label_issues: rank_by {p.rank_by!r} is not one of {', '.join(RANK_BY)}")
        probs, ok = ctx.probs()
        rows = np.flatnonzero(ok)  # samples with probabilities (unreadable files have none)
        y = ctx.labels()[rows]
        found = label_issues(y, probs[rows], filter_by=p.filter_by, rank_by=p.rank_by)
        ds = ctx.dataset
        names = list(ds.classes.names)
        ranked = rows[found.ranked]
        scores = np.empty(len(ds))
        scores[rows] = found.scores
        suggested = np.full(len(ds), -1)
        suggested[rows] = found.suggested
        labels = ctx.labels()
        pairs = [{"given": names[g], "true": names[t], "count": int(c)}
                 for (g, t), c in sorted(found.pair_counts.items(), key=lambda kv: -kv[1]) if c and g != t]
        joint = np.asarray(found.joint)
        res = {
            "n_evaluated": int(len(rows)), "n_issues": int(len(ranked)),
            "fraction": float(len(ranked) / len(rows)) if len(rows) else None,
            "filter_by": p.filter_by, "rank_by": p.rank_by,
            "estimated_noise_rate": float(1 - np.trace(joint)) if joint.size else None,
            "class_names": names,
            "confident_joint": np.asarray(found.confident_joint).tolist(),
            "joint": joint.tolist(),
            "noise_matrix": np.asarray(found.noise_matrix).tolist(),
            "pairs": pairs,
            "issues": [{"index": int(i), "sample_id": ds.sample_id(int(i)), "given": names[labels[i]],
                        "suggested": names[suggested[i]], "score": float(scores[i])}
                       for i in ranked[:p.listed]],
            "scores": "label quality score of the given label (lower: more likely wrong), "
                      f"{p.rank_by} (cleanlab.rank.get_label_quality_scores)",
        }
        agree = float((found.suggested == y).mean()) if len(rows) else None
        res["probabilities_agree_with_labels"] = agree
        if agree is not None and agree < 0.5:
            res["warnings"] = [f"the probabilities agree with the given labels on only {agree:.1%} of the samples: "
                               "confident learning needs a model that is right on most of them, so these flags are "
                               "mostly the model's own errors (train longer, or use a stronger model)"]
        flags = [Flag(self.name, "label_issue", int(i), ds.sample_id(int(i)), float(scores[i]), given=int(labels[i]),
                      suggested=int(suggested[i])) for i in ranked]
        return res, flags

    def summary(self, r: ProbeResult) -> list[tuple[str, str]]:
        out = [("label issues", f"{r['n_issues']} of {r['n_evaluated']} ({r['fraction']:.2%})"
                if r.get("fraction") is not None else "0")]
        if r.get("pairs"):
            top = r["pairs"][0]
            out.append(("most frequent (given -> true)", f"{top['given']} -> {top['true']}: {top['count']}"))
        return out

    def render(self, r: ProbeResult, sec) -> None:
        from .render import render_gallery

        sec.p(f"Confident learning (filter_by={r['filter_by']}, ranked by {r['rank_by']}): "
              f"{r['n_issues']} of {r['n_evaluated']} samples flagged; estimated noise rate "
              f"{(r.get('estimated_noise_rate') or 0):.2%}. The probabilities must be out-of-sample: from models not "
              "trained on these images, or cross-validated.")
        if r.get("pairs"):
            sec.p("Label errors per (given, true) class pair, as the confident joint counts them")
            sec.table(["given", "true", "count"], [(p["given"], p["true"], p["count"]) for p in r["pairs"][:20]])
        names = r.get("class_names") or []
        cj = r.get("confident_joint")
        if cj and len(names) <= 30:
            from ..probes import plots

            sec.figure(plots.confusion_heatmap(np.asarray(cj), names),
                       "Confident joint: rows the given label, columns the estimated true label (normalised per row)")
        render_gallery(sec, r.get("gallery"), "Most likely label errors (lowest label quality first)")
        if r.get("issues"):
            sec.table(["sample", "given", "suggested", "score"],
                      [(i["sample_id"], i["given"], i["suggested"], f"{i['score']:.3g}") for i in r["issues"][:50]],
                      numeric=False)
