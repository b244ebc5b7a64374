"""Classification and calibration metrics on probabilities / logits (pure functions, float64).

Conventions: ``probs`` is ``(N, C)`` rows summing to 1, ``labels`` is ``(N,)`` int. Equal-width
binning follows torchmetrics' ``MulticlassCalibrationError`` exactly: boundaries
``linspace(0, 1, n_bins + 1)``, bin = ``bucketize(conf, boundaries, right=True) - 1`` (a confidence
of exactly 1 gets its own last bin), ECE = sum over bins of |acc - conf| * (bin count / N).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "ece",
    "reliability_bins",
    "adaptive_ece",
    "classwise_ece",
    "max_calibration_error",
    "nll",
    "brier",
    "fit_temperature",
    "topk_accuracy",
    "confusion_matrix",
    "soft_cross_entropy",
]


def _t(x, dtype=torch.float64) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).to(dtype)


def reliability_bins(confidences, correct, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per-bin mean confidence, accuracy and count for equal-width bins (torchmetrics' binning)."""
    conf = _t(confidences)
    acc = _t(correct)
    bounds = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    idx = torch.bucketize(conf, bounds, right=True) - 1
    nb = n_bins + 1  # torchmetrics keeps len(boundaries) slots; conf == 1.0 lands in the last one
    count = torch.zeros(nb, dtype=torch.float64).scatter_add_(0, idx, torch.ones_like(conf))
    csum = torch.zeros(nb, dtype=torch.float64).scatter_add_(0, idx, conf)
    asum = torch.zeros(nb, dtype=torch.float64).scatter_add_(0, idx, acc)
    safe = count.clamp_min(1)
    return {"confidence": (csum / safe).numpy(), "accuracy": (asum / safe).numpy(), "count": count.numpy(),
            "lower": torch.cat([bounds[:-1], bounds[-1:]]).numpy()}


def ece(probs, labels, n_bins: int = 15) -> float:
    """Expected calibration error of the top-1 prediction (L1, equal-width bins)."""
    p = _t(probs)
    conf, pred = p.max(dim=1)
    correct = (pred == torch.as_tensor(labels)).double()
    b = reliability_bins(conf, correct, n_bins)
    n = b["count"].sum()
    return float(np.sum(np.abs(b["accuracy"] - b["confidence"]) * b["count"] / n)) if n else float("nan")


def max_calibration_error(probs, labels, n_bins: int = 15) -> float:
    p = _t(probs)
    conf, pred = p.max(dim=1)
    b = reliability_bins(conf, (pred == torch.as_tensor(labels)).double(), n_bins)
    filled = b["count"] > 0
    return float(np.max(np.abs(b["accuracy"] - b["confidence"])[filled])) if filled.any() else float("nan")


def adaptive_ece(probs, labels, n_bins: int = 15) -> float:
    """ECE with equal-mass bins: samples sorted by confidence, split into ``n_bins`` near-equal groups."""
    p = _t(probs)
    conf, pred = p.max(dim=1)
    correct = (pred == torch.as_tensor(labels)).double()
    order = torch.argsort(conf, stable=True)
    n = len(conf)
    if n == 0:
        return float("nan")
    total = 0.0
    for part in np.array_split(order.numpy(), min(n_bins, n)):
        if len(part):
            total += abs(float(correct[part].mean() - conf[part].mean())) * len(part) / n
    return total


def classwise_ece(probs, labels, n_bins: int = 15) -> float:
    """Classwise ECE (Kull et al. 2019): mean over classes of the binned |freq(y=k) - p_k| gap."""
    p = _t(probs)
    y = torch.as_tensor(labels)
    n, c = p.shape
    if n == 0:
        return float("nan")
    bounds = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    idx = torch.bucketize(p, bounds, right=True) - 1  # (N, C)
    onehot = torch.nn.functional.one_hot(y, c).double()
    nb = n_bins + 1
    offs = idx + torch.arange(c).view(1, c) * nb
    psum = torch.zeros(c * nb, dtype=torch.float64).scatter_add_(0, offs.flatten(), p.flatten())
    ysum = torch.zeros(c * nb, dtype=torch.float64).scatter_add_(0, offs.flatten(), onehot.flatten())
    gap = (ysum - psum).abs()  # |sum y - sum p| = count * |acc - conf|
    per_class = gap.view(c, nb).sum(1) / n
    return float(per_class.mean())


def nll(logits, labels) -> float:
    """Mean negative log-likelihood (cross-entropy) of the labels under softmax(logits)."""
    lg = _t(logits)
    if len(lg) == 0:
        return float("nan")
    return float(torch.nn.functional.cross_entropy(lg, torch.as_tensor(labels).long()))


def soft_cross_entropy(logits, target_probs) -> float:
    """Mean cross-entropy of softmax(logits) against a target distribution (e.g. human labels)."""
    lg = _t(logits)
    q = _t(target_probs)
    return float(-(q * torch.log_softmax(lg, dim=1)).sum(1).mean())


def brier(probs, labels) -> float:
    """Multiclass Brier score: mean over samples of sum_k (p_k - 1[y = k])^2 (range 0..2)."""
    p = _t(probs)
    onehot = torch.nn.functional.one_hot(torch.as_tensor(labels).long(), p.shape[1]).double()
    return float(((p - onehot) ** 2).sum(1).mean())


def fit_temperature(logits, labels, *, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature T minimising NLL of softmax(logits / T) (Guo et al. 2017), by bounded Brent on log T."""
    from scipy.optimize import minimize_scalar

    lg = _t(logits)
    y = torch.as_tensor(labels).long()
    if len(lg) == 0:
        raise ValueError("cannot fit a temperature on zero samples")

    def f(log_t: float) -> float:
        return float(torch.nn.functional.cross_entropy(lg / float(np.exp(log_t)), y))

    res = minimize_scalar(f, bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded",
                          options={"xatol": 1e-7, "maxiter": 500})
    return float(np.exp(res.x))


def topk_accuracy(logits, labels, k: int) -> float:
    lg = torch.as_tensor(logits)
    y = torch.as_tensor(labels)
    if len(lg) == 0:
        return float("nan")
    k = min(k, lg.shape[1])
    top = lg.topk(k, dim=1).indices
    return float((top == y.view(-1, 1)).any(1).double().mean())


def confusion_matrix(labels, preds, n_classes: int) -> np.ndarray:
    """``cm[true, pred]`` counts."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(preds, dtype=np.int64)
    return np.bincount(y * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
