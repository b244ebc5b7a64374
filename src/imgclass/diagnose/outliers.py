"""Feature-space outlier scores with cleanlab 2.9's semantics (``cleanlab.outlier.OutOfDistribution`` on
``features``, and ``Datalab``'s outlier flags): pure functions, exact chunked kNN in torch.

- Distance: cosine (``1 - cos``, clipped to [0, 2]) when the features have more than 3 columns, else Euclidean.
- Each row's average distance to its k nearest neighbours in the bank: the features themselves (the row itself
  left out; exact duplicate rows at distance 0, as cleanlab corrects them), or a separate ``reference`` set
  (nothing left out, as ``OutOfDistribution.fit(reference).score(features)``).
- Score ``exp(-t * avg / s)`` in (0, 1], low = outlier, where ``s`` is the median average distance of the bank's
  own rows (leaving themselves out), at least 100 machine epsilons (and 1e-6, cleanlab's EPSILON); rows whose
  average distance is within rounding of 0 (cosine: 100 epsneg, Euclidean: sqrt(100 eps)) score exactly 1.
- Flags (``outlier_issues``): Datalab's rule on the average distances, ``avg > Q3 + (1 / threshold - 1) * IQR``
  with threshold 0.37037; the scores determine ``avg / s`` (= -log(score) / t), and the rule is scale-free.

Everything runs in float64 (sklearn computes float32 features in float32, so cleanlab's scores of float32 input
differ from these by float32 rounding, about 1e-6).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import UsageError

__all__ = ["knn_outlier_scores", "outlier_issues", "DEFAULT_K", "DEFAULT_THRESHOLD"]

DEFAULT_K = 10  # cleanlab's DEFAULT_K (or N - 1 for fewer rows)
DEFAULT_THRESHOLD = 0.37037  # Datalab's OutlierIssueManager.DEFAULT_THRESHOLDS["features"]
_EPSILON = 1e-6  # cleanlab.internal.constants.EPSILON: the floor of the scaling factor in the transform
_MAX_CHUNK = 1 << 24  # distance-matrix entries per chunk (float64: 128 MiB)


def _as_float64(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach().to(torch.float64)
    else:
        t = torch.from_numpy(np.ascontiguousarray(np.asarray(x, dtype=np.float64)))
    if t.ndim != 2:
        raise UsageError(f"{name} must be (N, D), not shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise UsageError(f"{name} contain NaN or infinite values")
    return t


def _distances(q: torch.Tensor, bank: torch.Tensor, metric: str) -> torch.Tensor:
    """(len(q), len(bank)) distances; rows of q and bank are already L2-normalized for cosine."""
    if metric == "cosine":
        return (1 - q @ bank.T).clamp_(0, 2)
    if bank.shape[1] <= 3:  # few columns: exact differences (sklearn's kd-tree and scipy compute these)
        return (q[:, None, :] - bank[None, :, :]).pow_(2).sum(-1).sqrt_()
    d = (q * q).sum(1)[:, None] - 2 * (q @ bank.T) + (bank * bank).sum(1)[None, :]
    return d.clamp_(min=0).sqrt_()


def _normalize(x: torch.Tensor) -> torch.Tensor:
    """sklearn's ``normalize``: rows over their L2 norm, zero rows left as they are."""
    norm = x.pow(2).sum(1).sqrt()
    norm[norm == 0] = 1
    return x / norm[:, None]


def _avg_knn(q: torch.Tensor, bank: torch.Tensor, k: int, metric: str, *, self_excluded: bool,
             groups: np.ndarray | None, chunk: int | None) -> torch.Tensor:
    """Each query row's mean distance to its k nearest bank rows (with ``self_excluded`` q is bank: row i leaves
    out bank row i; ``groups`` labels exact-duplicate rows, set at distance 0 from each other)."""
    n, m = len(q), len(bank)
    per_row = m * (bank.shape[1] if metric == "euclidean" and bank.shape[1] <= 3 else 1)
    step = chunk or max(1, _MAX_CHUNK // per_row)
    g = None if groups is None else torch.from_numpy(groups).to(q.device)
    out = torch.empty(n, dtype=torch.float64, device=q.device)
    for s in range(0, n, step):
        d = _distances(q[s:s + step], bank, metric)
        rows = torch.arange(s, min(s + step, n), device=q.device)
        if g is not None:
            d[g[rows][:, None] == g[None, :]] = 0
        if self_excluded:
            d[rows - s, rows] = math.inf
        out[s:s + step] = d.topk(k, dim=1, largest=False, sorted=True).values.mean(1)
    return out


def _duplicate_groups(x: torch.Tensor) -> np.ndarray | None:
    """Labels of exactly equal rows (np.unique over rows, as cleanlab finds them), or None without duplicates."""
    _, inverse, counts = np.unique(x.cpu().numpy(), axis=0, return_inverse=True, return_counts=True)
    return inverse.reshape(-1).astype(np.int64) if (counts > 1).any() else None


def knn_outlier_scores(features, *, k: int | None = None, reference=None, t: float = 1.0,
                       metric: str | None = None, chunk: int | None = None) -> np.ndarray:
    """cleanlab's feature-based outlier scores (in (0, 1], low = atypical) of the rows of ``features`` (N, D),
    numpy or torch (a CUDA tensor is searched on its GPU).

    ``reference``: score against this (M, D) set instead of the features themselves. ``k``: neighbours (default
    10, or one less than the bank's rows when it has 10 or fewer). ``metric``: "cosine" or "euclidean" (default:
    cosine above 3 columns). ``chunk``: query rows per distance block (default: blocks of about 16M entries)."""
    x = _as_float64(features, "features")
    bank = x if reference is None else _as_float64(reference, "reference").to(x.device)
    if bank.shape[1] != x.shape[1]:
        raise UsageError(f"reference has {bank.shape[1]} columns, features {x.shape[1]}")
    m = len(bank)
    if m < 2:
        raise UsageError(f"kNN outlier scores need at least 2 {'reference ' if reference is not None else ''}rows, "
                         f"got {m}")
    if k is None:
        k = min(DEFAULT_K, m - 1)
    if not isinstance(k, (int, np.integer)) or k < 1 or k >= m:
        raise UsageError(f"k must be an integer from 1 to {m - 1} (the rows of the "
                         f"{'reference' if reference is not None else 'features'} minus one), not {k!r}")
    if metric is None:
        metric = "cosine" if bank.shape[1] > 3 else "euclidean"
    if metric not in ("cosine", "euclidean"):
        raise UsageError(f"metric must be 'cosine' or 'euclidean', not {metric!r}")
    if not t > 0:
        raise UsageError(f"t must be positive, not {t!r}")
    if chunk is not None and chunk < 1:
        raise UsageError(f"chunk must be positive, not {chunk!r}")
    if len(x) == 0:
        return np.zeros(0)
    if metric == "cosine":
        bank_n = _normalize(bank)
        x_n = bank_n if reference is None else _normalize(x)
    else:
        bank_n, x_n = bank, x
    # the bank's own average distances (itself left out, duplicates at 0) set the scale
    own = _avg_knn(bank_n, bank_n, k, metric, self_excluded=True, groups=_duplicate_groups(bank), chunk=chunk)
    avg = own if reference is None else _avg_knn(x_n, bank_n, k, metric, self_excluded=False, groups=None,
                                                 chunk=chunk)
    avg = avg.cpu().numpy()
    scale = float(max(np.median(own.cpu().numpy()), 100 * np.finfo(np.float64).eps))
    scores = np.exp(-t * avg / max(scale, _EPSILON))
    tol = 100 * np.finfo(np.float64).epsneg if metric == "cosine" else np.sqrt(100 * np.finfo(np.float64).eps)
    scores[avg < tol] = 1
    return scores


def outlier_issues(scores, *, threshold: float | None = None) -> np.ndarray:
    """Datalab's outlier flags from ``knn_outlier_scores`` (with its default t or any fixed t): a row is an outlier
    when its average distance exceeds Q3 + (1 / threshold - 1) * IQR of the set's (threshold in [0, 1], default
    0.37037: Q3 + 1.7 IQR; lower flags fewer)."""
    s = np.asarray(scores.detach().cpu() if isinstance(scores, torch.Tensor) else scores, dtype=np.float64)
    if s.ndim != 1:
        raise UsageError(f"scores must be (N,), not shape {s.shape}")
    if ((s < 0) | (s > 1) | np.isnan(s)).any():
        raise UsageError("scores must lie in [0, 1] (knn_outlier_scores' scores)")
    if threshold is None:
        threshold = DEFAULT_THRESHOLD
    if not 0 <= threshold <= 1:
        raise UsageError(f"threshold must be in [0, 1], not {threshold!r}")
    if len(s) == 0:
        return np.zeros(0, dtype=bool)
    with np.errstate(divide="ignore"):
        u = -np.log(s)  # average distance over the scale: the rule below is the same on any positive multiple
    q1, q3 = np.percentile(u, [25, 75])
    factor = 1 / threshold - 1 if threshold != 0 else np.inf
    with np.errstate(invalid="ignore"):
        limit = q3 + factor * (q3 - q1)
    return u > limit
