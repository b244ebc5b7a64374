"""Systematic errors on subgroups (in the spirit of Domino and Spotlight, kept simple and deterministic): cluster
L2-normalized feature rows with k-means and report the clusters whose accuracy falls well below the overall.

- k-means: scikit-learn's ``KMeans`` (k-means++, ``n_init=4``, ``random_state=seed``) on one OpenMP thread (its
  multi-threaded reduction can round differently from run to run), over the rows in a canonical order (sorted by a
  fixed projection, then by the first columns), so the result does not depend on the order of the rows, cluster
  ids included.
- A slice is a cluster with at least ``min_support`` members whose accuracy is at least ``min_gap`` below the
  overall accuracy. Its p-value is the one-sided binomial test (``scipy.stats.binomtest``, alternative "less") of
  its correct count against the overall accuracy: a small cluster with a large gap can still be chance.
- Slices come most significant first (p-value, then larger gap, larger support, cluster id); members most confident
  first (the confident mistakes are the ones to look at), by index without ``confidence``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UsageError

__all__ = ["Slice", "error_slices", "default_clusters"]

N_INIT = 4  # k-means restarts (explicit: scikit-learn's default changed between releases)
_GAP_EPS = 1e-12  # 0.9 - 0.8 < 0.1 in floating point; a gap equal to min_gap counts


@dataclass(frozen=True)
class Slice:
    """A cluster of samples the model gets wrong more often than overall."""

    cluster: int  # the k-means cluster id (stable for a seed and the set of rows)
    support: int  # members
    accuracy: float  # fraction of members correct
    gap: float  # overall accuracy - accuracy
    p_value: float  # P(this few correct | the overall accuracy), one-sided binomial
    mean_confidence: float | None  # mean confidence of the members (None without confidence)
    indices: tuple[int, ...]  # the members' row indices, most confident first (ascending without confidence)


def default_clusters(n: int, *, min_support: int = 10) -> int:
    """The default number of clusters: about five times ``min_support`` rows per cluster, 2 to 50."""
    return int(min(50, max(2, n // (5 * max(min_support, 1)))))


def _array(x, name: str, dtype) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x, dtype=dtype)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be numeric, not {type(x).__name__}") from None


def _canonical_order(f: np.ndarray) -> np.ndarray:
    """A row order that depends only on the rows' values (equal rows are interchangeable)."""
    proj = (f * np.random.default_rng(12345).normal(size=f.shape[1])).sum(axis=1)
    keys = [f[:, j] for j in range(min(3, f.shape[1]))][::-1]
    return np.lexsort((*keys, proj))


def error_slices(features, correct, *, confidence=None, n_clusters: int | None = None, seed: int = 0,
                 min_support: int = 10, min_gap: float = 0.1) -> list[Slice]:
    """Clusters of ``features`` (N, D) whose accuracy (``correct``: (N,) bool) is at least ``min_gap`` below the
    overall, with at least ``min_support`` members; ``confidence`` (N,) orders the members and gives their mean.
    ``n_clusters`` defaults to ``default_clusters(N)``."""
    f = _array(features, "features", np.float64)
    if f.ndim != 2:
        raise UsageError(f"features must be (N, D), not shape {f.shape}")
    n = len(f)
    c = _array(correct, "correct", np.float64)
    if c.shape != (n,) or not np.isin(c, (0, 1)).all():
        raise UsageError(f"correct must be ({n},) bool (or 0/1), not shape {c.shape}")
    c = c.astype(bool)
    conf = None
    if confidence is not None:
        conf = _array(confidence, "confidence", np.float64)
        if conf.shape != (n,) or np.isnan(conf).any():
            raise UsageError(f"confidence must be ({n},) numbers, not shape {conf.shape}")
    if not np.isfinite(f).all():
        raise UsageError("features contain NaN or infinite values")
    if min_support < 1:
        raise UsageError(f"min_support must be at least 1, not {min_support}")
    if not 0 <= min_gap <= 1:
        raise UsageError(f"min_gap must be in [0, 1], not {min_gap}")
    k = default_clusters(n, min_support=min_support) if n_clusters is None else n_clusters
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise UsageError(f"n_clusters must be a positive integer, not {n_clusters!r}")
    if n < 2:
        return []
    k = min(int(k), n)
    norm = np.linalg.norm(f, axis=1, keepdims=True)
    f = f / np.where(norm == 0, 1, norm)
    order = _canonical_order(f)
    labels = np.empty(n, dtype=np.int64)
    labels[order] = _kmeans(f[order], k, seed)
    return _slices(labels, c, conf, min_support=min_support, min_gap=min_gap)


def _kmeans(f: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="openmp"), warnings.catch_warnings():
        # duplicate rows can leave fewer distinct clusters than asked for: those simply do not appear
        warnings.simplefilter("ignore", ConvergenceWarning)
        return KMeans(n_clusters=k, n_init=N_INIT, random_state=seed).fit_predict(f)


def _slices(labels: np.ndarray, correct: np.ndarray, conf: np.ndarray | None, *, min_support: int,
            min_gap: float) -> list[Slice]:
    from scipy.stats import binomtest

    overall = float(correct.mean())
    out = []
    for cl in np.unique(labels):
        members = np.flatnonzero(labels == cl)
        support = len(members)
        hits = int(correct[members].sum())
        accuracy = hits / support
        gap = overall - accuracy
        if support < min_support or gap < min_gap - _GAP_EPS:
            continue
        p = float(binomtest(hits, support, overall, alternative="less").pvalue)
        if conf is not None:
            members = members[np.lexsort((members, -conf[members]))]
        out.append(Slice(cluster=int(cl), support=support, accuracy=accuracy, gap=gap, p_value=p,
                         mean_confidence=None if conf is None else float(conf[members].mean()),
                         indices=tuple(int(i) for i in members)))
    out.sort(key=lambda s: (s.p_value, -s.gap, -s.support, s.cluster))
    return out
