"""Probe ``representation``: how good are the model's frozen features? Weighted kNN (InstDisc / lightly protocol) and a
linear probe (logistic regression, L2 strength chosen on held-out training features) trained on the features of a
training set and scored on the data; k-shot accuracy (logistic regression and nearest prototype) over seeded
episodes; k-means clustering of the data's features (NMI, ARI, Hungarian accuracy); with ``compare``, linear CKA
between the layers of this model and another on the same images.

Features come from one layer (``layer``; default the pre-logit features), computed once per dataset per run in
evaluation mode (batch norm with its running statistics, no augmentation: the model's eval resize/crop) and shared
by every part. The algorithms are in :mod:`imgclass.representation`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UsageError
from .base import Metric, Probe, ProbeContext, ProbeResult, register_probe

PRE_LOGITS = "pre_logits"
MAX_CKA_LAYERS = 8


def default_layers(clf) -> list[str]:
    """The layers CKA compares by default: timm's stage outputs (``feature_info``) where the model declares them,
    else every top-level child with a convolution or linear weight except the logit layer; at most
    ``MAX_CKA_LAYERS`` of them (evenly spaced, the last kept), then the pre-logit features (dropped after the pass
    when they equal the last stage's pooled output)."""
    m = clf.model
    mods = dict(m.named_modules())
    names: list[str] = []
    info = getattr(m, "feature_info", None)
    if info is not None:
        try:
            dicts = info.get_dicts() if hasattr(info, "get_dicts") else list(info)
            names = [d["module"] for d in dicts if isinstance(d, dict) and d.get("module") in mods]
        except (TypeError, KeyError, AttributeError):
            names = []
    if not names:
        try:
            head = clf.logit_layer()
        except RuntimeError:
            head = None
        names = [n for n, c in m.named_children()
                 if c is not head and any(p.dim() >= 2 for p in c.parameters())]
    if len(names) > MAX_CKA_LAYERS:
        pick = np.unique(np.linspace(0, len(names) - 1, MAX_CKA_LAYERS).round().astype(int))
        names = [names[i] for i in pick]
    return [n for n in names if n != PRE_LOGITS] + [PRE_LOGITS]


def _without_duplicate_pre_logits(layers: list[str], feats: dict) -> list[str]:
    """Default layers without ``pre_logits`` when it equals the pooled output of the last stage (a CIFAR ResNet)."""
    if len(layers) > 1 and layers[-1] == PRE_LOGITS:
        a, b = feats[layers[-2]], feats[PRE_LOGITS]
        if a.shape == b.shape and torch.allclose(a, b, rtol=1e-5, atol=1e-6):
            return layers[:-1]
    return layers


def _parse_layers(value) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``"a,b"`` (both models) or ``"a,b;c,d"`` (this model; the compared one) -> two tuples (empty: default)."""
    if not value:
        return (), ()
    if isinstance(value, str):
        mine, _, other = value.partition(";")
        split = (lambda s: tuple(x.strip() for x in s.split(",") if x.strip()))
        a = split(mine)
        return a, (split(other) if _ else a)
    a = tuple(str(x) for x in value)
    return a, a


class RepresentationResult(ProbeResult):
    probe = "representation"
    metrics = (Metric("knn_top1", "kNN top-1"), Metric("linear_top1", "linear-probe top-1"),
               Metric("nmi", "k-means NMI"))
    primary = "knn_top1"

    layer: str
    n_test: int
    train: dict = {}
    knn_top1: float | None = None
    linear_top1: float | None = None
    linear_C: float | None = None
    linear_heldout: dict[str, float | None] = {}
    fewshot: dict[str, dict[str, float | int | None]] = {}
    nmi: float | None = None
    ari: float | None = None
    cluster_acc: float | None = None
    compare: str | None = None
    cka: list[list[float | None]] | None = None
    cka_layers: list[str] = []
    cka_compare_layers: list[str] = []
    setup: dict = {}

    def headline(self) -> dict[str, float | None]:
        out = super().headline()
        for k, v in self.fewshot.items():
            out[f"fewshot_linear@{k}"] = v.get("linear_mean")
            out[f"fewshot_prototype@{k}"] = v.get("prototype_mean")
        return out

    def metric_info(self, key: str) -> Metric:
        if key.startswith("fewshot_"):
            what, _, k = key.partition("@")
            return Metric(key, f"{k}-shot {what.removeprefix('fewshot_')} accuracy", True)
        return super().metric_info(key)

    def protocol(self, params: dict) -> dict:
        s = self.setup
        return {k: s.get(k) for k in ("layer", "k", "temperature", "train", "n_train", "n_test", "augmentation",
                                      "batch_norm")}


@register_probe
class RepresentationProbe(Probe):
    name = "representation"
    title = "Representation quality"
    description = ("frozen features: weighted kNN and linear-probe top-1 against a training set, k-shot accuracy, "
                   "k-means NMI/ARI, linear CKA against another model's layers (compare)")
    Result = RepresentationResult

    @dataclass
    class Params:
        train_data: str | None = None  # default: the train split of the same zoo dataset, when there is one
        train_limit: int | None = 10000  # seeded subset of the training data
        layer: str | None = None  # a module name of the model (see Classifier.layer_features); None: pre-logits
        k: int = 200
        temperature: float = 0.1
        shots: tuple[int, ...] = (1, 5, 10)
        episodes: int = 5
        linear: bool = True
        linear_grid: tuple[float, ...] = tuple(float(c) for c in np.logspace(-4, 2, 7))  # logistic regression C
        heldout: float = 0.2  # fraction of the training features that chooses C
        cluster: bool = True
        compare: str | None = None  # a model spec: linear CKA between its layers and this model's
        cka_layers: tuple[str, ...] | str = ()  # "a,b" for both models or "a,b;c,d"; default: default_layers()
        tokens: str = "mean"  # 3-D token outputs: "mean" over the tokens or the "cls" (first) token

        def __post_init__(self):
            if isinstance(self.shots, (int, str)):
                self.shots = tuple(int(s) for s in str(self.shots).replace(";", ",").split(",") if s.strip())
            self.shots = tuple(int(s) for s in self.shots)
            if isinstance(self.linear_grid, (int, float, str)):
                self.linear_grid = tuple(float(c) for c in str(self.linear_grid).split(",") if c.strip())
            self.linear_grid = tuple(float(c) for c in self.linear_grid)
            if isinstance(self.cka_layers, (list, tuple)):
                self.cka_layers = tuple(str(x) for x in self.cka_layers)
            if self.k < 1 or self.temperature <= 0:
                raise UsageError(f"representation: k must be at least 1 and temperature positive, got k={self.k}, "
                                 f"temperature={self.temperature}")
            if any(s < 1 for s in self.shots) or self.episodes < 1:
                raise UsageError("representation: shots and episodes must be at least 1")
            if not self.linear_grid or any(c <= 0 for c in self.linear_grid):
                raise UsageError("representation: linear_grid needs positive C values")
            if not 0 < self.heldout < 1:
                raise UsageError(f"representation: heldout must lie in (0, 1), got {self.heldout}")
            if self.tokens not in ("mean", "cls"):
                raise UsageError(f"representation: tokens must be 'mean' or 'cls', got {self.tokens!r}")

    # -- data -------------------------------------------------------------------------------------
    def _train_spec(self, ctx: ProbeContext) -> str | None:
        from ..data import train_split_spec

        return self.params.train_data or train_split_spec(ctx.dataset.spec)

    def _train_dataset(self, ctx: ProbeContext, spec: str):
        """The (seeded subset of the) training data, loaded once per run and kept on the context for others."""
        from ..data import load_dataset

        limit = self.params.train_limit
        cache = ctx.shared.setdefault("datasets", {})
        key = (spec, limit, "representation-train")
        if key not in cache:
            ds = load_dataset(spec)
            selection = "all"
            if limit and limit < len(ds):
                idx = np.sort(ctx.generator("representation-train").choice(len(ds), size=limit, replace=False))
                ds = ds.subset(idx)
                selection = f"seeded subset of {limit}"
            cache[key] = (ds, selection)
        return cache[key]

    def _features(self, ctx: ProbeContext, clf, engine, ds, layers: list[str], desc: str):
        """({layer: (N, C) float32}, labels, indices): one pass over ``ds``, cached on the engine per dataset."""

        def fn(b):
            x = engine.to_float(b.images)
            with torch.no_grad():
                f = clf.layer_features(x, layers, tokens=self.params.tokens)
            return {**{f"f:{n}": v.float() for n, v in f.items()}, "y": b.labels}

        key = f"representation:{self.params.tokens}:" + "|".join(layers)
        res = engine.map(ds, fn, desc=desc, key=key)
        o = res.outputs
        if not o:
            return {n: torch.empty(0, 0) for n in layers}, torch.empty(0, dtype=torch.long), res.indices
        return {n: o[f"f:{n}"].cpu() for n in layers}, o["y"].cpu().long(), res.indices

    @staticmethod
    def _align(train_ds, test_ds, y: torch.Tensor) -> torch.Tensor:
        """Training labels in the evaluated data's class order (by name); -1 where the class is not there."""
        tr, te = list(train_ds.classes.names), list(test_ds.classes.names)
        if tr == te:
            return y
        where = {n: i for i, n in enumerate(te)}
        lut = torch.tensor([where.get(n, -1) for n in tr], dtype=torch.long)
        if (lut < 0).all():
            raise UsageError(f"representation: the training data {train_ds.spec} shares no class name with "
                             f"{test_ds.spec}")
        return lut[y]

    # -- run --------------------------------------------------------------------------------------
    def run(self, ctx: ProbeContext) -> dict:
        from ..representation import cluster_metrics, fewshot_accuracy, knn_top1, linear_probe

        p = self.params
        clf, eng = ctx.classifier, ctx.engine
        layer = p.layer or PRE_LOGITS
        mine_cka, other_cka = _parse_layers(p.cka_layers)
        cka_layers = list(mine_cka or (default_layers(clf) if p.compare else []))
        layers = list(dict.fromkeys([layer, *cka_layers]))
        feats, y, idx = self._features(ctx, clf, eng, ctx.dataset, layers, "representation: features")
        if not mine_cka:
            cka_layers = _without_duplicate_pre_logits(cka_layers, feats)
        f = feats[layer]
        num_classes = len(ctx.dataset.classes)
        notes: list[str] = []
        res: dict = {"layer": layer, "n_test": int(len(f)), "warnings": notes}
        train_spec = self._train_spec(ctx)
        setup = {"layer": layer, "feature_dim": int(f.shape[1]) if f.dim() == 2 else None,
                 "tokens": p.tokens, "k": p.k, "temperature": p.temperature, "train": train_spec,
                 "n_test": int(len(f)), "test": ctx.dataset.spec,
                 "augmentation": "off: the model's eval resize/crop only",
                 "batch_norm": "evaluation mode (running statistics)", "transform": eng.transform.to_dict(),
                 "knn": "cosine similarity of L2-normalized features, top-k neighbours weighted by exp(sim / T), "
                        "summed per class (InstDisc; lightly knn_predict)",
                 "linear": f"multinomial logistic regression (scikit-learn lbfgs) on standardized features; C from "
                           f"{list(p.linear_grid)} by accuracy on a seeded {p.heldout:.0%} held-out part of the "
                           "training features, refit on all of them",
                 "fewshot": f"{p.episodes} seeded episodes per shot count; logistic regression (C=1) on features "
                            "standardized with the training set's mean/std; nearest prototype by cosine to the "
                            "L2-normalized mean of L2-normalized support features",
                 "clustering": "k-means (scikit-learn, n_init=10, seeded) on L2-normalized features of the "
                               "evaluated data, k = number of classes present"}
        if train_spec is None:
            notes.append("kNN, linear probe and few-shot need training features: no training data (set "
                         "representation.train_data=SPEC); skipped")
            res["train"] = {"spec": None}
        else:
            train_ds, selection = self._train_dataset(ctx, train_spec)
            tfs, ty, _ = self._features(ctx, clf, eng, train_ds, [layer], "representation: training features")
            tf = tfs[layer]
            ty = self._align(train_ds, ctx.dataset, ty)
            keep = ty >= 0
            if not bool(keep.all()):
                notes.append(f"{int((~keep).sum())} training samples of classes the evaluated data lacks: left out")
            tf, ty = tf[keep], ty[keep]
            res["train"] = {"spec": train_spec, "n": int(len(tf)), "selection": selection}
            setup["n_train"] = int(len(tf))
            if len(tf) and len(f):
                res["knn_top1"] = knn_top1(f, y, tf, ty, num_classes, k=p.k, t=p.temperature)
                if p.k > len(tf):
                    notes.append(f"k={p.k} is above the {len(tf)} training samples: every one is a neighbour")
                if p.linear and len(torch.unique(ty)) >= 2:
                    lp = linear_probe(tf, ty, f, y, Cs=p.linear_grid, heldout=p.heldout, seed=ctx.seed)
                    res["linear_top1"], res["linear_C"] = lp.top1, lp.C
                    res["linear_heldout"] = {f"{c:g}": v for c, v in lp.heldout.items()}
                    res["linear_n_fit"], res["linear_n_heldout"] = lp.n_train, lp.n_heldout
                if p.shots:
                    fs = fewshot_accuracy(tf, ty, f, y, shots=p.shots, episodes=p.episodes, seed=ctx.seed)
                    res["fewshot"] = {str(k): v for k, v in fs.items()}
        if p.cluster and len(f) >= 2:
            from threadpoolctl import threadpool_limits

            with threadpool_limits(1):  # k-means' reductions in one order, whatever the process count
                cm = cluster_metrics(f, y, seed=ctx.seed)
            res.update(nmi=cm["nmi"], ari=cm["ari"], cluster_acc=cm["cluster_acc"], n_clusters=cm["k"])
        if p.compare:
            res.update(self._compare(ctx, feats, idx, cka_layers, list(other_cka)))
        res["setup"] = setup
        return res

    def _compare(self, ctx: ProbeContext, feats: dict, idx: np.ndarray, mine: list[str], other: list[str]) -> dict:
        from ..engine import Engine
        from ..models import load_model
        from ..representation import cka_matrix

        eng = ctx.engine
        clf2 = load_model(self.params.compare)
        eng2 = Engine(clf2, batch_size=eng.batch_size, workers=eng.workers, device=str(eng.device),
                      on_error=eng.on_error, fast=False, progress=eng.progress, dist=eng.dist)
        default = not other
        other = other or default_layers(eng2.classifier)
        f2, _, idx2 = self._features(ctx, eng2.classifier, eng2, ctx.dataset, other,
                                     f"representation: {self.params.compare}")
        if default:
            other = _without_duplicate_pre_logits(other, f2)
        common = np.intersect1d(idx, idx2)
        a = np.searchsorted(idx, common)
        b = np.searchsorted(idx2, common)
        m = cka_matrix([feats[n][a] for n in mine], [f2[n][b] for n in other])
        return {"compare": self.params.compare, "cka": [[float(v) for v in row] for row in m], "cka_layers": mine,
                "cka_compare_layers": other, "cka_n": int(len(common))}

    # -- report -----------------------------------------------------------------------------------
    def summary(self, r: ProbeResult) -> list[tuple[str, str]]:
        out = []
        for key, label in (("knn_top1", "kNN top-1"), ("linear_top1", "linear-probe top-1"), ("nmi", "k-means NMI")):
            if r.get(key) is not None:
                out.append((f"{label} ({r['layer']})", f"{r[key]:.4f}"))
        return out

    def render(self, r: ProbeResult, sec) -> None:
        import matplotlib.pyplot as plt

        for w in r.get("warnings", []):
            sec.warn(w)
        s = r.get("setup") or {}
        tr = r.get("train") or {}
        sec.p(f"Features of layer {r['layer']} ({s.get('feature_dim')} dimensions; {s.get('augmentation')}; batch "
              f"norm in {s.get('batch_norm')}) on {r['n_test']} evaluated images"
              + (f"; training features: {tr.get('spec')}, {tr.get('n')} images ({tr.get('selection')})."
                 if tr.get("spec") else "."))
        rows = [("kNN top-1", r.get("knn_top1"), f"k={s.get('k')}, T={s.get('temperature')}; {s.get('knn')}"),
                ("linear-probe top-1", r.get("linear_top1"),
                 f"C={r.get('linear_C')}; {s.get('linear')}" if r.get("linear_C") is not None else s.get("linear")),
                ("k-means NMI", r.get("nmi"), s.get("clustering")),
                ("k-means ARI", r.get("ari"), ""),
                ("k-means Hungarian accuracy", r.get("cluster_acc"), "")]
        sec.table(["measure", "value", "protocol"], [(a, "—" if v is None else v, c) for a, v, c in rows])
        if r.get("linear_heldout"):
            sec.table(["C"] + list(r["linear_heldout"]),
                      [["held-out accuracy"] + ["—" if v is None else v for v in r["linear_heldout"].values()]])
        fs = r.get("fewshot") or {}
        if fs:
            ks = sorted(fs, key=int)
            sec.table(["shots", "linear (mean)", "linear (std)", "prototype (mean)", "prototype (std)"],
                      [(int(k), fs[k]["linear_mean"], fs[k]["linear_std"], fs[k]["prototype_mean"],
                        fs[k]["prototype_std"]) for k in ks])
            fig, ax = plt.subplots(figsize=(4.6, 3.4))
            x = [int(k) for k in ks]
            for what, label in (("linear", "logistic regression"), ("prototype", "nearest prototype")):
                ax.errorbar(x, [fs[k][f"{what}_mean"] for k in ks], yerr=[fs[k][f"{what}_std"] for k in ks],
                            marker="o", capsize=3, label=label)
            for key, label, ls in (("linear_top1", "linear probe (all)", "--"), ("knn_top1", "kNN (all)", ":")):
                if r.get(key) is not None:
                    ax.axhline(r[key], color="#777", lw=0.8, ls=ls, label=label)
            ax.set_xscale("log")
            ax.set_xticks(x)
            ax.set_xticklabels([str(v) for v in x])
            ax.set_xlabel("training examples per class")
            ax.set_ylabel("top-1 accuracy")
            ax.legend(fontsize=7)
            fig.tight_layout()
            n_ep = fs[ks[0]].get("episodes")
            sec.figure(fig, f"Few-shot accuracy against shots per class (mean ± std over {n_ep} seeded episodes)")
        if r.get("cka") is not None:
            m = np.array([[np.nan if v is None else v for v in row] for row in r["cka"]], dtype=float)
            a, b = r["cka_layers"], r["cka_compare_layers"]
            fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(b) + 2.5), max(3.5, 0.5 * len(a) + 2)))
            im = ax.imshow(m, cmap="magma", vmin=0, vmax=1, origin="lower")
            ax.set_xticks(range(len(b)))
            ax.set_xticklabels(b, rotation=60, ha="right", fontsize=7)
            ax.set_yticks(range(len(a)))
            ax.set_yticklabels(a, fontsize=7)
            ax.set_xlabel(r["compare"])
            ax.set_ylabel("this model")
            if m.size <= 144:
                for i in range(m.shape[0]):
                    for j in range(m.shape[1]):
                        if np.isfinite(m[i, j]):
                            ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=6,
                                    color="black" if m[i, j] > 0.6 else "white")
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
            fig.tight_layout()
            sec.figure(fig, f"Linear CKA between layers of this model and {r['compare']} on {r.get('cka_n')} "
                            "evaluated images (4-D outputs global-average-pooled)")
