"""Check ``human_labels``: the given labels and a model against human label distributions (CIFAR-10H: Peterson et
al. 2019): samples whose human majority disagrees with the given label, ReaL-style accuracy (Beyer et al. 2020:
a prediction is right when humans gave its class a plausible share) and the cross-entropy to the human
distribution."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..results.models import Metric, ProbeResult
from .base import Check, DiagnoseContext, Flag, register_check


class HumanLabelsResult(ProbeResult):
    probe = "human_labels"
    metrics = (Metric("n_disagree", "given label not the human majority", False),
               Metric("real_accuracy", "ReaL-style accuracy"), Metric("accuracy", "accuracy on the given labels"),
               Metric("human_majority_accuracy", "accuracy on the human majority"),
               Metric("cross_entropy", "cross-entropy to the human distribution", False))
    primary = "real_accuracy"

    source: str
    n_evaluated: int
    n_disagree: int
    plausible: float
    real_accuracy: float | None = None
    accuracy: float | None = None
    cross_entropy: float | None = None

    def protocol(self, params: dict) -> dict:
        return {"source": self.source, "plausible_share": self.plausible,
                "real_accuracy": "argmax of the probabilities is right if humans gave its class at least "
                                 "plausible_share of their votes"}


@register_check
class HumanLabelsCheck(Check):
    name = "human_labels"
    title = "Human labels"
    description = "given labels and predictions against human label distributions (CIFAR-10H), ReaL-style accuracy"
    needs = frozenset({"labels", "human"})
    Result = HumanLabelsResult

    @dataclass
    class Params:
        plausible: float = 0.1  # a class is a plausible answer when at least this share of the annotators chose it

    def run(self, ctx: DiagnoseContext) -> tuple[dict, list[Flag]]:
        ds = ctx.dataset
        h = np.asarray(ds.soft_labels, dtype=np.float64)
        y = ctx.labels()
        n = len(y)
        majority = h.argmax(1)
        share_given = h[np.arange(n), y]
        disagree = np.flatnonzero(majority != y)
        res: dict = {"source": ds.soft_label_source or "soft labels", "n_evaluated": n,
                     "n_disagree": int(len(disagree)), "plausible": float(self.params.plausible),
                     "label_vs_human_majority": float((majority == y).mean()) if n else None,
                     "mean_human_share_of_given_label": float(share_given.mean()) if n else None}
        got = ctx.probs()
        if got is not None:
            p, ok = got
            pred = p.argmax(1)
            sel = np.flatnonzero(ok)
            res["n_with_predictions"] = int(len(sel))
            res["accuracy"] = float((pred[sel] == y[sel]).mean()) if len(sel) else None
            res["human_majority_accuracy"] = float((pred[sel] == majority[sel]).mean()) if len(sel) else None
            res["real_accuracy"] = float((h[sel, pred[sel]] >= self.params.plausible).mean()) if len(sel) else None
            res["expected_agreement_with_an_annotator"] = float(h[sel, pred[sel]].mean()) if len(sel) else None
            with np.errstate(divide="ignore"):
                logp = np.log(np.clip(p[sel], 1e-300, None))
            res["cross_entropy"] = float(-(h[sel] * logp).sum(1).mean()) if len(sel) else None
        order = disagree[np.argsort(share_given[disagree], kind="stable")]
        names = list(ds.classes.names)
        res["disagreements"] = [
            {"index": int(i), "sample_id": ds.sample_id(int(i)), "given": names[y[i]], "human_majority": names[majority[i]],
             "human_share_of_given": float(share_given[i]), "human_share_of_majority": float(h[i, majority[i]])}
            for i in order[:200]]
        flags = [Flag(self.name, "human_majority_disagrees", int(i), ds.sample_id(int(i)), float(share_given[i]),
                      given=int(y[i]), suggested=int(majority[i]),
                      note=f"humans: {h[i, majority[i]]:.0%} {names[majority[i]]}, {share_given[i]:.0%} given label")
                 for i in order]
        return res, flags

    def summary(self, r: ProbeResult) -> list[tuple[str, str]]:
        out = [("given label is not the human majority", f"{r['n_disagree']} of {r['n_evaluated']}")]
        if r.get("real_accuracy") is not None:
            out += [("accuracy (given / human majority / ReaL-style)",
                     f"{r['accuracy']:.4f} / {r['human_majority_accuracy']:.4f} / {r['real_accuracy']:.4f}"),
                    ("cross-entropy to humans", f"{r['cross_entropy']:.4f}")]
        return out

    def render(self, r: ProbeResult, sec) -> None:
        sec.p(f"Human label distributions: {r['source']}. A prediction counts as right in the ReaL-style accuracy "
              f"when at least {r['plausible']:.0%} of the annotators chose its class.")
        sec.kv(self.summary(r))
        rows = [(d["sample_id"], d["given"], d["human_majority"], round(d["human_share_of_given"], 3),
                 round(d["human_share_of_majority"], 3)) for d in r.get("disagreements", [])[:50]]
        if rows:
            sec.p("Samples whose given label most humans did not choose (lowest human share of the given label first)")
            sec.table(["sample", "given", "human majority", "share given", "share majority"], rows)
        from .render import render_gallery

        render_gallery(sec, r.get("gallery"), "Given label not the human majority")
