"""k-shot accuracy of frozen features over seeded episodes: each episode draws k training examples per class, then
classifies every test feature with (a) logistic regression (lbfgs, fixed C) on features standardized with the whole
training set's mean and std and (b) the nearest prototype: cosine similarity to the L2-normalized mean of the
class's L2-normalized support features (SimpleShot's CL2N without centring)."""

from __future__ import annotations

import numpy as np

from .linear import _fit, _np, standardize

__all__ = ["fewshot_accuracy"]


def _draw(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``k`` examples per class (all of a class's examples when it has fewer), sorted."""
    picked = [rng.choice(np.flatnonzero(labels == c), size=min(k, int((labels == c).sum())), replace=False)
              for c in np.unique(labels)]
    return np.sort(np.concatenate(picked))


def _unit(a: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(a, axis=1, keepdims=True)
    return a / np.where(n > 0, n, 1.0)


def fewshot_accuracy(train_feats, train_labels, test_feats, test_labels, *, shots=(1, 5, 10), episodes: int = 5,
                     seed: int = 0, C: float = 1.0, max_iter: int = 1000) -> dict[int, dict[str, float]]:
    """Per shot count: ``{"linear_mean", "linear_std", "prototype_mean", "prototype_std", "episodes"}`` (std: the
    sample standard deviation over the episodes, 0 for one). Episode e of k shots draws with seed ``[seed, k, e]``."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    xtr, xte = _np(train_feats).astype(np.float64), _np(test_feats).astype(np.float64)
    ytr, yte = _np(train_labels).astype(np.int64), _np(test_labels).astype(np.int64)
    str_, ste = standardize(xtr, xte)
    utr, ute = _unit(xtr), _unit(xte)
    out: dict[int, dict[str, float]] = {}
    for k in shots:
        lin, proto = [], []
        for e in range(episodes):
            idx = _draw(ytr, int(k), np.random.default_rng([seed, int(k), e]))
            ys = ytr[idx]
            classes = np.unique(ys)
            protos = _unit(np.stack([utr[idx][ys == c].mean(0) for c in classes]))
            proto.append(float((classes[(ute @ protos.T).argmax(1)] == yte).mean()))
            if len(classes) < 2:
                lin.append(float((classes[0] == yte).mean()))
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                lin.append(float((_fit(str_[idx], ys, C, max_iter).predict(ste) == yte).mean()))
        sd = (lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0)
        out[int(k)] = {"linear_mean": float(np.mean(lin)), "linear_std": sd(lin),
                       "prototype_mean": float(np.mean(proto)), "prototype_std": sd(proto), "episodes": int(episodes)}
    return out
