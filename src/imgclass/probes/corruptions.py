"""Probe ``corruptions``: accuracy under common corruptions, corruption errors and mCE (Hendrycks & Dietterich 2019).

Every image is decoded once: the batch function corrupts it with every requested corruption and severity
(``imgclass.corruptions``, seeded per sample id) and keeps the model's top-1 decision for each variant.
CE_c = sum_s E_{s,c} / sum_s E^AlexNet_{s,c} and mCE = mean_c CE_c over the 15 ImageNet-C corruptions, with
AlexNet's published errors; for the CIFAR-10-C parameters (32 px inputs) that normalization does not apply
and the mean corruption error is reported unnormalized. With a baseline run's results.json, CE and the
relative CE (sum_s (E_{s,c} - E_clean) / sum_s (E^base_{s,c} - E^base_clean)) are also given against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UnknownNameError, UsageError
from ..report.images import image_base64
from .base import CliFlag, Metric, Probe, ProbeContext, ProbeResult, register_probe

# AlexNet top-1 errors on ImageNet-C, averaged over severities 1-5 (Hendrycks & Dietterich, ICLR 2019; the
# values of their evaluation code, github.com/hendrycks/robustness), the denominators of CE and mCE.
ALEXNET_ERRORS = {
    "gaussian_noise": 0.886428, "shot_noise": 0.894468, "impulse_noise": 0.922640,
    "defocus_blur": 0.819880, "glass_blur": 0.826268, "motion_blur": 0.785948, "zoom_blur": 0.798360,
    "snow": 0.866816, "frost": 0.826572, "fog": 0.819324, "brightness": 0.564592,
    "contrast": 0.853204, "elastic_transform": 0.646056, "pixelate": 0.717840, "jpeg_compression": 0.606500,
}
ALEXNET_SOURCE = ("AlexNet top-1 error on ImageNet-C per corruption, averaged over severities 1-5, as published "
                  "by Hendrycks & Dietterich, 'Benchmarking Neural Network Robustness to Common Corruptions and "
                  "Perturbations', ICLR 2019 (values of github.com/hendrycks/robustness)")
FAMILIES = {"noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
            "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
            "weather": ("snow", "frost", "fog", "brightness"),
            "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
            "extra": ("speckle_noise", "gaussian_blur", "spatter", "saturate")}


def corruption_names(value) -> tuple[str, ...]:
    """Corruption names (a list, a comma-separated string, or a group: all, common, extra), each checked by the
    corruption registry."""
    from ..corruptions import COMMON, CORRUPTIONS, EXTRA
    from ..corruptions.base import REGISTRY

    if isinstance(value, str):
        groups = {"all": CORRUPTIONS, "common": COMMON, "extra": EXTRA}
        if value.strip() in groups:
            return tuple(groups[value.strip()])
        value = [v.strip() for v in value.split(",") if v.strip()]
    names = tuple(value)
    if not names:
        raise UsageError("no corruptions given: name some, or a group (all, common, extra)")
    for n in names:
        try:
            REGISTRY[n]
        except UnknownNameError as e:
            raise UnknownNameError(f"{e}; or a group: all, common, extra") from None
    return names


def corruption_severities(value) -> tuple[int, ...]:
    if isinstance(value, str):
        value = [v for v in value.replace(" ", "").split(",") if v]
    if isinstance(value, (int, np.integer)):
        value = [value]
    sev = tuple(int(v) for v in value)
    if not sev or any(s not in (1, 2, 3, 4, 5) for s in sev):
        raise UsageError(f"severities must be integers in 1..5, got {value!r}")
    return tuple(sorted(set(sev)))


class CorruptionsResult(ProbeResult):
    probe = "corruptions"
    metrics = (Metric("mean_accuracy", "mean corruption accuracy"), Metric("mce", "mCE", False),
               Metric("clean_accuracy", "clean accuracy"), Metric("accuracy", "accuracy"))
    primary = "mean_accuracy"

    parameter_set: str
    corruptions: list[str]
    severities: list[int]
    seed: int = 0
    n_evaluated: int
    clean_accuracy: float | None
    mean_accuracy: float | None
    mce: float | None = None
    mce_normalization: str | None = None

    def headline(self) -> dict[str, float | None]:
        out = {k: v for k, v in super().headline().items() if k != "accuracy"}
        for c, per_sev in (self.get("accuracy") or {}).items():  # accuracy@CORRUPTION (mean over severities)
            vals = [v for v in per_sev.values() if v is not None]
            out[f"accuracy@{c}"] = float(np.mean(vals)) if vals else None
        return out

    def protocol(self, params: dict) -> dict:
        return {"parameter_set": self.parameter_set, "parameter_source": self.get("parameter_source"),
                "corruptions": self.corruptions, "severities": self.severities, "seed": self.seed,
                "mce_normalization": self.mce_normalization}


@register_probe
class CorruptionsProbe(Probe):
    name = "corruptions"
    title = "Common corruptions"
    description = ("accuracy under the ImageNet-C / CIFAR-10-C corruptions x severities, CE and mCE "
                   "(AlexNet-normalized), relative to a baseline run")
    cli_flags = (
        CliFlag("--corruptions", "corruptions", "corruptions to run: all, common (the 15 of mCE), extra, or a list"),
        CliFlag("--severities", "severities", "severities to run, e.g. 1,3,5 (default all five)"),
        CliFlag("--corruption-params", "params", "parameter set: imagenet or cifar10 (default: by input size)"),
        CliFlag("--baseline", "baseline", "a baseline run's results.json (CE and relative CE against it)"),
    )

    Result = CorruptionsResult

    @dataclass
    class Params:
        corruptions: tuple[str, ...] | str = "common"
        severities: tuple[int, ...] | str = (1, 2, 3, 4, 5)
        params: str | None = None  # 'imagenet' | 'cifar10'; default: cifar10 for inputs up to 64 px
        baseline: str | None = None
        example_size: int = 64  # side of the thumbnails of the example grid (0: no grid)

    def run(self, ctx: ProbeContext) -> dict:
        from ..corruptions import COMMON, PARAM_SETS, corrupt

        names = corruption_names(self.params.corruptions)
        sevs = corruption_severities(self.params.severities)
        size = ctx.classifier.config.input_size[1]
        pset = self.params.params or ("cifar10" if size <= 64 else "imagenet")
        if pset not in PARAM_SETS:
            raise UsageError(f"unknown corruption parameter set {pset!r}; known: {', '.join(PARAM_SETS)}")
        eng, ds = ctx.engine, ctx.dataset
        al = eng.alignment(ds)

        def fn(b):
            ids = [ds.sample_id(int(i)) for i in b.indices]
            out = {"labels": b.labels}
            pending: list[tuple[str, torch.Tensor]] = []  # variants waiting for the model, at most a batch

            def predict() -> None:
                x = torch.cat([v for _, v in pending]) if len(pending) > 1 else pending[0][1]
                top1 = al.apply(eng.logits(eng.to_float(x))).argmax(1)
                for (key, _), part in zip(pending, top1.split([len(v) for _, v in pending])):
                    out[key] = part
                pending.clear()

            def add(key: str, x: torch.Tensor) -> None:
                # a small batch (a short run, the last batch) shares model calls between its variants: a call on a
                # few images is mostly per-call overhead (a thread hand-off per layer), so 75 of them cost far more
                # than a few full ones
                pending.append((key, x))
                if sum(len(v) for _, v in pending) >= eng.batch_size:
                    predict()

            add("clean", b.images)
            for name in names:
                for s in sevs:
                    add(f"{name}/{s}", corrupt(b.images, name, s, seed=ctx.seed, sample_ids=ids, params=pset))
            if pending:
                predict()
            return out

        res = eng.map(ds, fn, desc=f"corruptions ({len(names)} x {len(sevs)})")
        y = res.outputs.get("labels", torch.empty(0, dtype=torch.long))
        n = int(len(y))

        def acc(key):
            return float((res.outputs[key] == y).double().mean()) if n else None

        accuracy = {name: {str(s): acc(f"{name}/{s}") for s in sevs} for name in names}
        ctx.record_samples(self.name, res.indices, **{f"{k.replace('/', '@')}": (v == y) for k, v in res.outputs.items()
                                                      if k != "labels"})
        clean = acc("clean")
        out = {
            "parameter_set": pset,
            "parameter_source": ("imagecorruptions 1.1.2 (ImageNet-C)" if pset == "imagenet"
                                 else "Hendrycks' CIFAR-10-C generator (make_cifar_c.py)"),
            "corruptions": list(names),
            "severities": list(sevs),
            "seed": ctx.seed,
            "n_evaluated": n,
            "clean_accuracy": clean,
            "accuracy": accuracy,
            "mean_accuracy": float(np.mean([a for r in accuracy.values() for a in r.values()])) if n else None,
            "error": {c: 1 - float(np.mean(list(r.values()))) for c, r in accuracy.items()} if n else {},
            "prediction_rule": "top-1 of the model's logits over the dataset's classes",
        }
        out["mean_error"] = 1 - out["mean_accuracy"] if n else None
        out.update(self._mce(out, names, sevs, pset, COMMON))
        if self.params.baseline:
            out["baseline"] = self._against_baseline(out, self.params.baseline)
        if self.params.example_size > 0 and len(ds) and ctx.engine.dist.is_main:
            out["examples"] = self._examples(ctx, names, sevs, pset, self.params.example_size)
        return out

    @staticmethod
    def _mce(r: dict, names, sevs, pset: str, common) -> dict:
        used = [c for c in names if c in common]
        if pset != "imagenet":
            return {"ce": None, "mce": r["mean_error"], "mce_normalization": "none",
                    "mce_note": "CIFAR-10-C parameters: the AlexNet normalization of CE/mCE is an ImageNet-C "
                                "convention, so mce is the unnormalized mean corruption error over the "
                                "corruptions and severities run (use a baseline run to normalize)"}
        if tuple(sevs) != (1, 2, 3, 4, 5) or not used or r["n_evaluated"] == 0:
            return {"ce": None, "mce": None, "mce_normalization": "alexnet",
                    "mce_note": "mCE needs all five severities of at least one ImageNet-C corruption"}
        ce = {c: r["error"][c] / ALEXNET_ERRORS[c] for c in used}
        note = "" if len(used) == 15 else (f"over {len(used)} of the 15 ImageNet-C corruptions: not comparable "
                                           f"with published mCE")
        return {"ce": ce, "mce": float(np.mean(list(ce.values()))), "mce_normalization": "alexnet",
                "mce_note": note, "alexnet": {"source": ALEXNET_SOURCE, "errors": ALEXNET_ERRORS}}

    @staticmethod
    def _against_baseline(r: dict, path: str) -> dict:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"baseline results {path} not found (give a run's results.json)")
        from ..results import load

        base_run = load(p)
        base = base_run.probes.get("corruptions")
        if not base:
            raise UsageError(f"{path} has no probes.corruptions result to compare with")
        if base.get("parameter_set") != r["parameter_set"]:
            raise UsageError(f"baseline used the {base.get('parameter_set')} corruption parameters, this run "
                             f"{r['parameter_set']}: errors are not comparable")
        shared = [c for c in r["corruptions"] if c in base.get("accuracy", {})]
        ce, rel = {}, {}
        for c in shared:
            sev = [s for s in r["accuracy"][c] if base["accuracy"][c].get(s) is not None]
            if not sev:
                continue
            e = np.array([1 - r["accuracy"][c][s] for s in sev])
            eb = np.array([1 - base["accuracy"][c][s] for s in sev])
            ce[c] = float(e.sum() / eb.sum()) if eb.sum() > 0 else None
            gap_b = (eb - (1 - base["clean_accuracy"])).sum()
            rel[c] = float((e - (1 - r["clean_accuracy"])).sum() / gap_b) if gap_b > 0 else None
        ok_ce = [v for v in ce.values() if v is not None]
        ok_rel = [v for v in rel.values() if v is not None]
        return {"path": str(p), "model": base_run.model.spec,
                "corruptions": list(ce), "ce": ce, "relative_ce": rel,
                "mce": float(np.mean(ok_ce)) if ok_ce else None,
                "relative_mce": float(np.mean(ok_rel)) if ok_rel else None,
                "clean_accuracy": base.get("clean_accuracy")}

    @staticmethod
    def _examples(ctx: ProbeContext, names, sevs, pset: str, side: int) -> dict:
        """A JPEG grid of the first image: one row per corruption, clean then each severity."""
        from PIL import Image

        from ..corruptions import corrupt

        eng, ds = ctx.engine, ctx.dataset
        sample = next((s for s in (ds[k] for k in range(min(len(ds), 16))) if s.image is not None), None)
        if sample is None:
            return {}
        img = eng.transform(sample.image)[None].to(eng.device)
        sid = ds.sample_id(sample.index)
        rows = [[img] + [corrupt(img, n, s, seed=ctx.seed, sample_ids=[sid], params=pset) for s in sevs]
                for n in names]
        grid = torch.cat([torch.cat(r, 3) for r in rows], 2)[0]  # (3, rows*H, cols*W)
        h, w = img.shape[-2:]
        scale = min(1.0, side / max(h, w))
        pil = Image.fromarray(grid.permute(1, 2, 0).cpu().numpy())
        if scale < 1:
            pil = pil.resize((max(1, round(pil.width * scale)), max(1, round(pil.height * scale))), Image.BOX)
        return {"sample_id": sid, "rows": list(names), "columns": ["clean"] + [str(s) for s in sevs],
                "jpeg_base64": image_base64(pil, fmt="JPEG", quality=85)}

    def summary(self, r: dict) -> list[tuple[str, str]]:
        def f(v):
            return "n/a" if v is None else f"{v:.4f}"

        out = [("clean accuracy", f(r["clean_accuracy"])), ("mean corruption accuracy", f(r["mean_accuracy"]))]
        label = "mCE (AlexNet-normalized)" if r["mce_normalization"] == "alexnet" else "mean corruption error"
        out.append((label, f(r["mce"])))
        if "baseline" in r:
            out.append(("mCE / relative mCE vs baseline", f"{f(r['baseline']['mce'])} / "
                                                            f"{f(r['baseline']['relative_mce'])}"))
        return out

    def render(self, r: dict, sec) -> None:
        sec.p(f"{len(r['corruptions'])} corruptions x severities {r['severities']} with the {r['parameter_set']} "
              f"parameters ({r['parameter_source']}), seed {r['seed']}, on {r['n_evaluated']} images; each "
              f"image's random draw depends on the seed, corruption, severity and sample id only.")
        rows = [("clean accuracy", r["clean_accuracy"]), ("mean corruption accuracy", r["mean_accuracy"]),
                ("mean corruption error", r["mean_error"])]
        if r["mce_normalization"] == "alexnet" and r["mce"] is not None:
            rows.append(("mCE (AlexNet-normalized)", r["mce"]))
        if "baseline" in r:
            b = r["baseline"]
            rows += [(f"mCE vs baseline {b['model']}", b["mce"]), ("relative mCE vs baseline", b["relative_mce"])]
        sec.kv([(k, "n/a" if v is None else v) for k, v in rows])
        if r.get("mce_note"):
            sec.p(r["mce_note"])
        if r["mce_normalization"] == "alexnet" and r.get("alexnet"):
            sec.p("Normalization: " + r["alexnet"]["source"] + ".")
        head, table = self._table(r)
        sec.table(head, table)
        if r["n_evaluated"]:
            sec.figure(self._plot(r), "Top-1 accuracy against severity (0 = clean), one panel per corruption family; "
                                      "the dashed black line in every panel is the mean over all corruptions run")
        ex = r.get("examples")
        if ex:
            sec.figure(self._grid(ex), f"Sample {ex['sample_id']}: clean, then each severity")

    @staticmethod
    def _table(r: dict) -> tuple[list[str], list[list]]:
        """Accuracy per corruption and severity, its mean, the AlexNet-normalized CE (or why there is none) and,
        with a baseline, the CEs against it."""
        sevs = [str(s) for s in r["severities"]]
        ce = r.get("ce") or {}
        base = r.get("baseline")
        head = ["corruption", "family"] + [f"sev {s}" for s in sevs] + ["mean", "CE (AlexNet-normalized)"]
        if base:
            head += ["CE vs baseline", "relative CE vs baseline"]
        family = {c: f for f, members in FAMILIES.items() for c in members}
        table = []
        for c in r["corruptions"]:
            accs = [r["accuracy"][c][s] for s in sevs]
            row = [c, family.get(c, "other")] + [_or_na(a) for a in accs]
            row.append(float(np.mean(accs)) if r["n_evaluated"] else "n/a")
            row.append(ce[c] if c in ce else _no_ce_reason(r, c))
            if base:
                row += [_or_na(base["ce"].get(c)), _or_na(base["relative_ce"].get(c))]
            table.append(row)
        return head, table

    @staticmethod
    def _plot(r: dict):
        """Small multiples: one panel per corruption family, each corruption a line of its own colour and marker,
        the mean over all corruptions as a reference line in every panel."""
        import matplotlib.pyplot as plt

        from . import plots  # noqa: F401  (Agg backend)

        sevs = [str(s) for s in r["severities"]]
        xs = [0] + [int(s) for s in sevs]
        clean = r["clean_accuracy"]
        family = {c: f for f, members in FAMILIES.items() for c in members}
        panels: dict[str, list[str]] = {}
        for c in r["corruptions"]:
            panels.setdefault(family.get(c, "other"), []).append(c)
        order = [f for f in (*FAMILIES, "other") if f in panels]
        ncols = 2 if len(order) == 4 else min(3, len(order))
        nrows = -(-len(order) // ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(4.0 * ncols, 3.1 * nrows), sharey=True, squeeze=False)
        mean = [clean] + [float(np.mean([r["accuracy"][c][s] for c in r["corruptions"]])) for s in sevs]
        colors = plt.get_cmap("tab10").colors
        markers = "os^Dv"
        for ax, fam in zip(axes.flat, order):
            ax.plot(xs, mean, color="k", lw=1.8, ls="--", label="mean (all)")
            for i, c in enumerate(panels[fam]):
                ax.plot(xs, [clean] + [r["accuracy"][c][s] for s in sevs], color=colors[i % len(colors)],
                        marker=markers[i % len(markers)], ms=4, lw=1.4, label=c)
            ax.set_title(fam, fontsize=10)
            ax.set_xticks(xs)
            ax.set_xticklabels(["clean"] + sevs, fontsize=8)
            ax.set_xlabel("severity", fontsize=8)
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="lower left")
        for ax in axes.flat[len(order):]:
            ax.set_visible(False)
        for ax in axes[:, 0]:
            ax.set_ylabel("top-1 accuracy")
        fig.tight_layout()
        return fig

    @staticmethod
    def _grid(ex: dict):
        import matplotlib.pyplot as plt

        from ..report.images import decode_base64_image
        from . import plots  # noqa: F401

        img = decode_base64_image(ex["jpeg_base64"])
        nr, nc = len(ex["rows"]), len(ex["columns"])
        fig, ax = plt.subplots(figsize=(1.2 * nc + 1.6, 1.2 * nr))
        ax.imshow(img, interpolation="nearest")
        h, w = img.shape[0] / nr, img.shape[1] / nc
        ax.set_yticks([(i + 0.5) * h for i in range(nr)])
        ax.set_yticklabels(ex["rows"], fontsize=8)
        ax.set_xticks([(j + 0.5) * w for j in range(nc)])
        ax.set_xticklabels(ex["columns"], fontsize=8)
        ax.tick_params(length=0)
        for s in ax.spines.values():
            s.set_visible(False)
        return fig


def _or_na(v):
    return "n/a" if v is None else v


def _no_ce_reason(r: dict, name: str) -> str:
    """Why a corruption of a run has no AlexNet-normalized CE."""
    from ..corruptions import COMMON

    if r["parameter_set"] != "imagenet":
        return "n/a: AlexNet normalization is an ImageNet-C convention"
    if name not in COMMON:
        return "n/a: not one of the 15 ImageNet-C corruptions"
    if r["n_evaluated"] == 0:
        return "n/a: no image evaluated"
    return "n/a: needs all five severities"
