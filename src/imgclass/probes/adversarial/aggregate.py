"""From per-sample records to the probe's numbers: robust accuracy, success rates, the ensemble and worst case,
minimal-perturbation statistics, queries, times, and the sanity checks that the runs allow."""

from __future__ import annotations

import numpy as np
import torch

from ...attacks import ATTACKS, run_sanity_checks
from ...attacks.protocol import CHECK_LARGE
from .params import AdversarialParams, ensemble_name
from .records import Records
from .run import Plan

__all__ = ["aggregate", "per_sample", "PROTOCOL"]

PROTOCOL = ("seeded subset of the dataset; attacks run on the correctly classified images only and clean errors count "
            "as non-robust; the ensemble is the per-sample worst case over its members (white-box members first; "
            "members not run on their own attack only the samples still standing); worst_case is the per-sample "
            "worst case over the ensemble and every bounded attack run; minimal-perturbation attacks count a sample "
            "robust at eps when the smallest adversarial found is larger; attacks run in float32, each sample's "
            "random draws keyed by (run seed, attack, eps, its dataset index), so results do not depend on the "
            "batch size or the number of processes")


def _frac(t: torch.Tensor) -> float | None:
    return float(t.double().mean()) if len(t) else None


def _median(t: torch.Tensor) -> float | None:
    """The median (mean of the middle two for an even count); None when empty or infinite."""
    if len(t) == 0:
        return None
    m = float(np.median(t.double().cpu().numpy()))
    return m if np.isfinite(m) else None


def _flags(table: dict, key, n: int) -> torch.Tensor:
    """A table's flags, all False when no sample was attacked (every one misclassified)."""
    return table[key] if key in table else torch.zeros(n, dtype=torch.bool)


def worst_case_flags(rec: Records, plan: Plan) -> dict[str, torch.Tensor]:
    """eps -> per sample: resisted the ensemble and every bounded attack (clean errors are not robust)."""
    n = len(rec)
    worst = {}
    for k in plan.keys if plan.bounded or plan.ensemble else ():
        w = rec.correct.clone()
        for t in [_flags(rec.robust, (a, k), n) for a in plan.bounded] + (
                [_flags(rec.ensemble, k, n)] if plan.ensemble else []):
            w &= t
        worst[k] = w
    return worst


def aggregate(rec: Records, plan: Plan, p: AdversarialParams, *, randomized: bool) -> dict:
    """The result numbers (``robust_accuracy[attack][eps]`` ...) of a run's records."""
    ok = rec.correct
    n, n_ok = len(rec), int(ok.sum())
    robust = {(a, k): _flags(rec.robust, (a, k), n) for a in plan.bounded for k in plan.keys}
    ensemble = {k: _flags(rec.ensemble, k, n) for k in plan.keys}
    ensemble_white = {k: _flags(rec.ensemble_white, k, n) for k in plan.keys}
    keys, eps, norm = plan.keys, plan.eps, plan.norm
    ra, sr, qs, secs, per = {}, {}, {}, {}, {}

    def qstats(q, fooled):
        q, f = q[ok], fooled[ok]
        return {"mean": _frac(q), "median_successful": _median(q[f]), "total": float(q.sum())}

    for a in plan.bounded:
        ra[a], sr[a], secs[a], per[a] = {}, {}, {}, {}
        for k in keys:
            rob = robust[(a, k)]
            per[a][k] = rob.numpy()
            ra[a][k] = _frac(rob)
            sr[a][k] = (n_ok - int(rob.sum())) / n_ok if n_ok else None
            secs[a][k] = rec.seconds.get((a, k), 0.0)
            if (a, k) in rec.queries:
                qs.setdefault(a, {})[k] = qstats(rec.queries[(a, k)], ~rob)
    ran_ens = bool(plan.ensemble)
    ens = {k: _frac(ensemble[k]) for k in keys} if ran_ens else {}
    ens_white = {k: _frac(ensemble_white[k]) for k in keys} if ran_ens else {}
    has_black = any(ATTACKS[m].threat != "white-box" for m in plan.ensemble)
    has_white = any(ATTACKS[m].threat == "white-box" for m in plan.ensemble)
    black_only = ({k: _frac(ensemble_white[k] & ~ensemble[k]) for k in keys}
                  if ran_ens and has_black and has_white else {})
    worst = {k: _frac(w) for k, w in worst_case_flags(rec, plan).items()}
    for (a, k), t in rec.seconds.items():
        if a.startswith("ensemble:"):
            secs.setdefault(a, {})[k] = t
    mins = {}
    for a in plan.minimal:
        d = rec.distance.get(a, torch.zeros(n))
        da = d[ok]
        used = norm if norm in ATTACKS[a].norms else ATTACKS[a].norms[0]
        fin = da[torch.isfinite(da)]
        mins[a] = {"norm": used, "median": _median(da), "median_successful": _median(fin),
                   "success_rate": len(fin) / len(da) if len(da) else None,
                   "distances": sorted(float(v) for v in da.tolist())}
        secs[a] = {"all": rec.seconds.get((a, "all"), 0.0)}
        if (a, "all") in rec.queries:
            qs[a] = {"all": qstats(rec.queries[(a, "all")], torch.isfinite(d))}
        if used == norm:
            ra[a] = {k: _frac(d > eps[k] + 1e-9) for k in keys}
            sr[a] = {k: float((da <= eps[k] + 1e-9).double().mean()) if n_ok else None for k in keys}
            per[a] = {k: (d > eps[k] + 1e-9).numpy() for k in keys}
    large = (plan.large[0], _frac(rec.large)) if plan.large is not None and rec.large is not None else None
    if p.sanity_checks:
        checks = run_sanity_checks(robust_accuracy=ra, eps_values=eps, ensemble=ens or None, large=large,
                                   per_sample=per, tolerance=p.tolerance, n_samples=n,
                                   ensemble_black_only=black_only or None, randomized=randomized,
                                   eot_samples=p.eot_samples,
                                   skipped={CHECK_LARGE: plan.large_skip} if plan.large_skip
                                   else None)
    else:
        checks = {"warnings": [], "ran": [], "skipped": {}}
    return {
        "norm": norm, "eps": {k: eps[k] for k in keys}, "n_evaluated": n, "n_attacked": n_ok,
        "clean_accuracy": _frac(ok), "robust_accuracy": ra, "success_rate": sr,
        "ensemble": ens, "ensemble_name": ensemble_name(plan.ensemble) if ran_ens else None,
        "ensemble_white_box": ens_white, "ensemble_black_box_only": black_only, "worst_case": worst,
        "minimal": mins, "queries": qs, "seconds": secs, "warnings": checks["warnings"],
        "sanity_checks": {"enabled": bool(p.sanity_checks), "ran": checks["ran"], "skipped": checks["skipped"]},
        "large_eps": {"eps": large[0], "accuracy": large[1]} if large else None,
        "randomized_model": randomized, "protocol": PROTOCOL,
    }


def per_sample(rec: Records, ids: list[str], plan: Plan) -> dict:
    """Per-sample ids, labels, predictions and robust flags (``per_sample=True``)."""
    def flags(t):
        return [bool(v) for v in t.tolist()]

    return {
        "ids": ids, "label": rec.label.tolist(), "clean_pred": rec.clean_pred.tolist(),
        "robust": {a: {k: flags(_flags(rec.robust, (a, k), len(rec))) for k in plan.keys} for a in plan.bounded},
        "ensemble": {k: flags(_flags(rec.ensemble, k, len(rec))) for k in plan.keys} if plan.ensemble else {},
    }
