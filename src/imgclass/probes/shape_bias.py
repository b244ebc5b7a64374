"""Probe ``shape_bias``: shape vs texture decisions on the cue-conflict stimuli (Geirhos et al., ICLR 2019).

Decisions follow the paper's rule: the model's softmax probabilities are averaged over the ImageNet
classes of each of the 16 categories and the argmax is taken (this is what the dataset's superclass
label space does in ``Alignment.apply``). Shape bias = shape decisions / (shape + texture decisions),
over the stimuli whose shape and texture categories differ.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np

from ..errors import UsageError
from .base import Metric, Probe, ProbeContext, ProbeResult, register_probe

_STIMULUS = re.compile(r"^([a-z]+)\d+-([a-z]+)\d+$")
REFERENCES = {
    "humans (Geirhos et al. 2019, mean of participants)": 0.96,
    "ImageNet ResNet-50 (Geirhos et al. 2019)": 0.22,
}


def texture_category(sample_id: str) -> str:
    """``cat/cat7-elephant1.png`` -> ``elephant``."""
    m = _STIMULUS.match(PurePosixPath(sample_id).stem)
    if not m:
        raise UsageError(f"{sample_id}: not a cue-conflict stimulus name (<shape><i>-<texture><j>.<ext>)")
    return m.group(2)


class ShapeBiasResult(ProbeResult):
    probe = "shape_bias"
    metrics = (Metric("shape_bias", "shape bias"), Metric("shape_match_rate", "shape match rate"),
               Metric("texture_match_rate", "texture match rate", False))
    primary = "shape_bias"

    shape_bias: float | None
    shape_decisions: int
    texture_decisions: int
    n_conflict_stimuli: int
    decision_rule: str

    def protocol(self, params: dict) -> dict:
        return {"decision_rule": self.decision_rule, "n_conflict_stimuli": self.n_conflict_stimuli,
                "excluded": "stimuli whose shape and texture category agree"}

@register_probe
class ShapeBiasProbe(Probe):
    name = "shape_bias"
    title = "Shape bias"
    description = "shape vs texture decisions on cue-conflict stimuli (Geirhos et al. 2019); data: zoo:cue-conflict"

    Result = ShapeBiasResult

    @dataclass
    class Params:
        pass

    def run(self, ctx: ProbeContext) -> dict:
        ds = ctx.dataset
        if ds.classes.members is None:
            raise UsageError(
                f"shape_bias needs the 16-class cue-conflict stimuli (zoo:cue-conflict, or a folder of them with "
                f"?classes=cue-conflict); {ds.spec} has plain classes"
            )
        pred = ctx.predictions()
        names = list(ds.classes.names)
        index = {n: i for i, n in enumerate(names)}
        decision = pred.logits.argmax(1).numpy()
        shape = pred.labels.numpy()
        textures = [texture_category(ds.sample_id(int(i))) for i in pred.indices]
        unknown = sorted(set(textures) - set(index))
        if unknown:
            raise UsageError(f"texture categories {unknown} of {ds.spec} are not among its classes {names}")
        texture = np.array([index[t] for t in textures])
        conflict = shape != texture
        is_shape = (decision == shape) & conflict
        is_texture = (decision == texture) & conflict
        n_shape, n_texture = int(is_shape.sum()), int(is_texture.sum())
        ctx.record_samples(self.name, pred.indices, pred=decision, correct=decision == shape, shape_decision=is_shape,
                           texture_decision=is_texture)
        per_cat = {}
        for c, name in enumerate(names):
            sel = conflict & (shape == c)
            s, t = int(is_shape[sel].sum()), int(is_texture[sel].sum())
            per_cat[name] = {"shape_bias": s / (s + t) if s + t else None, "shape_decisions": s,
                             "texture_decisions": t, "stimuli": int(sel.sum())}
        n_conf = int(conflict.sum())
        return {
            "shape_bias": n_shape / (n_shape + n_texture) if n_shape + n_texture else None,
            "shape_decisions": n_shape,
            "texture_decisions": n_texture,
            "other_decisions": n_conf - n_shape - n_texture,
            "n_conflict_stimuli": n_conf,
            "n_excluded_same_category": int((~conflict).sum()),
            "shape_match_rate": n_shape / n_conf if n_conf else None,
            "texture_match_rate": n_texture / n_conf if n_conf else None,
            "per_category": per_cat,
            "decision_rule": "argmax over 16 categories of the mean softmax probability of each category's "
                             "ImageNet classes (Geirhos et al. 2019)",
            "references": REFERENCES,
        }

    def summary(self, r: dict) -> list[tuple[str, str]]:
        sb = r["shape_bias"]
        return [("shape bias", "-" if sb is None else f"{sb:.3f}"),
                ("shape / texture decisions", f"{r['shape_decisions']} / {r['texture_decisions']}")]

    def render(self, r: dict, sec) -> None:
        sec.kv([
            ("shape bias", r["shape_bias"]),
            ("shape decisions", r["shape_decisions"]), ("texture decisions", r["texture_decisions"]),
            ("neither", r["other_decisions"]), ("cue-conflict stimuli", r["n_conflict_stimuli"]),
            ("excluded (shape = texture category)", r["n_excluded_same_category"]),
        ])
        sec.p("Decision rule: " + r["decision_rule"] + ". References: "
              + "; ".join(f"{k}: {v}" for k, v in r["references"].items()) + ".")
        sec.figure(_per_category_plot(r), "Shape bias per category (the classic plot of Geirhos et al.): "
                                          "left = shape, right = texture")
        sec.table(["category", "shape bias", "shape", "texture", "stimuli"],
                  [(k, "-" if v["shape_bias"] is None else round(v["shape_bias"], 3), v["shape_decisions"],
                    v["texture_decisions"], v["stimuli"]) for k, v in r["per_category"].items()])


def _per_category_plot(r: dict):
    import matplotlib.pyplot as plt

    cats = list(r["per_category"])
    vals = [r["per_category"][c]["shape_bias"] for c in cats]
    fig, ax = plt.subplots(figsize=(5, 6))
    y = np.arange(len(cats))
    frac_texture = [np.nan if v is None else 1 - v for v in vals]
    ax.scatter(frac_texture, y, color="#d1495b", s=40, zorder=3, label="this model")
    if r["shape_bias"] is not None:
        ax.axvline(1 - r["shape_bias"], color="#d1495b", lw=1.5, label=f"mean ({r['shape_bias']:.2f})")
    for (label, v), color in zip(r["references"].items(), ("#2a9d8f", "#888888")):
        ax.axvline(1 - v, color=color, lw=1, ls="--", label=f"{label.split(' (')[0]} ({v})")
    ax.set_yticks(y)
    ax.set_yticklabels(cats)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of 'texture' decisions")
    top = ax.secondary_xaxis("top", functions=(lambda x: 1 - x, lambda x: 1 - x))
    top.set_xlabel("fraction of 'shape' decisions")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    return fig
