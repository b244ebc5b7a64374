"""Post-hoc out-of-distribution detectors as pure functions of logits, penultimate features or a model.

Convention: a HIGHER score means MORE in-distribution (OpenOOD's convention). pytorch-ood 0.4.0 returns
outlier scores (higher = more OOD); every score here is exactly ``-`` pytorch-ood's score for the same inputs
and settings, which the tests check. Where a choice was made:

- ``entropy`` is the negative entropy with probabilities clipped to [1e-7, 1]; ``gen`` averages (pytorch-ood,
  not the paper's sum: same ranking) over the top ``m`` probabilities clamped to [1e-7, 1 - 1e-7].
- ``Mahalanobis``: class means and the shared covariance as pytorch-ood computes it (the *sum* of centred outer
  products, not divided by N, plus 1e-6 * I, inverted with ``torch.linalg.inv``); the score is
  ``max_k -0.5 (z - mu_k)^T P (z - mu_k)``.
- ``KNN``: L2-normalized features (norm clamped at 1e-12), score = -Euclidean distance to the k-th nearest bank
  row, k = 50 (OpenOOD's and pytorch-ood's default for CIFAR-10); exact, chunked matmul in float64.
- ``ViM``: origin ``u = -pinv(W) b``, residual space = eigenvectors of the (D - dim) smallest eigenvalues of the
  uncentred covariance of ``features - u``, ``alpha = mean max-logit / mean residual norm``;
  score = ``logsumexp(logits) - alpha * ||residual||``. ``dim`` must be below the feature width (pytorch-ood
  silently halves it instead).
- ``react`` / ``ash`` act on penultimate features (B, D) and score the energy of ``features @ W.T + b``;
  percentiles are in percent (pytorch-ood takes fractions: 90 here is its 0.9).
- ``odin``: the model takes [0, 1] pixels and normalizes inside, so ``eps`` is in pixel units. pytorch-ood's
  ``ODIN(model, eps, norm_std=std)`` on a model taking normalized input divides the sign gradient by ``std``,
  i.e. steps ``eps / std`` in normalized space = ``eps`` in pixel space, the same as here (and the same as the
  original ODIN code); pytorch-ood on a pixel-space model matches with ``norm_std=None``. Perturbed pixels are
  not clipped to [0, 1] (neither does pytorch-ood).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import UsageError
from ..registry import Registry

__all__ = [
    "msp", "max_logit", "energy", "entropy", "gen", "Mahalanobis", "KNN", "ViM", "react", "react_threshold",
    "ash", "odin", "DetectorSpec", "DETECTORS",
]


def _logits2d(logits: Tensor) -> Tensor:
    if not torch.is_tensor(logits) or logits.dim() != 2:
        raise UsageError(f"expected logits of shape (N, classes), got {getattr(logits, 'shape', type(logits))}")
    return logits


def _features2d(features: Tensor, what: str = "features") -> Tensor:
    if not torch.is_tensor(features) or features.dim() != 2:
        raise UsageError(f"expected {what} of shape (N, D), got {getattr(features, 'shape', type(features))}")
    return features


def _head(features: Tensor, W: Tensor, b: Tensor | None) -> Tensor:
    if W.dim() != 2 or W.shape[1] != features.shape[1]:
        raise UsageError(f"W must be (classes, {features.shape[1]}), got {tuple(W.shape)}")
    out = features @ W.T.to(features.dtype)
    return out if b is None else out + b.to(features.dtype)


# -- logit scores -------------------------------------------------------------------------------------------
def msp(logits: Tensor) -> Tensor:
    """Maximum softmax probability (Hendrycks & Gimpel 2017)."""
    return _logits2d(logits).softmax(dim=1).max(dim=1).values


def max_logit(logits: Tensor) -> Tensor:
    """Maximum logit (Hendrycks et al. 2022)."""
    return _logits2d(logits).max(dim=1).values


def energy(logits: Tensor, *, t: float = 1.0) -> Tensor:
    """Negative free energy ``t * logsumexp(logits / t)`` (Liu et al. 2020)."""
    if t <= 0:
        raise UsageError(f"energy temperature t must be > 0, got {t}")
    return t * torch.logsumexp(_logits2d(logits) / t, dim=1)


def entropy(logits: Tensor) -> Tensor:
    """Negative entropy of the softmax, probabilities clipped to [1e-7, 1]."""
    p = _logits2d(logits).softmax(dim=1).clip(1e-7, 1)
    return (p.log() * p).sum(dim=1)


def gen(logits: Tensor, *, gamma: float = 0.1, m: int = 100) -> Tensor:
    """GEN (Liu et al. 2023): ``-mean`` over the top-``m`` probabilities of ``p^gamma (1 - p)^gamma``."""
    if gamma <= 0 or m < 1:
        raise UsageError(f"gen needs gamma > 0 and m >= 1, got gamma={gamma}, m={m}")
    p = _logits2d(logits).softmax(dim=1).clamp(1e-7, 1 - 1e-7)
    p = p.sort(dim=1, descending=True).values[:, :m]
    return -(p.pow(gamma) * (1 - p).pow(gamma)).mean(dim=1)


# -- feature scores -----------------------------------------------------------------------------------------
class Mahalanobis:
    """Class-conditional Gaussians with a shared covariance (Lee et al. 2018); score = max_k -0.5 * distance^2."""

    def __init__(self) -> None:
        self.means: Tensor | None = None
        self.precision: Tensor | None = None

    def fit(self, features: Tensor, labels: Tensor) -> "Mahalanobis":
        """Class means and the shared (summed) covariance of in-distribution ``features`` with labels 0..C-1."""
        z = _features2d(features).detach()
        y = torch.as_tensor(labels, device=z.device).long()
        if y.shape != (z.shape[0],):
            raise UsageError(f"labels must have shape ({z.shape[0]},), got {tuple(y.shape)}")
        classes = y.unique()
        if classes.numel() == 0 or classes.min() < 0 or classes.numel() != int(classes.max()) + 1:
            raise UsageError("Mahalanobis.fit needs labels 0..C-1 with every class present")
        d = z.shape[1]
        means = torch.zeros(classes.numel(), d, dtype=z.dtype, device=z.device)
        cov = torch.zeros(d, d, dtype=z.dtype, device=z.device)
        for c in range(classes.numel()):
            zc = z[y == c]
            means[c] = zc.mean(dim=0)
            cov += (zc - means[c]).T.mm(zc - means[c])
        cov += torch.eye(d, dtype=z.dtype, device=z.device) * 1e-6
        self.means, self.precision = means, torch.linalg.inv(cov)
        return self

    @torch.no_grad()
    def score(self, features: Tensor) -> Tensor:
        """``max_k -0.5 (z - mu_k)^T P (z - mu_k)`` for each row."""
        if self.means is None:
            raise UsageError("Mahalanobis.score called before fit")
        z = _features2d(features).detach().to(self.means.dtype)
        per_class = [-0.5 * (((z - mu) @ self.precision) * (z - mu)).sum(dim=1) for mu in self.means]
        return torch.stack(per_class, dim=1).max(dim=1).values


def _l2_normalize(z: Tensor) -> Tensor:
    return z / z.norm(dim=1, keepdim=True).clamp(min=1e-12)


class KNN:
    """Deep nearest neighbours (Sun et al. 2022): -distance of the normalized feature to the k-th nearest bank row."""

    def __init__(self, *, k: int = 50, normalize: bool = True, chunk_size: int = 1024) -> None:
        if k < 1 or chunk_size < 1:
            raise UsageError(f"KNN needs k >= 1 and chunk_size >= 1, got k={k}, chunk_size={chunk_size}")
        self.k, self.normalize, self.chunk_size = k, normalize, chunk_size
        self.bank: Tensor | None = None

    def _prepare(self, z: Tensor) -> Tensor:
        z = _features2d(z).detach().to(torch.float64)
        return _l2_normalize(z) if self.normalize else z

    def fit(self, features: Tensor) -> "KNN":
        """Store the (normalized) in-distribution features as the bank."""
        bank = self._prepare(features)
        if bank.shape[0] < self.k:
            raise UsageError(f"KNN k={self.k} exceeds the bank size ({bank.shape[0]})")
        self.bank = bank
        return self

    @torch.no_grad()
    def score(self, features: Tensor) -> Tensor:
        """``-||z - z_(k)||`` per row (float64), exact, in chunks of ``chunk_size`` rows."""
        if self.bank is None:
            raise UsageError("KNN.score called before fit")
        z = self._prepare(features).to(self.bank.device)
        bank_sq = (self.bank * self.bank).sum(dim=1)
        out = []
        for q in z.split(self.chunk_size):
            d2 = (q * q).sum(dim=1, keepdim=True) + bank_sq[None, :] - 2.0 * q @ self.bank.T
            kth = d2.topk(self.k, dim=1, largest=False).values[:, -1]
            out.append(-kth.clamp(min=0).sqrt())
        return torch.cat(out) if out else z.new_zeros(0)


class ViM:
    """Virtual-logit matching (Wang et al. 2022), as pytorch-ood computes it."""

    def __init__(self) -> None:
        self.W: Tensor | None = None
        self.b: Tensor | None = None
        self.u: Tensor | None = None
        self.residual_space: Tensor | None = None
        self.alpha: float | None = None

    def fit(self, features: Tensor, W: Tensor, b: Tensor, *, dim: int) -> "ViM":
        """Residual subspace (all but the top-``dim`` principal directions) and alpha from ID ``features``."""
        x = _features2d(features).detach().float()
        if not 1 <= dim < x.shape[1]:
            raise UsageError(f"ViM dim must be in [1, {x.shape[1] - 1}] for {x.shape[1]}-d features, got {dim}")
        self.W, self.b = W.detach().float().to(x.device), b.detach().float().to(x.device)
        self.u = -(torch.linalg.pinv(self.W) @ self.b)
        logits = _head(x, self.W, self.b)
        xc = x - self.u
        _, vecs = torch.linalg.eigh((xc.T @ xc) / xc.shape[0])
        self.residual_space = vecs[:, : vecs.shape[1] - dim].contiguous()
        self.alpha = (logits.max(dim=-1).values.mean() / (xc @ self.residual_space).norm(dim=-1).mean()).item()
        return self

    @torch.no_grad()
    def score(self, features: Tensor) -> Tensor:
        """``logsumexp(logits) - alpha * ||residual||``."""
        if self.residual_space is None:
            raise UsageError("ViM.score called before fit")
        x = _features2d(features).detach().float().to(self.W.device)
        vlogit = ((x - self.u) @ self.residual_space).norm(dim=-1) * self.alpha
        return torch.logsumexp(_head(x, self.W, self.b), dim=-1) - vlogit


# -- activation shaping -------------------------------------------------------------------------------------
def _check_percent(percentile: float) -> float:
    if not 0 <= percentile <= 100:
        raise UsageError(f"percentile must be in [0, 100], got {percentile}")
    return float(percentile)


def react_threshold(features: Tensor, percentile: float = 90) -> float:
    """The ``percentile``-th percentile (in percent) of all in-distribution activations (ReAct's clip value)."""
    z = _features2d(features).detach().flatten().cpu()
    return float(np.percentile(z.numpy(), _check_percent(percentile)))


@torch.no_grad()
def react(features: Tensor, W: Tensor, b: Tensor | None, *, threshold: float) -> Tensor:
    """ReAct (Sun et al. 2021): energy of the logits of features clipped from above at ``threshold``."""
    z = _features2d(features).clip(max=threshold)
    return energy(_head(z, W, b))


def _prune(x: Tensor, fraction: float, fill: Tensor | None = None) -> Tensor:
    n = x.shape[1]
    k = n - int(np.round(n * fraction))
    v, i = torch.topk(x, k, dim=1)
    if fill is not None:
        v = (fill / k).unsqueeze(dim=1).expand(v.shape)
    return torch.zeros_like(x).scatter_(dim=1, index=i, src=v)


_ASH_VARIANTS = ("ash-s", "ash-p", "ash-b")


@torch.no_grad()
def ash(features: Tensor, W: Tensor, b: Tensor | None, *, percentile: float = 65, variant: str = "ash-s") -> Tensor:
    """ASH (Djurisic et al. 2023): energy after zeroing the lowest ``percentile`` % of each row's activations;
    ``ash-p`` keeps the rest, ``ash-b`` binarizes it to the sum-preserving value, ``ash-s`` scales it by
    ``exp(sum before / sum after)``."""
    z = _features2d(features)
    frac = _check_percent(percentile) / 100
    if variant not in _ASH_VARIANTS:
        raise UsageError(f"unknown ASH variant {variant!r}; known: {', '.join(_ASH_VARIANTS)}")
    if z.shape[1] - int(np.round(z.shape[1] * frac)) < 1:
        raise UsageError(f"ASH percentile {percentile} prunes every one of {z.shape[1]} activations")
    if variant == "ash-p":
        shaped = _prune(z, frac)
    elif variant == "ash-b":
        shaped = _prune(z, frac, fill=z.sum(dim=1))
    else:
        s1 = z.sum(dim=1)
        shaped = _prune(z, frac)
        shaped = shaped * torch.exp(s1 / shaped.sum(dim=1))[:, None]
    return energy(_head(shaped, W, b))


# -- gradient scores ----------------------------------------------------------------------------------------
def odin(model: Callable[[Tensor], Tensor], x: Tensor, *, temperature: float = 1000.0,
         eps: float = 0.0014) -> Tensor:
    """ODIN (Liang et al. 2018): max softmax of ``logits / T`` at ``x - eps * sign(grad_x CE(logits / T, argmax))``;
    ``x`` are float pixels in [0, 1] and ``eps`` is in pixel units (see the module docstring)."""
    if temperature <= 0 or eps < 0:
        raise UsageError(f"odin needs temperature > 0 and eps >= 0, got temperature={temperature}, eps={eps}")
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise UsageError("odin expects float pixels in [0, 1]")
    with torch.inference_mode(False), torch.enable_grad():
        xg = x.detach().clone().requires_grad_()
        logits = model(xg) / temperature
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, logits.argmax(dim=1)), xg)
    x_hat = x.detach() - eps * grad.sign()
    with torch.no_grad():
        return (model(x_hat) / temperature).softmax(dim=1).max(dim=1).values


# -- registry -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DetectorSpec:
    """What a detector is and what it needs: ``"logits"``, ``"features"``, ``"fit"`` (ID statistics), ``"gradients"``
    (backpropagation through the model, on pixels)."""

    fn: Callable | type
    needs: frozenset[str]
    defaults: tuple[tuple[str, object], ...] = ()

    @property
    def requires_fit(self) -> bool:
        return "fit" in self.needs


DETECTORS: Registry[DetectorSpec] = Registry("detector")


def _spec(name: str, fn: Callable | type, needs: str, **defaults) -> None:
    DETECTORS[name] = DetectorSpec(fn, frozenset(needs.split()), tuple(defaults.items()))


_spec("msp", msp, "logits")
_spec("max_logit", max_logit, "logits")
_spec("energy", energy, "logits", t=1.0)
_spec("entropy", entropy, "logits")
_spec("gen", gen, "logits", gamma=0.1, m=100)
_spec("mahalanobis", Mahalanobis, "features fit")
_spec("knn", KNN, "features fit", k=50, normalize=True)
_spec("vim", ViM, "features fit")
_spec("react", react, "features fit", percentile=90)
_spec("ash", ash, "features", percentile=65, variant="ash-s")
_spec("odin", odin, "gradients", temperature=1000.0, eps=0.0014)
