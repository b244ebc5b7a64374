"""Noise corruptions: gaussian, shot (Poisson), impulse (salt and pepper), speckle."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from . import kernels, noise_kernels
from .base import register
from .stream import words


# ---------------------------------------------------------------------------------------------------------
# The four noises are per-pixel channels: the output level of a value depends on its input level and its own
# draw only. So each value's output is drawn straight from the distribution of the reference's output level
# given the input level (256 x 256 probabilities per severity, from the normal and Poisson distributions and
# the reference's arithmetic), with one 32-bit random word and Walker's alias method: the top 8 bits pick a
# column, the low 24 decide between the column and its alias. The same distribution as the reference's, to
# 2**-32, in one table lookup per value instead of a normal draw and five passes of arithmetic.


def _alias_rows(prob: np.ndarray, thr: np.ndarray, alias: np.ndarray) -> None:
    """Vose's construction of Walker's alias table for each row of ``prob`` (rows sum to 1, 256 columns):
    column j keeps itself when the word's low 24 bits are below thr[j], else gives alias[j]. The numba kernel
    ``noise_kernels.alias_rows`` does the same operations in the same order (on the CPU, by default)."""
    if kernels.HAVE_NUMBA:
        noise_kernels.alias_rows(prob, thr, alias)
        return
    k = prob.shape[1]
    for r in range(prob.shape[0]):
        q = prob[r] * k
        small = [j for j in range(k) if q[j] < 1.0]
        large = [j for j in range(k) if q[j] >= 1.0]
        for j in range(k):
            alias[r, j] = j
            thr[r, j] = 1 << 24
        while small and large:
            s, g = small.pop(), large.pop()
            thr[r, s] = int(q[s] * (1 << 24) + 0.5)
            alias[r, s] = g
            q[g] = (q[g] + q[s]) - 1.0
            (small if q[g] < 1.0 else large).append(g)


def alias_table(prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(thr int32, alias uint8), each (256 * 256,), of a (256, 256) table of P(output level | input level).

    Thresholds stop at 2**24 - 1, so a column fits 32 bits with its alias (the kernel reads one word): a full
    column is its own alias, and a column kept with probability above 1 - 2**-25 loses 2**-24 of it (2**-32
    of its row's mass)."""
    prob = np.asarray(prob, dtype=np.float64)
    prob = prob / prob.sum(1, keepdims=True)
    thr = np.empty(prob.shape, dtype=np.int32)
    alias = np.empty(prob.shape, dtype=np.uint8)
    _alias_rows(prob, thr, alias)
    np.minimum(thr, (1 << 24) - 1, out=thr)
    return thr.reshape(-1), alias.reshape(-1)


def _level_edges() -> np.ndarray:
    """Values y with trunc(clip(y, 0, 1) * 255) stepping from level l - 1 to l, l = 1 .. 255."""
    return np.arange(1, 256, dtype=np.float64) / 255.0


def _between(cdf_at_edges: np.ndarray) -> np.ndarray:
    """Level probabilities from the CDF of y at the 255 level edges (one row per input level)."""
    n = len(cdf_at_edges)
    c = np.concatenate([np.zeros((n, 1)), cdf_at_edges, np.ones((n, 1))], 1)
    return np.clip(np.diff(c, axis=1), 0.0, None)


def gaussian_levels(c: float, speckle: bool) -> np.ndarray:
    """P(out = l | in = v) of ``uint8(clip(x + x**speckle * N(0, c**2), 0, 1) * 255)``, x = v / 255.

    The normal CDF is ``scipy.special.ndtr``, what ``scipy.stats.norm.cdf`` computes, without importing
    ``scipy.stats`` (over a second)."""
    from scipy.special import ndtr

    x = np.arange(256, dtype=np.float64)[:, None] / 255.0
    scale = c * x if speckle else np.full_like(x, c)
    with np.errstate(divide="ignore"):  # speckle at level 0: no noise, +inf everywhere, P(y < edge) = 1
        t = (_level_edges()[None, :] - x) / scale
    return _between(ndtr(t))


def poisson_levels(c: float) -> np.ndarray:
    """P(out = l | in = v) of ``uint8(clip(poisson(x * c) / c, 0, 1) * 255)``, x = v / 255: each count's level
    by the reference's own float arithmetic, counts from ``c`` on all at 255. The probabilities are
    ``scipy.stats.poisson``'s pmf and sf (``exp(xlogy(k, mu) - gammaln(k + 1) - mu)``, ``pdtrc``) from
    ``scipy.special``."""
    from scipy.special import gammaln, pdtrc, xlogy

    lam = np.arange(256, dtype=np.float64) / 255.0 * c
    kmax = int(np.ceil(c)) + 1
    k = np.arange(kmax)
    level = (np.clip(k / float(c), 0, 1) * 255).astype(np.uint8)
    kk, mu = np.broadcast_arrays(k[None, :], lam[:, None])
    pmf = np.exp(xlogy(kk, mu) - gammaln(kk + 1) - mu)
    out = np.zeros((256, 256))
    for j in range(kmax):
        out[:, level[j]] += pmf[:, j]
    out[:, 255] += pdtrc(kmax - 1, lam)
    return out


@lru_cache(maxsize=64)
def level_table(name: str, p: float) -> tuple[np.ndarray, np.ndarray]:
    """The alias table of a noise at one parameter (cached)."""
    if name == "shot_noise":
        prob = poisson_levels(float(p))
    else:
        prob = gaussian_levels(float(p), speckle=name == "speckle_noise")
    return alias_table(prob)


@lru_cache(maxsize=64)
def packed_table(name: str, p: float) -> np.ndarray:
    """``level_table`` as one uint32 per column: threshold << 8 | alias."""
    thr, alias = level_table(name, p)
    return (thr.astype(np.uint32) << np.uint32(8)) | alias.astype(np.uint32)


def table_apply(x: torch.Tensor, w: torch.Tensor, table: tuple[np.ndarray, np.ndarray]) -> torch.Tensor:
    """The tensor twin of ``noise_kernels.sample_table``: outcome of each value's level drawn by its word."""
    thr = torch.as_tensor(table[0], device=x.device).to(torch.int64)
    alias = torch.as_tensor(table[1], device=x.device).to(torch.int64)
    j = w >> 24
    k = x.to(torch.int64) * 256 + j
    keep = (w & 0xFFFFFF) < thr[k]
    return torch.where(keep, j, alias[k]).to(torch.uint8)


def _words(keys, x, p, pset):
    return {"w": words(keys, x[0].numel()).view(x.shape)}


def _table_noise(name: str):
    def apply_(x: torch.Tensor, p, pset: str, *, w: torch.Tensor) -> torch.Tensor:
        return table_apply(x, w, level_table(name, p))

    def fused(x: torch.Tensor, keys_: torch.Tensor, p, pset: str) -> torch.Tensor:
        return noise_kernels.sample_table(x, keys_, packed_table(name, p))

    register(name, draw=_words, fused=fused)(apply_)
    return apply_


gaussian_noise = _table_noise("gaussian_noise")  # x + N(0, c^2)
speckle_noise = _table_noise("speckle_noise")  # x + x N(0, c^2)
shot_noise = _table_noise("shot_noise")  # poisson(x c) / c


def _impulse_thresholds(p: float) -> tuple[int, int]:
    """Word thresholds of scikit-image's ``random_noise(mode='s&p', amount=p)``: a value flips with probability
    p, to 255 or 0 evenly (salt below the second threshold, pepper between the two)."""
    return int(round(p * 2.0 ** 32)), int(round(p / 2 * 2.0 ** 32))


@register("impulse_noise", draw=_words,
          fused=lambda x, keys_, p, pset: noise_kernels.impulse(x, keys_, *_impulse_thresholds(p)))
def impulse_noise(x: torch.Tensor, p: float, pset: str, *, w: torch.Tensor) -> torch.Tensor:
    t_flip, t_salt = _impulse_thresholds(p)
    return x.masked_fill(w < t_flip, 0).masked_fill_(w < t_salt, 255)
