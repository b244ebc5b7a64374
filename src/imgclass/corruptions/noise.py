"""Noise corruptions: gaussian, shot (Poisson), impulse (salt and pepper), speckle."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from .base import register, stack_draws, to_uint8


def _float(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float32) / 255.0


def _normal(gens, x):
    return {"z": stack_draws(gens, lambda g: torch.randn(x.shape[1:], generator=g, device=x.device))}


def _uniform64(gens, x):
    return {"u": stack_draws(gens, lambda g: torch.rand(x.shape[1:], generator=g, device=x.device,
                                                        dtype=torch.float64))}


@register("gaussian_noise", draw=lambda gens, x, p, pset: _normal(gens, x))
def gaussian_noise(x: torch.Tensor, p: float, pset: str, *, z: torch.Tensor) -> torch.Tensor:
    return to_uint8(_float(x) + z * p)


@register("speckle_noise", draw=lambda gens, x, p, pset: _normal(gens, x))
def speckle_noise(x: torch.Tensor, p: float, pset: str, *, z: torch.Tensor) -> torch.Tensor:
    xf = _float(x)
    return to_uint8(xf + xf * (z * p))


@register("impulse_noise", draw=lambda gens, x, p, pset: {
    "u": stack_draws(gens, lambda g: torch.rand(x.shape[1:], generator=g, device=x.device))})
def impulse_noise(x: torch.Tensor, p: float, pset: str, *, u: torch.Tensor) -> torch.Tensor:
    """scikit-image's ``random_noise(mode='s&p', amount=p)``: a value flips with probability p, to 1 or 0 evenly.

    One uniform u per value decides both: flipped if u <= p, and then salt if u <= p / 2 (u / p is uniform on
    [0, 1] given the flip), where scikit-image draws a second uniform.
    """
    return x.masked_fill(u <= p, 0).masked_fill_(u <= p / 2, 255)


# ---------------------------------------------------------------------------------------------------------
# Poisson draws by exact inversion: an image has only 256 distinct rates v * c / 255, so each rate gets its
# cumulative distribution table and a guide table that starts the search (numpy's and torch's samplers are
# scalar loops, several times slower than this).

_GUIDE = 1024


@lru_cache(maxsize=16)
def _poisson_tables(c: float, device: str):
    from scipy.stats import poisson

    lam = np.arange(256, dtype=np.float64) / 255.0 * c
    kmax = int(c + 12 * np.sqrt(c) + 30)
    cdf = poisson.cdf(np.arange(kmax + 1)[None, :], lam[:, None])  # (256, K)
    cdf[:, -1] = 1.0
    edges = np.arange(_GUIDE, dtype=np.float64) / _GUIDE
    guide = np.stack([np.searchsorted(row, edges, side="right") for row in cdf])  # first k with cdf > edge
    return (torch.as_tensor(cdf.ravel(), device=device),
            torch.as_tensor(guide.ravel().astype(np.int32), device=device), kmax + 1)


def poisson_inverse(v: torch.Tensor, u: torch.Tensor, c: float) -> torch.Tensor:
    """Poisson(v * c / 255) draws for uint8 levels ``v`` from uniforms ``u`` in [0, 1) (float64)."""
    cdf, guide, k_size = _poisson_tables(float(c), str(v.device))
    v = v.flatten().to(torch.int32)
    u = u.flatten()
    k = guide.index_select(0, (v * _GUIDE).add_((u * _GUIDE).to(torch.int32).clamp_max_(_GUIDE - 1)))
    row = v * k_size
    active = torch.nonzero(cdf.index_select(0, row + k) <= u).squeeze(1)
    while active.numel():  # a few elements, in the tails, step further
        k[active] += 1
        still = cdf.index_select(0, row[active] + k[active]) <= u[active]
        active = active[still]
    return k


@register("shot_noise", draw=lambda gens, x, p, pset: _uniform64(gens, x))
def shot_noise(x: torch.Tensor, p: float, pset: str, *, u: torch.Tensor) -> torch.Tensor:
    k = poisson_inverse(x, u, p).view(x.shape)
    return to_uint8(k.to(torch.float64) / float(p))
