"""Clustering quality of frozen features: k-means (scikit-learn, seeded, ``n_init`` restarts) on L2-normalized
features with as many clusters as classes, scored by NMI, ARI (scikit-learn) and the accuracy of the best one-to-one
matching of clusters to classes (Hungarian algorithm, scipy)."""

from __future__ import annotations

import numpy as np

from .linear import _np

__all__ = ["cluster_metrics", "hungarian_accuracy"]


def hungarian_accuracy(labels, clusters) -> float:
    """Accuracy under the one-to-one cluster-to-class map that maximizes it (unmatched clusters count as wrong)."""
    from scipy.optimize import linear_sum_assignment

    y, c = _np(labels).astype(np.int64), _np(clusters).astype(np.int64)
    if len(y) == 0:
        return float("nan")
    _, yi = np.unique(y, return_inverse=True)
    _, ci = np.unique(c, return_inverse=True)
    counts = np.zeros((ci.max() + 1, yi.max() + 1), dtype=np.int64)
    np.add.at(counts, (ci, yi), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / len(y))


def cluster_metrics(feats, labels, *, num_clusters: int | None = None, seed: int = 0, n_init: int = 10) -> dict:
    """``{"nmi", "ari", "cluster_acc", "assignments"}`` of k-means on the L2-normalized ``feats`` (default
    ``num_clusters``: the number of distinct labels)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    x, y = _np(feats).astype(np.float64), _np(labels).astype(np.int64)
    x = x / np.where((n := np.linalg.norm(x, axis=1, keepdims=True)) > 0, n, 1.0)
    k = int(num_clusters or len(np.unique(y)))
    k = max(1, min(k, len(x)))
    assign = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(x)
    return {"nmi": float(normalized_mutual_info_score(y, assign)), "ari": float(adjusted_rand_score(y, assign)),
            "cluster_acc": hungarian_accuracy(y, assign), "assignments": assign.astype(np.int64), "k": k}
