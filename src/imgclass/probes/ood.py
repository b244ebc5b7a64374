"""Probe ``ood``: does the model know when it does not know? Post-hoc OOD detectors (MSP, MaxLogit, Energy,
entropy, GEN, Mahalanobis, KNN, ViM, ReAct, ASH, ODIN) scored on the in-distribution data against each OOD set
(AUROC, AUPR-in, AUPR-out, FPR at 95 % TPR; in-distribution is the positive class, as in OpenOOD), and selective
prediction from the same scores (risk-coverage, AURC, E-AURC, accuracy at fixed coverage).

Logits and pre-logit features are computed once per dataset and shared by every detector."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UsageError
from .base import CliFlag, Metric, Probe, ProbeContext, ProbeResult, register_probe

ALL = ("msp", "max_logit", "energy", "entropy", "gen", "mahalanobis", "knn", "vim", "react", "ash", "odin")
NEED_FIT = {"mahalanobis", "knn", "vim", "react"}
DEFAULT = ("msp", "max_logit", "energy", "entropy", "gen", "mahalanobis", "knn", "vim", "react", "ash")


def _roc_points(id_scores: np.ndarray, ood_scores: np.ndarray, n: int = 101) -> dict:
    """The ROC curve (ID positive) at ``n`` false-positive rates, for the report."""
    thr = np.unique(np.concatenate([id_scores, ood_scores]))[::-1]  # descending thresholds
    ids, oods = np.sort(id_scores), np.sort(ood_scores)
    tp = len(ids) - np.searchsorted(ids, thr, side="left")  # ID scores >= threshold
    fp = len(oods) - np.searchsorted(oods, thr, side="left")
    fpr = np.concatenate([[0.0], fp / max(len(oods), 1)])
    tpr = np.concatenate([[0.0], tp / max(len(ids), 1)])
    grid = np.linspace(0, 1, n)
    return {"fpr": grid.tolist(), "tpr": np.interp(grid, fpr, tpr).tolist()}


def _split_sets(value) -> list[tuple[str, str | None]]:
    """``zoo:mnist:test@far,synthetic:uniform`` -> [(spec, tag)]; tags: near, far."""
    items = value.split(",") if isinstance(value, str) else list(value or ())
    out = []
    for it in (str(x).strip() for x in items):
        if not it:
            continue
        spec, _, tag = it.rpartition("@") if it.endswith(("@near", "@far")) else (it, "", "")
        out.append((spec, tag or None))
    return out


class OODResult(ProbeResult):
    probe = "ood"
    metrics = (Metric("auroc", "OOD AUROC"), Metric("fpr95", "FPR at 95% TPR", False), Metric("aurc", "AURC", False))
    primary = "auroc"

    detectors: list[str]
    headline_detector: str
    sets: dict[str, dict]
    auroc: dict[str, dict[str, float | None]]
    fpr95: dict[str, dict[str, float | None]]
    aurc: dict[str, float | None] = {}
    positive: str

    def headline(self) -> dict[str, float | None]:
        d = self.headline_detector
        vals = [v.get(d) for v in self.auroc.values() if v.get(d) is not None]
        fprs = [v.get(d) for v in self.fpr95.values() if v.get(d) is not None]
        out = {"auroc": float(np.mean(vals)) if vals else None, "fpr95": float(np.mean(fprs)) if fprs else None,
               "aurc": self.aurc.get(d)}
        for s, per in self.auroc.items():
            for det, v in per.items():
                out[f"auroc@{s}@{det}"] = v
        return out

    def protocol(self, params: dict) -> dict:
        return {"detector": self.headline_detector, "ood_sets": list(self.sets), "positive": self.positive,
                "fit": self.get("fit", {}).get("spec") if isinstance(self.get("fit"), dict) else None}


@register_probe
class OODProbe(Probe):
    name = "ood"
    title = "Out-of-distribution detection and selective prediction"
    description = ("OOD detectors (MSP, MaxLogit, Energy, entropy, GEN, Mahalanobis, KNN, ViM, ReAct, ASH, ODIN): "
                   "AUROC/AUPR/FPR95 per OOD set; risk-coverage and AURC on the data")
    cli_flags = (CliFlag("--ood-data", "ood_data", "OOD datasets, comma-separated; tag with @near / @far "
                                                   "(e.g. zoo:mnist:test@far,synthetic:uniform@far)"),)
    Result = OODResult

    @dataclass
    class Params:
        ood_data: tuple[str, ...] | str = ()
        detectors: tuple[str, ...] | str = DEFAULT
        headline_detector: str = "energy"
        fit_data: str | None = None  # default: the train split of the same zoo dataset, when there is one
        fit_limit: int = 10000  # seeded subset of the fit data for the statistics
        ood_limit: int | None = None  # seeded subset of each OOD set
        knn_k: int = 50
        react_percentile: float = 90.0
        ash_percentile: float = 65.0
        vim_dim: int | None = None  # default: half the feature dimensions
        odin_temperature: float = 1000.0
        odin_eps: float = 0.0014
        coverages: tuple[float, ...] = (0.8, 0.9, 0.95)
        # covariate shift: AUROC of clean against corrupted in-distribution images, per severity. Default: the
        # corruptions and severities of the corruptions probe when it runs too; "none" turns it off
        shift_corruptions: tuple[str, ...] | str | None = None
        shift_severities: tuple[int, ...] | str | None = None

    def _fit_spec(self, ctx: ProbeContext) -> str | None:
        from ..data import train_split_spec

        return self.params.fit_data or train_split_spec(ctx.dataset.spec)

    def _pass(self, ctx: ProbeContext, ds, desc: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
        """(full-width logits, features, labels, indices) of a dataset, one pass."""
        eng, clf = ctx.engine, ctx.classifier

        def fn(b):
            with torch.no_grad():
                x = eng.to_float(b.images)
                f = clf.features(x).float()
                return {"logits": clf.logit_layer()(f).float() if self._head_ok else clf(x).float(), "f": f,
                        "y": b.labels}

        res = eng.map(ds, fn, desc=desc)
        o = res.outputs
        if not o:
            return torch.empty(0, 0), torch.empty(0, 0), torch.empty(0, dtype=torch.long), res.indices
        return o["logits"].cpu(), o["f"].cpu(), o["y"].cpu(), res.indices

    def run(self, ctx: ProbeContext) -> dict:
        from ..data import load_dataset
        from ..ood import detectors as D
        from ..ood import metrics as M

        p = self.params
        sets = _split_sets(p.ood_data)
        if not sets:
            raise UsageError("ood: give the OOD data with --ood-data SPEC[,SPEC...] (e.g. zoo:mnist:test@far)")
        names = [d.strip() for d in (p.detectors.split(",") if isinstance(p.detectors, str) else p.detectors)]
        unknown = [d for d in names if d not in ALL]
        if unknown:
            raise UsageError(f"ood: unknown detector(s) {', '.join(unknown)}; known: {', '.join(ALL)}")
        if p.headline_detector not in names:
            raise UsageError(f"ood: headline_detector {p.headline_detector!r} is not among the detectors run")
        clf = ctx.classifier
        head = clf.logit_layer()
        self._head_ok = isinstance(head, torch.nn.Linear)
        W = head.weight.detach().float().cpu() if self._head_ok else None
        b = head.bias.detach().float().cpu() if self._head_ok and head.bias is not None else None
        notes = []
        if not self._head_ok:
            for d in ("vim", "react", "ash"):
                if d in names:
                    names.remove(d)
                    notes.append(f"{d} skipped: the model's logit layer is not a Linear layer")
        id_logits, id_f, id_y, _ = self._pass(ctx, ctx.dataset, "ood: in-distribution")
        fit_spec = self._fit_spec(ctx)
        fit_info: dict = {"spec": fit_spec}
        fit_f = fit_y = None
        if any(d in NEED_FIT for d in names):
            if fit_spec is None:
                for d in [d for d in names if d in NEED_FIT]:
                    names.remove(d)
                notes.append("mahalanobis, knn, vim and react need training statistics: no fit data (set "
                             "ood.fit_data=SPEC); skipped")
            else:
                fit_ds = load_dataset(fit_spec)
                if p.fit_limit and p.fit_limit < len(fit_ds):
                    idx = np.sort(ctx.generator("ood-fit").choice(len(fit_ds), size=p.fit_limit, replace=False))
                    fit_ds = fit_ds.subset(idx)
                _, fit_f, fit_y, _ = self._pass(ctx, fit_ds, "ood: fit statistics")
                fit_info.update({"n": int(len(fit_f)), "selection": f"seeded subset of {p.fit_limit}"
                                 if p.fit_limit and len(fit_f) == p.fit_limit else "all"})
        fitted = {}
        if "mahalanobis" in names:
            fitted["mahalanobis"] = D.Mahalanobis().fit(fit_f, fit_y)
        if "knn" in names:
            fitted["knn"] = D.KNN(k=p.knn_k).fit(fit_f)
        if "vim" in names:
            # principal subspace: half the feature dimensions by default (OpenOOD: 256 of ResNet-18's 512)
            fitted["vim"] = D.ViM().fit(fit_f, W, b, dim=p.vim_dim or fit_f.shape[1] // 2)
        react_t = D.react_threshold(fit_f, percentile=p.react_percentile) if "react" in names else None

        self._names_run = list(names)

        def scores(logits, f, x_ds=None, only=None) -> dict[str, np.ndarray]:
            out = {}
            for d in (names if only is None else only):
                if d == "msp":
                    s = D.msp(logits)
                elif d == "max_logit":
                    s = D.max_logit(logits)
                elif d == "energy":
                    s = D.energy(logits)
                elif d == "entropy":
                    s = D.entropy(logits)
                elif d == "gen":
                    s = D.gen(logits)
                elif d in fitted:
                    s = fitted[d].score(f)
                elif d == "react":
                    s = D.react(f, W, b, threshold=react_t)
                elif d == "ash":
                    s = D.ash(f, W, b, percentile=p.ash_percentile)
                elif d == "odin":
                    s = self._odin(ctx, x_ds)
                else:
                    continue
                out[d] = np.asarray(s.detach().cpu().numpy() if isinstance(s, torch.Tensor) else s, dtype=np.float64)
            return out

        id_scores = scores(id_logits, id_f, ctx.dataset)
        res: dict = {"detectors": names, "headline_detector": p.headline_detector, "fit": fit_info,
                     "positive": "in-distribution samples are the positive class (AUROC, AUPR-in, FPR at 95% TPR: "
                                 "the fraction of OOD samples above the threshold that keeps 95% of the "
                                 "in-distribution ones); AUPR-out takes OOD as positive; scores: higher = more "
                                 "in-distribution",
                     "n_id": int(len(id_logits)), "sets": {}, "auroc": {}, "fpr95": {}, "aupr_in": {}, "aupr_out": {},
                     "histograms": {}, "warnings": notes}
        for spec, tag in sets:
            ds = load_dataset(spec)
            if p.ood_limit and p.ood_limit < len(ds):
                ds = ds.subset(np.sort(ctx.generator(f"ood-set:{spec}").choice(len(ds), size=p.ood_limit,
                                                                              replace=False)))
            lo, fo, _, _ = self._pass(ctx, ds, f"ood: {spec}")
            sc = scores(lo, fo, ds)
            res["sets"][spec] = {"tag": tag, "n": int(len(lo))}
            for what in ("auroc", "fpr95", "aupr_in", "aupr_out"):
                res[what][spec] = {}
            res["histograms"][spec] = {}
            res.setdefault("roc", {})[spec] = {}
            for d in names:
                m = M.ood_metrics(id_scores[d], sc[d])
                for what in ("auroc", "fpr95", "aupr_in", "aupr_out"):
                    res[what][spec][d] = m[what]
                res["roc"][spec][d] = _roc_points(id_scores[d], sc[d])
                lo_, hi_ = float(min(id_scores[d].min(), sc[d].min())), float(max(id_scores[d].max(), sc[d].max()))
                edges = np.linspace(lo_, hi_ if hi_ > lo_ else lo_ + 1, 31)
                res["histograms"][spec][d] = {"edges": edges.tolist(),
                                              "id": np.histogram(id_scores[d], edges)[0].tolist(),
                                              "ood": np.histogram(sc[d], edges)[0].tolist()}
        shift = self._shift(ctx, id_scores, scores)
        if shift:
            res["shift"] = shift
        for tag in ("near", "far"):
            tagged = [s for s, t in sets if t == tag]
            if tagged:
                res[f"{tag}_auroc"] = {d: float(np.mean([res["auroc"][s][d] for s in tagged])) for d in names}
        # selective prediction on the in-distribution data, from the same scores
        if ctx.dataset.labeled and len(id_logits):
            al = ctx.engine.alignment(ctx.dataset)
            correct = (al.apply(id_logits).argmax(1) == id_y).numpy()
            res["aurc"], res["excess_aurc"], res["accuracy_at_coverage"], res["risk_coverage"] = {}, {}, {}, {}
            for d in names:
                conf = id_scores[d]
                res["aurc"][d] = M.aurc(conf, correct)
                res["excess_aurc"][d] = M.excess_aurc(conf, correct)
                res["accuracy_at_coverage"][d] = {str(k): v for k, v in
                                                  M.accuracy_at_coverage(conf, correct, coverages=p.coverages).items()}
                cov, risk = M.risk_coverage(conf, correct)
                pick = np.unique(np.linspace(0, len(cov) - 1, min(len(cov), 101)).round().astype(int))
                res["risk_coverage"][d] = {"coverage": np.asarray(cov)[pick].tolist(),
                                           "risk": np.asarray(risk)[pick].tolist()}
        return res

    def _shift(self, ctx: ProbeContext, id_scores: dict, scores) -> dict | None:
        """Per severity (mean over corruptions) and per corruption: AUROC of clean against corrupted ID images."""
        from ..corruptions import corrupt
        from ..ood import metrics as M
        from .corruptions import corruption_names, corruption_severities

        p = self.params
        other = ctx.shared.get("probes", {}).get("corruptions")
        if isinstance(p.shift_corruptions, str) and p.shift_corruptions.strip().lower() == "none":
            return None
        if p.shift_corruptions is None and other is None:
            return None
        names = corruption_names(p.shift_corruptions if p.shift_corruptions is not None else other.corruptions)
        sevs = corruption_severities(p.shift_severities if p.shift_severities is not None else
                                     (other.severities if other is not None else (1, 2, 3, 4, 5)))
        size = ctx.classifier.config.input_size[1]
        pset = (other.params if other is not None and other.params else None) or ("cifar10" if size <= 64 else
                                                                                   "imagenet")
        eng, clf, ds = ctx.engine, ctx.classifier, ctx.dataset
        dets = [d for d in self._names_run if d != "odin"]
        out: dict = {"corruptions": list(names), "severities": list(sevs), "parameter_set": pset, "detectors": dets,
                     "by_corruption": {}, "by_severity": {}}
        for name in names:
            out["by_corruption"][name] = {}
            for s in sevs:
                def fn(b, name=name, s=s):
                    ids = [ds.sample_id(int(i)) for i in b.indices]
                    x = eng.to_float(corrupt(b.images, name, s, seed=ctx.seed, sample_ids=ids, params=pset))
                    with torch.no_grad():
                        f = clf.features(x).float()
                        return {"logits": clf.logit_layer()(f).float() if self._head_ok else clf(x).float(), "f": f}

                o = eng.map(ds, fn, desc=f"ood shift: {name} {s}").outputs
                sc = scores(o["logits"].cpu(), o["f"].cpu(), None, only=dets)
                out["by_corruption"][name][str(s)] = {d: M.ood_metrics(id_scores[d], sc[d])["auroc"] for d in dets}
        for s in sevs:
            out["by_severity"][str(s)] = {d: float(np.mean([out["by_corruption"][c][str(s)][d] for c in names]))
                                          for d in dets}
        return out

    def _odin(self, ctx: ProbeContext, ds) -> np.ndarray:
        from ..ood import detectors as D

        eng, clf, p = ctx.engine, ctx.classifier, self.params

        def fn(b):
            x = eng.to_float(b.images)
            with torch.enable_grad():
                s = D.odin(clf, x, temperature=p.odin_temperature, eps=p.odin_eps)
            return {"s": torch.as_tensor(s).float()}

        return ctx.engine.map(ds, fn, desc="ood: odin", grad=True).outputs["s"].cpu().numpy()

    def summary(self, r: ProbeResult) -> list[tuple[str, str]]:
        d = r["headline_detector"]
        out = []
        for s in r["sets"]:
            out.append((f"{s} AUROC / FPR95 ({d})", f"{r['auroc'][s][d]:.4f} / {r['fpr95'][s][d]:.4f}"))
        if r.get("aurc"):
            out.append((f"AURC ({d})", f"{r['aurc'][d]:.4f}"))
        return out

    def render(self, r: ProbeResult, sec) -> None:
        import matplotlib.pyplot as plt

        for w in r.get("warnings", []):
            sec.warn(w)
        sec.p(r["positive"] + ".")
        for s, meta in r["sets"].items():
            sec.html(f"<h3>{s}{' (' + meta['tag'] + '-OOD)' if meta.get('tag') else ''}: {meta['n']} images</h3>")
            sec.table(["detector", "AUROC", "AUPR-in", "AUPR-out", "FPR@95TPR"],
                      [(d, r["auroc"][s][d], r["aupr_in"][s][d], r["aupr_out"][s][d], r["fpr95"][s][d])
                       for d in r["detectors"]])
            hist = r["histograms"][s]
            n = len(r["detectors"])
            cols = min(n, 4)
            rows = (n + cols - 1) // cols
            fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
            for ax, d in zip(axes.flat, r["detectors"]):
                e = np.asarray(hist[d]["edges"])
                ax.stairs(hist[d]["id"], e, label="in-distribution", fill=True, alpha=0.5)
                ax.stairs(hist[d]["ood"], e, label="OOD", fill=True, alpha=0.5)
                ax.set_title(d, fontsize=9)
                ax.tick_params(labelsize=7)
            for ax in list(axes.flat)[n:]:
                ax.axis("off")
            axes.flat[0].legend(fontsize=7)
            fig.tight_layout()
            sec.figure(fig, f"Score histograms, in-distribution against {s} (higher = more in-distribution)")
        for s, per in (r.get("roc") or {}).items():
            fig, ax = plt.subplots(figsize=(4.2, 3.6))
            for d, c in per.items():
                ax.plot(c["fpr"], c["tpr"], label=f"{d} ({r['auroc'][s][d]:.3f})", lw=1)
            ax.plot([0, 1], [0, 1], color="#999", lw=0.8, ls="--")
            ax.set_xlabel("false-positive rate (OOD accepted)")
            ax.set_ylabel("true-positive rate (ID accepted)")
            ax.legend(fontsize=6)
            sec.figure(fig, f"ROC curves against {s} (AUROC in the legend)")
        shift = r.get("shift")
        if shift:
            sec.html("<h3>Covariate shift: clean against corrupted in-distribution images</h3>")
            sec.p(f"AUROC of each detector separating the clean images from their corrupted copies "
                  f"({', '.join(shift['corruptions'])}; {shift['parameter_set']} parameters), mean over the "
                  "corruptions per severity: near 0.5, the detector does not see the shift.")
            sevs = list(shift["by_severity"])
            sec.table(["detector"] + [f"severity {k}" for k in sevs],
                      [(d, *[shift["by_severity"][k][d] for k in sevs]) for d in shift["detectors"]])
        if r.get("risk_coverage"):
            fig, ax = plt.subplots(figsize=(5, 3.5))
            for d, rc in r["risk_coverage"].items():
                ax.plot(rc["coverage"], rc["risk"], label=f"{d} (AURC {r['aurc'][d]:.3f})")
            ax.set_xlabel("coverage")
            ax.set_ylabel("risk (error rate among accepted)")
            ax.legend(fontsize=7)
            sec.figure(fig, "Risk-coverage curves of selective prediction on the in-distribution data")
            sec.table(["detector", "AURC", "E-AURC"] + [f"accuracy @ {c} coverage" for c in
                                                         next(iter(r["accuracy_at_coverage"].values()))],
                      [(d, r["aurc"][d], r["excess_aurc"][d], *r["accuracy_at_coverage"][d].values())
                       for d in r["detectors"]])
