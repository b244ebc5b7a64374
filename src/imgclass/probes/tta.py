"""Probe ``tta``: test-time augmentation by flips, ten crops and zoom crops, with the oracle upper bound.

Views are cut from the image resized to the model's pre-crop square (short side to
``floor(size / crop_pct)``, centre square) and resized to the input size on the device. The zoom
views follow "Zoom is what you need" (Taesiri et al. 2023): at zoom s, a square of side S/s is cut
around each anchor of a g x g grid (clamped inside the image) and enlarged to the input size. An
averaged prediction is the argmax of the mean softmax over a set of views; the oracle counts an image
as solved if any view of the set is right.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UsageError
from .base import CliFlag, Metric, Probe, ProbeContext, ProbeResult, register_probe

VIEW_SETS = ("flip", "ten_crop", "zoom")


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


@dataclass(frozen=True)
class View:
    name: str
    top: float  # crop box in fractions of the square image
    left: float
    size: float
    flip: bool
    sets: tuple[str, ...]
    scale: float = 1.0
    anchor: tuple[int, int] | None = None


def build_views(*, sets: tuple[str, ...], square: int, input_size: int, zoom_scales: tuple[float, ...],
                zoom_grid: int) -> list[View]:
    """The view grid; ``square`` is the side S of the pre-crop image, ``input_size`` the model's side."""
    unknown = set(sets) - set(VIEW_SETS)
    if unknown:
        raise UsageError(f"unknown TTA view set(s) {sorted(unknown)}; known: {', '.join(VIEW_SETS)}")
    views = [View("center", *_center(square, input_size), False, ("center", "flip", "ten_crop"))]
    if "flip" in sets or "ten_crop" in sets:
        views.append(View("center-flip", *_center(square, input_size), True, ("flip", "ten_crop")))
    if "ten_crop" in sets:
        # corners at the input size; with no margin (S == input), corners of 87.5 % of the image instead
        c = input_size / square if square > input_size else 0.875
        for name, (t, l) in {"top-left": (0, 0), "top-right": (0, 1 - c), "bottom-left": (1 - c, 0),
                             "bottom-right": (1 - c, 1 - c)}.items():
            for flip in (False, True):
                views.append(View(name + ("-flip" if flip else ""), t, l, c, flip, ("ten_crop",)))
    if "zoom" in sets:
        views.append(View("zoom-1", 0.0, 0.0, 1.0, False, ("zoom",), 1.0, None))
        for s in zoom_scales:
            if s <= 1:
                continue
            side = 1.0 / s
            for i in range(zoom_grid):
                for j in range(zoom_grid):
                    cy, cx = (i + 0.5) / zoom_grid, (j + 0.5) / zoom_grid
                    t = min(max(cy - side / 2, 0.0), 1 - side)
                    l = min(max(cx - side / 2, 0.0), 1 - side)
                    views.append(View(f"zoom-{s:g}-{i}{j}", t, l, side, False, ("zoom",), s, (i, j)))
    return views


def _center(square: int, input_size: int) -> tuple[float, float, float]:
    c = min(1.0, input_size / square)
    off = (1 - c) / 2
    return off, off, c


def _cut(x: torch.Tensor, v: View, out_hw: tuple[int, int]) -> torch.Tensor:
    _, _, h, w = x.shape
    t, l = int(round(v.top * h)), int(round(v.left * w))
    sh, sw = max(1, int(round(v.size * h))), max(1, int(round(v.size * w)))
    crop = x[:, :, t:t + sh, l:l + sw]
    if crop.shape[-2:] != out_hw:
        crop = F.interpolate(crop, size=out_hw, mode="bilinear", align_corners=False, antialias=True)
    return crop.flip(-1) if v.flip else crop


class TTAResult(ProbeResult):
    probe = "tta"
    metrics = (Metric("baseline_top1", "centre-crop top-1"), Metric("accuracy", "TTA accuracy"),
               Metric("oracle", "any-view-correct oracle"))
    primary = "baseline_top1"

    baseline_top1: float | None
    sets: dict[str, dict]
    n_evaluated: int

    def headline(self) -> dict[str, float | None]:
        out = {"baseline_top1": self.baseline_top1}
        for name, s in self.sets.items():
            out[f"accuracy@{name}"] = s.get("accuracy")
            out[f"oracle@{name}"] = s.get("oracle")
        return out

    def protocol(self, params: dict) -> dict:
        g = self.get("grid") or {}
        return {"sets": {k: v.get("n_views") for k, v in self.sets.items()}, "averaging": g.get("averaging"),
                "preprocessing": g.get("preprocessing")}

@register_probe
class TTAProbe(Probe):
    name = "tta"
    title = "Test-time augmentation"
    description = "flip / ten-crop / zoom-crop TTA accuracy and the any-view-correct oracle ('Zoom is what you need')"
    cli_flags = (
        CliFlag("--tta-views", "views", "TTA view sets, e.g. flip,ten_crop,zoom",
                lambda s: tuple(v.strip() for v in s.split(",") if v.strip())),
        CliFlag("--zoom-scales", "zoom_scales", "zoom factors, e.g. 1.5,2,3", _floats),
    )

    Result = TTAResult

    @dataclass
    class Params:
        views: tuple[str, ...] = VIEW_SETS
        zoom_scales: tuple[float, ...] = (1.5, 2.0, 3.0)
        zoom_grid: int = 3

    def run(self, ctx: ProbeContext) -> dict:
        eng, clf, ds = ctx.engine, ctx.classifier, ctx.dataset
        cfg = clf.config
        h, w = cfg.input_size[1:]
        if h != w:
            raise UsageError(f"tta needs a square model input, got {h}x{w}")
        square = math.floor(h / cfg.crop_pct)
        views = build_views(sets=tuple(self.params.views), square=square, input_size=h,
                            zoom_scales=tuple(self.params.zoom_scales), zoom_grid=self.params.zoom_grid)
        set_names = ["center"] + [s for s in VIEW_SETS if s in self.params.views] + ["all"]
        members = {s: [k for k, v in enumerate(views) if s in v.sets or s == "all"] for s in set_names}
        al = eng.alignment(ds)

        def fn(b):
            x = eng.to_float(b.images)
            n = len(x)
            probs = torch.zeros(n, len(views), len(ds.classes), device=x.device)
            for k, v in enumerate(views):
                probs[:, k] = torch.softmax(al.apply(eng.logits(_cut(x, v, (h, w)))).float(), 1)
            correct = probs.argmax(2) == b.labels[:, None]
            set_pred = torch.stack([probs[:, members[s]].mean(1).argmax(1) for s in set_names], 1)
            return {"view_correct": correct, "set_pred": set_pred, "labels": b.labels}

        mapped = eng.map(ds, fn, desc=f"TTA ({len(views)} views)")
        out = mapped.outputs
        y = out["labels"]
        if len(y):
            ctx.record_samples(self.name, mapped.indices,
                               **{f"correct@{s}": out["set_pred"][:, k] == y for k, s in enumerate(set_names)})
        correct = out["view_correct"]
        res_sets = {}
        for k, s in enumerate(set_names):
            idx = members[s]
            res_sets[s] = {
                "accuracy": float((out["set_pred"][:, k] == y).double().mean()),
                "oracle": float(correct[:, idx].any(1).double().mean()),
                "n_views": len(idx),
            }
        per_view = {v.name: float(correct[:, k].double().mean()) for k, v in enumerate(views)}
        return {
            "baseline_top1": res_sets["center"]["accuracy"],
            "sets": res_sets,
            "per_view_accuracy": per_view,
            "n_evaluated": int(len(y)),
            "grid": {
                "square": square, "input_size": h,
                "preprocessing": f"short side resized to {square} ({cfg.interpolation}), centre {square}x{square} "
                                 "square; views cut from it and resized to the input with bilinear antialiasing",
                "ten_crop": "centre and 4 corners at the input size (87.5% of the image when it has no margin), "
                            "each also flipped",
                "zoom": f"side S/s around each anchor of a {self.params.zoom_grid}x{self.params.zoom_grid} grid "
                        f"(clamped inside), s in {list(self.params.zoom_scales)}, plus the whole image",
                "averaging": "argmax of the mean softmax over the set's views",
                "oracle": "an image counts as solved if any view in the set is right",
                "views": [{"name": v.name, "box": [v.top, v.left, v.size], "flip": v.flip} for v in views],
            },
        }

    def summary(self, r: dict) -> list[tuple[str, str]]:
        out = [("centre crop", f"{r['baseline_top1']:.4f}")]
        for s, v in r["sets"].items():
            if s != "center":
                out.append((f"{s} (avg / oracle)", f"{v['accuracy']:.4f} / {v['oracle']:.4f}"))
        return out

    def render(self, r: dict, sec) -> None:
        import matplotlib.pyplot as plt

        sec.p(f"{r['n_evaluated']} images. " + r["grid"]["preprocessing"] + ". Ten-crop: " + r["grid"]["ten_crop"]
              + ". Zoom: " + r["grid"]["zoom"] + ". " + r["grid"]["oracle"].capitalize() + ".")
        sets = list(r["sets"])
        sec.table(["views", "n views", "averaged accuracy", "oracle (any view right)"],
                  [(s, v["n_views"], v["accuracy"], v["oracle"]) for s, v in r["sets"].items()])
        fig, ax = plt.subplots(figsize=(6, 3.2))
        xs = np.arange(len(sets))
        ax.bar(xs - 0.2, [r["sets"][s]["accuracy"] for s in sets], 0.4, label="averaged", color="#4a7ab5")
        ax.bar(xs + 0.2, [r["sets"][s]["oracle"] for s in sets], 0.4, label="oracle", color="#e9a03b")
        ax.set_xticks(xs)
        ax.set_xticklabels(sets)
        ax.set_ylim(0, 1)
        ax.set_ylabel("top-1")
        ax.legend(fontsize=8)
        sec.figure(fig, "Accuracy of the averaged prediction and the oracle, per view set")
        zoom = {k: v for k, v in r["per_view_accuracy"].items() if k.startswith("zoom-") and k.count("-") == 2}
        scales = sorted({float(k.split("-")[1]) for k in zoom})
        if scales:
            g = int(round(math.sqrt(len(zoom) / len(scales))))
            fig, axes = plt.subplots(1, len(scales), figsize=(2.6 * len(scales), 2.6), squeeze=False)
            for a, s in zip(axes[0], scales):
                m = np.array([[zoom[f"zoom-{s:g}-{i}{j}"] for j in range(g)] for i in range(g)])
                im = a.imshow(m, vmin=0, vmax=1, cmap="viridis")
                for i in range(g):
                    for j in range(g):
                        a.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7, color="w")
                a.set_title(f"zoom {s:g}x", fontsize=9)
                a.set_xticks([])
                a.set_yticks([])
            fig.colorbar(im, ax=axes[0].tolist(), fraction=0.03)
            sec.figure(fig, "Accuracy of each single zoom view by anchor position (spatial bias)")
