"""Linear centred kernel alignment (Kornblith et al., ICML 2019) between feature matrices of the same examples:
``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` after centring the columns, in float64 (equal to the HSIC form
``tr(K H L H) / sqrt(tr(K H K H) tr(L H L H))`` with linear kernels K = X X^T, L = Y Y^T)."""

from __future__ import annotations

import numpy as np

from .linear import _np

__all__ = ["linear_cka", "cka_matrix"]


def _centred(x) -> np.ndarray:
    a = _np(x).astype(np.float64)
    a = a.reshape(len(a), -1)
    return a - a.mean(0, keepdims=True)


def _gram_form(a: np.ndarray) -> np.ndarray | None:
    """The centred Gram matrix X X^T when it is smaller than X^T X (more features than examples), else None."""
    return a @ a.T if a.shape[1] > a.shape[0] else None


def _self_norm(a: np.ndarray, g: np.ndarray | None) -> float:
    return float(np.linalg.norm(g if g is not None else a.T @ a))  # ||X^T X||_F = ||X X^T||_F


def _cka(x: np.ndarray, y: np.ndarray, nx: float, ny: float, gx=None, gy=None) -> float:
    if len(x) != len(y):
        raise ValueError(f"linear_cka: {len(x)} and {len(y)} examples; CKA compares the same examples")
    den = nx * ny
    if den <= 0:
        return float("nan")
    if gx is not None and gy is not None:  # ||Y^T X||_F^2 = tr(K L) = sum(K * L)
        return float(np.sum(gx * gy) / den)
    return float(np.linalg.norm(y.T @ x) ** 2 / den)


def linear_cka(x, y) -> float:
    """Linear CKA of (N, D1) and (N, D2) features (more dimensions are flattened); NaN if either is constant."""
    a, b = _centred(x), _centred(y)
    ga, gb = _gram_form(a), _gram_form(b)
    return _cka(a, b, _self_norm(a, ga), _self_norm(b, gb), ga, gb)


def cka_matrix(xs, ys) -> np.ndarray:
    """(len(xs), len(ys)) linear CKA of every pair of layers: ``xs`` and ``ys`` are lists of feature matrices of the
    same N examples (e.g. the layers of two models)."""
    a = [_centred(x) for x in xs]
    b = [_centred(y) for y in ys]
    ga, gb = [_gram_form(m) for m in a], [_gram_form(m) for m in b]
    na = [_self_norm(m, g) for m, g in zip(a, ga)]
    nb = [_self_norm(m, g) for m, g in zip(b, gb)]
    return np.array([[_cka(ai, bj, ni, nj, gi, gj) for bj, nj, gj in zip(b, nb, gb)]
                     for ai, ni, gi in zip(a, na, ga)], dtype=np.float64)
