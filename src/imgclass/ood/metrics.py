"""OOD-detection and selective-prediction metrics (pure numpy, float64).

Conventions, stated once:

- **Scores: higher = more in-distribution** (OpenOOD's convention: MSP, energy as ``-E``, ...).
- **OOD detection**: ``auroc`` is P(ID score > OOD score) + P(tie) / 2, the same whichever class is called
  positive. ``aupr_in`` takes ID as the positive class (ranked by ``score``), ``aupr_out`` takes OOD as the positive
  class (ranked by ``-score``); both are the trapezoidal area under the precision-recall curve, as OpenOOD
  (``sklearn.metrics.auc(recall, precision)``) and pytorch-ood compute it. ``ap_in`` / ``ap_out`` are the
  step-wise average precision of ``sklearn.metrics.average_precision_score`` for the same positives.
  ``fpr95`` takes **ID as positive**: the threshold is the highest score that keeps at least 95% of the ID samples
  (score >= threshold), and ``fpr95`` is the fraction of OOD samples that also pass it. ``fpr95_ood_positive``
  is the other direction (pytorch-ood's ``FPR95TPR``): the fraction of ID samples flagged when 95% of the OOD
  samples are flagged (score <= threshold).
- **Ties** enter a curve together: every threshold is a unique score and a sample passes if its score is
  ``>=`` the threshold, so no result depends on the order of equal scores.
- **Selective prediction**: a sample is accepted if its confidence is ``>=`` a threshold (the selective
  classifier ``g_theta(x) = 1[kappa(x) >= theta]`` of Geifman & El-Yaniv, 2017), so samples with equal
  confidence are accepted or rejected together. The risk is the error rate among the accepted samples.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from imgclass.errors import UsageError

__all__ = ["ood_metrics", "risk_coverage", "aurc", "excess_aurc", "optimal_aurc", "accuracy_at_coverage"]


def _scores(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if a.size == 0:
        raise UsageError(f"{name} is empty")
    if np.isnan(a).any():
        raise UsageError(f"{name} contains {int(np.isnan(a).sum())} NaN values")
    return a


def _correct(x, n: int) -> np.ndarray:
    a = np.asarray(x).reshape(-1)
    if a.size != n:
        raise UsageError(f"correct has {a.size} entries but confidence has {n}")
    if a.dtype != bool and not np.isin(a, (0, 1)).all():
        raise UsageError("correct must be boolean or 0/1")
    return a.astype(bool)


def _counts(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative (true positives, false positives) at each unique threshold, highest threshold first."""
    scores = np.concatenate([pos, neg]) + 0.0  # -0.0 -> 0.0 (they tie anyway)
    is_pos = np.concatenate([np.ones(pos.size, bool), np.zeros(neg.size, bool)])
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    last = np.ones(s.size, bool)
    last[:-1] = s[1:] != s[:-1]
    idx = np.flatnonzero(last)
    tps = np.cumsum(is_pos[order])[idx]
    fps = idx + 1 - tps
    return tps, fps


def _trapz(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1])) / 2)


def _fpr_at_tpr(tps: np.ndarray, fps: np.ndarray, tpr: float) -> float:
    tpr_curve = np.concatenate([[0.0], tps / tps[-1]])
    fpr_curve = np.concatenate([[0.0], fps / fps[-1]])
    # first threshold whose true positive rate reaches ``tpr``; the curve ends at 1
    return float(fpr_curve[np.searchsorted(tpr_curve, tpr, side="left")])


def _pr_areas(tps: np.ndarray, fps: np.ndarray) -> tuple[float, float]:
    """(trapezoidal AUPR starting at (recall 0, precision 1), step-wise average precision)."""
    precision = np.concatenate([[1.0], tps / (tps + fps)])
    recall = np.concatenate([[0.0], tps / tps[-1]])
    return _trapz(recall, precision), float(np.sum(np.diff(recall) * precision[1:]))


def ood_metrics(id_scores, ood_scores, *, tpr: float = 0.95) -> dict:
    """AUROC, AUPR-IN/OUT, AP-IN/OUT and FPR at ``tpr`` TPR of ID vs OOD scores (higher = more ID)."""
    if not 0.0 <= tpr <= 1.0:
        raise UsageError(f"tpr must be in [0, 1], got {tpr}")
    id_s, ood_s = _scores(id_scores, "id_scores"), _scores(ood_scores, "ood_scores")
    tps, fps = _counts(id_s, ood_s)  # ID positive
    auroc = _trapz(np.concatenate([[0.0], fps / fps[-1]]), np.concatenate([[0.0], tps / tps[-1]]))
    aupr_in, ap_in = _pr_areas(tps, fps)
    tps_o, fps_o = _counts(-ood_s, -id_s)  # OOD positive
    aupr_out, ap_out = _pr_areas(tps_o, fps_o)
    key = f"{tpr * 100:g}"
    return {
        "auroc": auroc,
        "aupr_in": aupr_in,
        "aupr_out": aupr_out,
        "ap_in": ap_in,
        "ap_out": ap_out,
        f"fpr{key}": _fpr_at_tpr(tps, fps, tpr),
        f"fpr{key}_ood_positive": _fpr_at_tpr(tps_o, fps_o, tpr),
        "positive": "id",
        "score": "higher = more in-distribution",
        "n_id": int(id_s.size),
        "n_ood": int(ood_s.size),
    }


def _groups(confidence, correct) -> tuple[np.ndarray, np.ndarray, int]:
    """(accepted count, accepted errors) per unique confidence, highest first, and n."""
    conf = _scores(confidence, "confidence")
    ok = _correct(correct, conf.size)
    tps, fps = _counts(conf[~ok], conf[ok])  # "positives" are the errors
    accepted = tps + fps
    return accepted, tps, conf.size


def risk_coverage(confidence, correct) -> tuple[np.ndarray, np.ndarray]:
    """Coverage and selective risk (error rate among accepted) at each unique confidence, highest first.

    A sample is accepted when its confidence is ``>=`` the threshold, so tied samples enter together.
    """
    accepted, errors, n = _groups(confidence, correct)
    return accepted / n, errors / accepted


def aurc(confidence, correct) -> float:
    """Area under the risk-coverage curve (Geifman et al., 2019): the mean, over samples, of the risk
    at the threshold that accepts that sample.

    Without ties this is ``(1/n) * sum_k risk(top k)``; tied samples all get the risk with the whole tie group
    accepted (a right-endpoint Riemann sum of :func:`risk_coverage`).
    """
    coverage, risk = risk_coverage(confidence, correct)
    return float(np.sum(np.diff(coverage, prepend=0.0) * risk))


def optimal_aurc(correct) -> float:
    """AURC of the ideal confidence that ranks every correct sample above every error.

    Exact for ``n`` samples: ``(1/n) * sum_{k > n_c} (k - n_c) / k``; its large-``n`` limit is Geifman et al.'s
    ``r + (1 - r) * ln(1 - r)`` with ``r`` the error rate.
    """
    ok = np.asarray(correct).reshape(-1)
    ok = _correct(ok, ok.size)
    n, n_c = ok.size, int(ok.sum())
    if n == 0:
        raise UsageError("correct is empty")
    k = np.arange(n_c + 1, n + 1, dtype=np.float64)
    return float(np.sum((k - n_c) / k) / n)


def excess_aurc(confidence, correct) -> float:
    """E-AURC = AURC - optimal AURC (Geifman et al., 2019), with the exact finite-sample optimum."""
    return aurc(confidence, correct) - optimal_aurc(correct)


def accuracy_at_coverage(confidence, correct, *, coverages: Sequence[float] = (0.8, 0.9, 0.95)) -> dict:
    """Accuracy on the most confident samples, per target coverage: ``{coverage: accuracy}``.

    As in SAT (Huang et al., 2020): the threshold is the confidence of the ``ceil(c * n)``-th most confident
    sample and every sample ``>=`` it is accepted, so ties at the threshold can push the coverage above ``c``.
    """
    accepted, errors, n = _groups(confidence, correct)
    out = {}
    for c in coverages:
        c = float(c)
        if not 0.0 < c <= 1.0:
            raise UsageError(f"coverages must be in (0, 1], got {c}")
        k = max(1, math.ceil(round(c * n, 9)))
        j = int(np.searchsorted(accepted, k, side="left"))  # first group that accepts >= k samples
        out[c] = float(1.0 - errors[j] / accepted[j])
    return out
