"""Probe ``explanations``: attribution maps on a seeded sample, measured rather than only drawn.

For N samples (through the engine, so the model's resize/crop applies) it computes the maps of the
chosen methods, their deletion and insertion AUC (Petsiuk et al. 2018) next to two random-map baselines
(i.i.d. per pixel, and i.i.d. on a 7x7 grid upsampled, the spatial scale of a CAM), the cascading
model-randomization check (Adebayo et al. 2018), and a gallery of overlays. With ``tcav_concepts`` (name ->
folder) and ``tcav_random`` (at least 3 folders of random images) it also runs TCAV (Kim et al. 2018) for
``tcav_target`` on the dataset's images of that class.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import UsageError
from ..report.images import image_base64
from .base import CliFlag, Metric, Probe, ProbeContext, ProbeResult, register_probe

BASELINES = {"random": None, "random_smooth": 7}  # name -> grid cells of the random map (None: per pixel)


def _worse_than_random(deletion: dict, insertion: dict, methods) -> list[str]:
    """A warning for each method whose mean deletion AUC is not below the random map's, or whose insertion AUC is
    not above it: on this model and data its maps rank pixels no better than chance."""
    out = []
    for m in methods:
        bad = []
        if deletion[m] >= deletion["random"]:
            bad.append(f"deletion AUC {deletion[m]:.4f} >= random map's {deletion['random']:.4f} (lower is better)")
        if insertion[m] <= insertion["random"]:
            bad.append(f"insertion AUC {insertion[m]:.4f} <= random map's {insertion['random']:.4f} "
                       "(higher is better)")
        if bad:
            out.append(f"{m} does no better than a random map: " + "; ".join(bad))
    return out


def sample_seed(seed: int, sample_id: str) -> int:
    """Seed of one sample's random maps and tie-breaking: a function of the run seed and the sample id only,
    so a sample's numbers do not depend on which other samples (or which ``limit``) the run holds."""
    h = hashlib.blake2b(f"{int(seed)}|{sample_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


class ExplanationsResult(ProbeResult):
    """``deletion_auc@METHOD`` (lower is better), ``insertion_auc@METHOD`` (higher is better)."""

    probe = "explanations"
    metrics = (Metric("deletion_auc", "deletion AUC", False), Metric("insertion_auc", "insertion AUC"))

    n_evaluated: int
    methods: list[str]
    deletion_auc: dict[str, float | None] = {}
    insertion_auc: dict[str, float | None] = {}

    def headline(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for what in ("deletion_auc", "insertion_auc"):
            for m, v in getattr(self, what).items():
                out[f"{what}@{m}"] = v
        return out

    def protocol(self, params: dict) -> dict:
        return {"methods": self.methods, "target": self.get("target"), "n_evaluated": self.n_evaluated,
                **(self.get("protocol") or {})}

@register_probe
class ExplanationsProbe(Probe):
    name = "explanations"
    title = "Explanations"
    description = ("attribution maps on a seeded sample: deletion/insertion AUC against random maps, "
                   "model-randomization sanity check, overlay gallery")
    cli_flags = (CliFlag("--explain-methods", "methods", "attribution methods, e.g. gradcam,ig,saliency", _names),)

    Result = ExplanationsResult

    @dataclass
    class Params:
        n_samples: int = 8
        methods: tuple[str, ...] = ("gradcam", "ig", "saliency")
        method_params: dict = field(default_factory=dict)  # e.g. {"ig": {"steps": 32}}
        target: str = "predicted"  # or "label"
        n_steps: int = 50  # deletion/insertion steps
        deletion_substrate: str = "mean"  # the RISE code: zeros of the normalized input; blur for insertion
        insertion_substrate: str = "blur"
        randomization: bool = True
        randomization_stages: tuple[int, ...] = (1, 4, 16)
        randomization_methods: tuple[str, ...] | None = None  # default: the chosen methods
        gallery: int = 8
        internal_batch_size: int = 32
        tcav_concepts: dict = field(default_factory=dict)  # concept name -> folder of example images
        tcav_random: tuple[str, ...] = ()  # folders of random counterexamples (>= 3)
        tcav_target: str | None = None  # model class (name, index or wnid); required with tcav_concepts
        tcav_layer: str | None = None  # default: the CAM layer
        tcav_images: int = 50  # images of the target class taken from the dataset (seeded)

    def run(self, ctx: ProbeContext) -> dict:
        from ..explain import METHODS, deletion_auc, explain, insertion_auc, random_maps, randomization_check

        p = self.params
        methods = list(p.methods)
        unknown = [m for m in methods + list(p.randomization_methods or ()) if m not in METHODS]
        if unknown:
            raise UsageError(f"explanations: unknown method(s) {', '.join(unknown)}; known: {', '.join(sorted(METHODS))}")
        if p.target not in {"predicted", "label"}:
            raise UsageError(f"explanations: target must be 'predicted' or 'label', got {p.target!r}")
        tcav_target = self._check_tcav(ctx.classifier)
        rmethods = list(p.randomization_methods or methods) if p.randomization else []
        eng, clf, ds = ctx.engine, ctx.classifier, ctx.dataset
        n = min(p.n_samples, len(ds))
        idx = np.sort(ctx.generator("explanations").choice(len(ds), size=n, replace=False))
        sub = ds.subset(idx)
        al = eng.alignment(ds)
        ibs = p.internal_batch_size

        def model_targets(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            if al.groups is not None:
                if p.target == "label":
                    raise UsageError("explanations: target='label' needs dataset classes that are model classes")
                return logits.argmax(1)
            col = al.index.to(logits.device)
            return col[labels] if p.target == "label" else col[al.apply(logits).argmax(1)]

        def fn(b) -> dict[str, torch.Tensor]:
            x = eng.to_float(b.images).contiguous()
            with torch.no_grad():
                logits = clf(x).float()
            t = model_targets(logits, b.labels)
            seeds = [sample_seed(ctx.seed, ds.sample_id(int(idx[i]))) for i in b.indices.tolist()]
            maps = {m: explain(clf, x, t, method=m, internal_batch_size=ibs, **p.method_params.get(m, {}))
                    for m in methods}
            for name, cells in BASELINES.items():
                maps[name] = torch.cat([random_maps(1, tuple(x.shape[-2:]), seed=s, cells=cells) for s in seeds]).to(x.device)
            out = {"labels": b.labels, "targets": t, "pred": al.apply(logits).argmax(1),
                   "target_prob": torch.softmax(logits, 1).gather(1, t[:, None])[:, 0],
                   "images": b.images.contiguous()}
            for m, mp in maps.items():
                d = deletion_auc(clf, x, mp, t, n_steps=p.n_steps, substrate=p.deletion_substrate, batch_size=ibs,
                                 seed=seeds)
                i = insertion_auc(clf, x, mp, t, n_steps=p.n_steps, substrate=p.insertion_substrate,
                                  batch_size=ibs, seed=seeds)
                out[f"del_curve:{m}"], out[f"ins_curve:{m}"] = d.curves.to(x.device), i.curves.to(x.device)
                out[f"del_auc:{m}"], out[f"ins_auc:{m}"] = d.auc.to(x.device), i.auc.to(x.device)
                if m in methods:
                    out[f"map:{m}"] = mp.half()
            if rmethods:
                r = randomization_check(clf, x, t, methods=rmethods, stages=p.randomization_stages,
                                        method_params=p.method_params, internal_batch_size=ibs, seed=ctx.seed,
                                        maps={m: maps[m] for m in rmethods if m in maps})
                for m in rmethods:
                    out[f"rand:{m}"] = torch.tensor(r.spearman_abs[m], device=x.device).T  # (B, stages)
                    out[f"rand_signed:{m}"] = torch.tensor(r.spearman[m], device=x.device).T
                self._rand_meta = {"stages": r.stages, "stage_layers": r.stage_layers, "n_layers": len(r.layers)}
            return out

        self._rand_meta = {}
        res = eng.map(sub, fn, grad=True, desc="explaining")
        o = res.outputs
        if not len(res.indices):
            return {"n_evaluated": 0, "methods": methods, "skipped": res.skipped}
        fr = np.round(np.linspace(0, 1, p.n_steps + 1), 6)
        rows = methods + list(BASELINES)
        del_auc = {m: o[f"del_auc:{m}"].double() for m in rows}
        ins_auc = {m: o[f"ins_auc:{m}"].double() for m in rows}
        ids = [ds.sample_id(int(idx[i])) for i in res.indices]
        names = list(ds.classes.names)
        result = {
            "n_evaluated": int(len(res.indices)),
            "methods": methods,
            "baselines": {k: ("uniform i.i.d. per pixel" if v is None else f"uniform i.i.d. on a {v}x{v} grid, "
                              "upsampled bilinearly") for k, v in BASELINES.items()},
            "target": p.target,
            "sample_ids": ids,
            "deletion_auc": {m: float(v.mean()) for m, v in del_auc.items()},
            "insertion_auc": {m: float(v.mean()) for m, v in ins_auc.items()},
            "per_sample": {"deletion_auc": {m: v.tolist() for m, v in del_auc.items()},
                           "insertion_auc": {m: v.tolist() for m, v in ins_auc.items()}},
            "curves": {"fractions": fr.tolist(),
                       "deletion": {m: o[f"del_curve:{m}"].double().mean(0).tolist() for m in rows},
                       "insertion": {m: o[f"ins_curve:{m}"].double().mean(0).tolist() for m in rows}},
            "protocol": {"n_steps": p.n_steps, "deletion_substrate": p.deletion_substrate,
                         "insertion_substrate": p.insertion_substrate, "score": "softmax probability of the target",
                         "auc": "trapezoid over the fraction of pixels deleted/inserted (Petsiuk et al. 2018)"},
            "skipped": res.skipped,
        }
        if rmethods:
            result["randomization"] = {
                **self._rand_meta,
                "mean_spearman_abs": {m: o[f"rand:{m}"].double().mean(0).tolist() for m in rmethods},
                "mean_spearman": {m: o[f"rand_signed:{m}"].double().mean(0).tolist() for m in rmethods},
                "what": "Spearman rank correlation of |map| between the trained model and copies whose top-k weight "
                        "layers were re-drawn (cascading, Adebayo et al. 2018); high = insensitive to the model",
            }
        result["warnings"] = _worse_than_random(result["deletion_auc"], result["insertion_auc"], methods)
        result["gallery"] = self._gallery(o, ids, names, clf, methods, min(p.gallery, len(ids)))
        if tcav_target is not None:
            result["tcav"] = self._tcav(ctx, tcav_target)
        return result

    def _check_tcav(self, clf) -> int | None:
        """The TCAV target's class index, after checking the TCAV parameters (None without concepts)."""
        from ..explain.base import class_index

        p = self.params
        if not p.tcav_concepts:
            return None
        if p.tcav_target is None or str(p.tcav_target) == "":
            raise UsageError("explanations: tcav_concepts need tcav_target (the model class to test)")
        if len(p.tcav_random) < 3:
            raise UsageError(f"explanations: TCAV needs at least 3 tcav_random folders, got {len(p.tcav_random)}")
        if p.tcav_images < 2:
            raise UsageError(f"explanations: tcav_images must be >= 2, got {p.tcav_images}")
        target = class_index(clf, str(p.tcav_target))
        if not 0 <= target < clf.num_classes:
            raise UsageError(f"explanations: tcav_target {p.tcav_target!r} is not a class of the model")
        return target

    def _tcav(self, ctx: ProbeContext, target: int) -> dict:
        """TCAV of the concept folders for the target class, on the dataset's images labelled with it."""
        from ..explain import tcav

        p = self.params
        eng, clf, ds = ctx.engine, ctx.classifier, ctx.dataset
        al = eng.alignment(ds)
        if al.groups is not None:
            members = [k for k, g in enumerate(al.groups) if target in g.tolist()]
        else:
            members = [k for k, col in enumerate(al.index.tolist()) if col == target]
        labels = ds.labels
        pool = np.flatnonzero(np.isin(labels, members))
        if len(pool) < 2:
            raise UsageError(f"explanations: TCAV needs at least 2 images of class {clf.class_names[target]!r} in "
                             f"the dataset, found {len(pool)}")
        rng = ctx.generator("explanations-tcav")
        sel = np.sort(rng.choice(pool, size=min(p.tcav_images, len(pool)), replace=False))
        res = eng.map(ds.subset(sel), lambda b: {"x": eng.to_float(b.images).contiguous()}, desc="TCAV images")
        if len(res.indices) < 2:
            raise UsageError("explanations: fewer than 2 readable images of the TCAV target class")
        r = tcav(clf, res.outputs["x"], target, concepts=dict(p.tcav_concepts), random=list(p.tcav_random),
                 layer=p.tcav_layer, seed=ctx.seed, batch_size=p.internal_batch_size)
        return {**r.to_dict(), "n_class_images": int(len(res.indices)),
                "test": "two-sided t-test of the concept's TCAV scores against those of a random set taken as a "
                        "concept, over the random counterexample sets (Kim et al. 2018)"}

    @staticmethod
    def _gallery(o: dict, ids: list[str], names: list[str], clf, methods: list[str], k: int) -> list[dict]:
        from PIL import Image

        from ..explain import overlay

        out = []
        for i in range(k):
            img = o["images"][i].permute(1, 2, 0).numpy()
            panels = [img] + [overlay(img, o[f"map:{m}"][i].float()) for m in methods]
            strip = Image.fromarray(np.concatenate(panels, axis=1))
            k_up = max(1, 128 // img.shape[0])  # small inputs (CIFAR) are enlarged for the eye
            if k_up > 1:
                strip = strip.resize((strip.width * k_up, strip.height * k_up), Image.Resampling.NEAREST)
            t = int(o["targets"][i])
            out.append({"id": ids[i], "label": names[int(o["labels"][i])], "prediction": names[int(o["pred"][i])],
                        "target": clf.class_names[t] if t < clf.num_classes else str(t),
                        "target_prob": float(o["target_prob"][i]),
                        "jpeg_base64": image_base64(strip, fmt="JPEG", quality=85)})
        return out

    def summary(self, r: dict) -> list[tuple[str, str]]:
        if not r.get("n_evaluated"):
            return [("evaluated", "0")]
        rows = [(f"{m} deletion AUC (lower better) / insertion AUC (higher better)",
                 f"{r['deletion_auc'][m]:.4f} / {r['insertion_auc'][m]:.4f}") for m in r["methods"] + ["random"]]
        for k, c in r.get("tcav", {}).get("concepts", {}).items():
            rows.append((f"TCAV {k}", f"{c['mean']:.3f} (p = {c['p_value']:.3g})"))
        return rows + [("evaluated", str(r["n_evaluated"]))]

    def render(self, r: dict, sec) -> None:
        import matplotlib.pyplot as plt

        if not r.get("n_evaluated"):
            sec.warn("No sample could be explained.")
            return
        for w in r.get("warnings", []):
            sec.warn(w)
        pr = r["protocol"]
        sec.p(f"{r['n_evaluated']} seeded samples; maps explain the {r['target']} class. Deletion: the most salient "
              f"pixels are replaced ({pr['deletion_substrate']}) first, in {pr['n_steps']} steps; lower AUC = more "
              f"faithful. Insertion: they are revealed on a {pr['insertion_substrate']} image first; higher AUC = "
              f"more faithful. Score: {pr['score']}.")
        rows = list(r["deletion_auc"])
        sec.table(["method", "deletion AUC (lower is better)", "insertion AUC (higher is better)"],
                  [(m, r["deletion_auc"][m], r["insertion_auc"][m]) for m in rows])
        fr = np.asarray(r["curves"]["fractions"])
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
        for ax, kind in zip(axes, ("deletion", "insertion")):
            for m in rows:
                ax.plot(fr, r["curves"][kind][m], ls="--" if m in BASELINES else "-", label=m)
            ax.set_xlabel(f"fraction of pixels {'deleted' if kind == 'deletion' else 'inserted'}")
            ax.set_ylabel("target probability")
            ax.set_title(kind)
            ax.set_ylim(0, 1)
        axes[1].legend(fontsize=7)
        sec.figure(fig, "Mean deletion and insertion curves per method; dashed: random-map baselines")
        rz = r.get("randomization")
        if rz:
            st = rz["stages"]
            sec.p(rz["what"] + f". The model has {rz['n_layers']} weight layers; stage k re-draws the top k "
                  f"(down to {', '.join(rz['stage_layers'])}).")
            sec.table(["method"] + [f"top {k}" for k in st],
                      [(m, *v) for m, v in rz["mean_spearman_abs"].items()])
            fig, ax = plt.subplots(figsize=(5, 3.2))
            for m, v in rz["mean_spearman_abs"].items():
                ax.plot(range(len(st)), v, marker="o", label=m)
            ax.set_xticks(range(len(st)))
            ax.set_xticklabels([f"top {k}" for k in st])
            ax.set_ylim(-0.2, 1.05)
            ax.set_ylabel("Spearman (|map|)")
            ax.set_xlabel("layers randomized (cascading from the logits)")
            ax.legend(fontsize=7)
            sec.figure(fig, "Model-randomization sanity check: correlation with the trained model's maps")
        if r.get("gallery"):
            sec.html("<h3>Gallery</h3>")
            sec.p("Each row: the image as the model sees it, then the overlay of each method: "
                  + ", ".join(r["methods"]) + ".")
            for g in r["gallery"]:
                cap = (f"{g['id']}: label {g['label']}; predicted {g['prediction']}; explained class {g['target']} "
                       f"(p = {g['target_prob']:.3f})")
                sec.image(g["jpeg_base64"], cap, mime="image/jpeg")
        if r.get("tcav"):
            self._render_tcav(r["tcav"], sec)

    @staticmethod
    def _render_tcav(t: dict, sec) -> None:
        from ..explain import TCAVResult

        sec.html("<h3>TCAV</h3>")
        sec.p(f"Concept sensitivity of class '{t['target_name']}' at layer {t['layer']} on {t['n_class_images']} "
              f"images of the class: the TCAV score is the fraction whose class logit grows along the concept's "
              f"CAV; significance: {t['test']}, p < {t['alpha']:g}. Random null: mean score "
              f"{t['random_mean']:.3f}.")
        sec.table(["concept", "TCAV score (mean)", "std", "p-value", "significant", "CAV accuracy"],
                  [(k, c["mean"], c["std"], c["p_value"], "yes" if c["significant"] else "no",
                    float(np.mean(c["cav_accuracy"]))) for k, c in t["concepts"].items()])
        sec.figure(TCAVResult.from_dict(t).plot(), "TCAV scores per concept (± std over the random sets); "
                   "* significant, hatched not")
