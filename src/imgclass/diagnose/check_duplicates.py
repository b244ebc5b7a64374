"""Check ``duplicates``: exact (decoded pixels), near (perceptual hash within a Hamming distance) and semantic (cosine
of a model's features) duplicates, within DATA and between DATA and ``--against`` (train/test leakage), with a
model's accuracy on DATA with and without the leaked images (ciFAIR: Barz & Denzler 2020)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..results.models import Metric, ProbeResult
from .base import Check, DiagnoseContext, Flag, register_check
from .duplicates import DEFAULT_MAX_DISTANCE

KINDS = ("exact", "near", "semantic")


class DuplicatesResult(ProbeResult):
    probe = "duplicates"
    metrics = (Metric("n_pairs_within", "duplicate pairs within the data", False),
               Metric("n_leaked", "samples with a duplicate in --against", False),
               Metric("accuracy_without_leaked", "accuracy without the leaked samples"))
    primary = "n_leaked"

    n_evaluated: int
    kinds: list[str]
    near_distance: int
    min_cosine: float | None = None
    n_pairs_within: int
    n_leaked: int | None = None
    accuracy_without_leaked: float | None = None

    def protocol(self, params: dict) -> dict:
        return {"kinds": self.kinds, "near": f"64-bit perceptual hash (imagehash.phash), Hamming <= {self.near_distance}",
                "semantic": None if self.min_cosine is None else
                f"nearest neighbour by cosine of mean-centred pre-logit features >= {self.min_cosine}"}


def _hashes(ctx: DiagnoseContext, which: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dataset indices, exact pixel digests, phashes) of every readable image."""
    import torch

    from .duplicates import phash, pixel_hashes

    idx, exact, perceptual = [], [], []
    for indices, images in ctx.iter_images(which):
        same_size = len({tuple(im.shape) for im in images}) == 1
        batch = torch.stack(images) if same_size else images
        exact.append(pixel_hashes(batch) if same_size else np.concatenate([pixel_hashes(im[None]) for im in images]))
        perceptual.append(phash(batch))
        idx.append(indices)
    if not idx:
        return np.empty(0, dtype=np.int64), np.empty(0), np.empty(0, dtype=np.uint64)
    return np.concatenate(idx), np.concatenate(exact), np.concatenate(perceptual)


def _key(h) -> bytes:
    return np.asarray(h).tobytes()


@register_check
class DuplicatesCheck(Check):
    name = "duplicates"
    title = "Duplicates and leakage"
    description = "exact, near (perceptual hash) and semantic (features) duplicates, within DATA and against --against"
    needs = frozenset()
    Result = DuplicatesResult

    @dataclass
    class Params:
        # semantic (needs --model) is asked for by name: how close two images' features are depends on the model
        # (a CIFAR ResNet-20's 64 post-ReLU features put most test images within cosine 0.95 of some training
        # image), so its threshold is the user's to choose for their model
        kinds: tuple[str, ...] = ("exact", "near")
        near_distance: int = DEFAULT_MAX_DISTANCE  # Hamming distance of 64-bit phashes (see duplicates.py)
        min_cosine: float = 0.98  # on features centred by their mean over the data (and --against), nearest only
        listed: int = 200

    def run(self, ctx: DiagnoseContext) -> tuple[dict, list[Flag]]:
        from ..errors import UsageError
        from .duplicates import exact_groups, leakage_accuracy, near_pairs, semantic_pairs

        p = self.params
        kinds = [k for k in p.kinds if k in KINDS]
        if len(kinds) != len(p.kinds):
            raise UsageError(f"duplicates: kinds must be among {', '.join(KINDS)}, got {', '.join(p.kinds)}")
        notes = []
        if "semantic" in kinds and not ctx.models:
            kinds.remove("semantic")
            notes.append("semantic duplicates need a model's features (--model): not searched")
        ds, other = ctx.dataset, ctx.against
        idx, ex, ph = _hashes(ctx, "data")
        pairs: list[tuple[str, str, int, int, float]] = []  # (kind, where, i, j, score): i in data, j in data/against
        if "exact" in kinds:
            for g in exact_groups(ex):
                for j in g[1:]:
                    pairs.append(("exact", "within", int(idx[g[0]]), int(idx[j]), 0.0))
        if "near" in kinds:
            a, b, d = near_pairs(ph, max_distance=p.near_distance)
            pairs += [("near", "within", int(idx[i]), int(idx[j]), float(h)) for i, j, h in zip(a, b, d)]
        if "semantic" in kinds:
            f, fi = ctx.features("data")
            parts = [f] + ([ctx.features("against")[0]] if other is not None else [])
            mean = np.concatenate(parts).mean(0)  # centred: post-ReLU features are all positive, cosines crowd near 1
            a, b, c = semantic_pairs(f - mean, min_cosine=p.min_cosine, top_k=1)
            pairs += [("semantic", "within", int(fi[i]), int(fi[j]), float(s)) for i, j, s in zip(a, b, c)]
        if other is not None:
            oidx, oex, oph = _hashes(ctx, "against")
            if "exact" in kinds:
                where = {}
                for j, h in enumerate(oex):
                    where.setdefault(_key(h), j)
                pairs += [("exact", "against", int(idx[i]), int(oidx[where[_key(h)]]), 0.0)
                          for i, h in enumerate(ex) if _key(h) in where]
            if "near" in kinds:
                a, b, d = near_pairs(ph, oph, max_distance=p.near_distance)
                pairs += [("near", "against", int(idx[i]), int(oidx[j]), float(h)) for i, j, h in zip(a, b, d)]
            if "semantic" in kinds:
                f, fi = ctx.features("data")
                g, gi = ctx.features("against")
                a, b, c = semantic_pairs(f - mean, g - mean, min_cosine=p.min_cosine, top_k=1)
                pairs += [("semantic", "against", int(fi[i]), int(gi[j]), float(s)) for i, j, s in zip(a, b, c)]
        within = [q for q in pairs if q[1] == "within"]
        between = [q for q in pairs if q[1] == "against"]
        res: dict = {"n_evaluated": int(len(idx)), "kinds": kinds, "near_distance": int(p.near_distance),
                     "min_cosine": float(p.min_cosine) if "semantic" in kinds else None,
                     "n_pairs_within": len(within),
                     "within": {k: sum(1 for q in within if q[0] == k) for k in kinds},
                     "warnings": notes}
        if other is not None:
            leaked = sorted({q[2] for q in between})
            res.update({"against": other.spec, "n_against": int(len(oidx)), "n_pairs_against": len(between),
                        "between": {k: sum(1 for q in between if q[0] == k) for k in kinds},
                        "between_samples": {k: len({q[2] for q in between if q[0] == k}) for k in kinds},
                        "n_leaked": len(leaked)})
            got = ctx.probs()
            if got is not None and ds.labeled:
                probs, ok = got
                sel = np.flatnonzero(ok)
                correct = probs[sel].argmax(1) == ctx.labels()[sel]
                is_leaked = np.isin(sel, leaked)
                acc = leakage_accuracy(correct, is_leaked)
                res["leakage_accuracy"] = acc
                res["accuracy_without_leaked"] = acc.get("accuracy_without")
        order = {"exact": 0, "near": 1, "semantic": 2}
        pairs.sort(key=lambda q: (q[1] != "against", order[q[0]], q[4] if q[0] != "semantic" else -q[4]))
        res["pairs"] = [{"kind": k, "where": w, "sample_id": ds.sample_id(i),
                         "partner": (other if w == "against" else ds).sample_id(j),
                         "score": s} for k, w, i, j, s in pairs[:p.listed]]
        flags = [Flag(self.name, f"{'leak' if w == 'against' else 'duplicate'}_{k}", i, ds.sample_id(i), s,
                      given=int(ds.label(i)) if ds.labeled else None,
                      partner=(other if w == "against" else ds).sample_id(j), partner_index=j,
                      partner_in="against" if w == "against" else "data",
                      note=f"{k} duplicate {'in ' + other.spec if w == 'against' else 'within the data'}"
                           + (f", Hamming {int(s)}" if k == "near" else f", cosine {s:.4f}" if k == "semantic" else ""))
                 for k, w, i, j, s in pairs]
        return res, flags

    def summary(self, r: ProbeResult) -> list[tuple[str, str]]:
        out = [("pairs within the data", ", ".join(f"{k} {v}" for k, v in (r.get("within") or {}).items()) or "0")]
        if r.get("against"):
            out.append((f"samples with a duplicate in {r['against']}",
                        f"{r['n_leaked']} ({', '.join(f'{k} {v}' for k, v in r['between_samples'].items())})"))
            la = r.get("leakage_accuracy")
            if la:
                out.append(("accuracy all / without the leaked / on the leaked",
                            " / ".join("-" if la.get(k) is None else f"{la[k]:.4f}"
                                       for k in ("accuracy", "accuracy_without", "accuracy_leaked"))))
        return out

    def render(self, r: ProbeResult, sec) -> None:
        from .render import render_gallery

        for w in r.get("warnings", []):
            sec.warn(w)
        sec.p(f"Exact: identical decoded pixels. Near: 64-bit perceptual hashes within Hamming distance "
              f"{r['near_distance']}. Semantic: cosine of the model's pre-logit features of at least "
              f"{r.get('min_cosine')}." if r.get("min_cosine") is not None else
              f"Exact: identical decoded pixels. Near: 64-bit perceptual hashes within Hamming distance "
              f"{r['near_distance']}.")
        sec.kv(self.summary(r))
        render_gallery(sec, r.get("gallery"), "Pairs (the data's image, then its duplicate)")
        if r.get("pairs"):
            sec.table(["kind", "where", "sample", "duplicate", "score"],
                      [(q["kind"], q["where"], q["sample_id"], q["partner"], q["score"]) for q in r["pairs"][:50]],
                      numeric=False)
