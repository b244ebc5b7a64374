"""The linear probe: multinomial logistic regression (scikit-learn, lbfgs) on frozen features standardized with the
training mean and std, its L2 strength chosen on a seeded held-out part of the training features over a log grid
and refit on all of them (the protocol of the SimCLR and CLIP linear evaluations)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["LinearProbe", "linear_probe", "standardize", "DEFAULT_CS"]

DEFAULT_CS: tuple[float, ...] = tuple(float(c) for c in np.logspace(-4, 2, 7))  # inverse L2 strength, 1e-4 .. 1e2


@dataclass
class LinearProbe:
    """What ``linear_probe`` found: the chosen C, held-out accuracy per C (grid order), test top-1 and predictions."""

    C: float
    heldout: dict[float, float]
    top1: float
    predictions: np.ndarray = field(repr=False)
    n_train: int = 0
    n_heldout: int = 0


def _np(a) -> np.ndarray:
    return a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)


def standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """``train`` and ``others`` standardized with ``train``'s per-feature mean and std (a constant feature: std 1)."""
    mean = train.mean(0)
    std = train.std(0)
    std = np.where(std > 0, std, 1.0)
    return [(a - mean) / std for a in (train, *others)]


def _fit(x: np.ndarray, y: np.ndarray, C: float, max_iter: int):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, solver="lbfgs", max_iter=max_iter).fit(x, y)


def linear_probe(train_feats, train_labels, test_feats, test_labels, *, Cs=DEFAULT_CS, heldout: float = 0.2,
                 seed: int = 0, max_iter: int = 1000) -> LinearProbe:
    """Choose C on a seeded ``heldout`` fraction of the training features (the first best C of the grid wins a tie),
    refit on all training features, score the test features. Features in float64; arrays or tensors."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    xtr, xte = _np(train_feats).astype(np.float64), _np(test_feats).astype(np.float64)
    ytr, yte = _np(train_labels).astype(np.int64), _np(test_labels).astype(np.int64)
    if len(np.unique(ytr)) < 2:
        raise ValueError("linear_probe: the training features need at least two classes")
    Cs = [float(c) for c in Cs]
    n = len(xtr)
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(heldout * n)) if len(Cs) > 1 else 0
    val, fit = perm[:n_val], perm[n_val:]
    scores: dict[float, float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if n_val and len(np.unique(ytr[fit])) >= 2:
            a, b = standardize(xtr[fit], xtr[val])
            for c in Cs:
                scores[c] = float((_fit(a, ytr[fit], c, max_iter).predict(b) == ytr[val]).mean())
            best = max(Cs, key=lambda c: (scores[c], -Cs.index(c)))
        else:
            best = Cs[0] if len(Cs) == 1 else 1.0
        a, b = standardize(xtr, xte)
        pred = _fit(a, ytr, best, max_iter).predict(b) if len(xte) else np.zeros(0, dtype=np.int64)
    top1 = float((pred == yte).mean()) if len(yte) else float("nan")
    return LinearProbe(best, scores, top1, pred.astype(np.int64), int(len(fit)), int(n_val))
