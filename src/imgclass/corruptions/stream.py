"""The counter-based random stream of the corruptions (SplitMix64), as tensor code and as numba kernels.

Word ``i`` of an image (its values in (C, H, W) order) is half of ``mix64(key + (i // 2 + 1) * GAMMA)``, the low
32 bits for even ``i``, the high ones for odd (SplitMix64's output function; ``key`` is the image's 63-bit key from
(seed, corruption, severity, sample id)). Uniform ``i`` is the top 53 bits of ``mix64(key + (i + 1) * GAMMA)``.
A counter-based generator: any piece of any image is drawn without the others, on any device, bit for bit the same.
The numba twins (``nb_mix``, ``nb_word``, ``nb_uniform``) are inlined into the family kernels that draw inside their loops;
numba's cache does not see a change here from those modules, so a change here needs the cache cleared.
"""

from __future__ import annotations

import numpy as np
import torch

from . import kernels

GAMMA = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB

__all__ = ["GAMMA", "words", "uniforms", "normals", "box_muller"]


def _signed(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


def _lshr(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch shifts arithmetically)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def _hashes(keys: torch.Tensor, count: int) -> torch.Tensor:
    """``mix64(key + i * GAMMA)`` for i = 1 .. count, int64 (arithmetic wraps modulo 2**64 on every device torch
    has): the tensor twin of the kernels' generator."""
    z = keys[:, None] + torch.arange(1, count + 1, device=keys.device, dtype=torch.int64)[None, :] * _signed(GAMMA)
    z = (z ^ _lshr(z, 30)) * _signed(_M1)
    z = (z ^ _lshr(z, 27)) * _signed(_M2)
    return z ^ _lshr(z, 31)


def words(keys: torch.Tensor, n: int, device=None) -> torch.Tensor:
    """The first ``n`` random words (0 .. 2**32 - 1, int64) of each key: (len(keys), n), two per hash."""
    keys = keys.to(device=device, dtype=torch.int64)
    z = _hashes(keys, (n + 1) // 2)
    return torch.stack([z & 0xFFFFFFFF, _lshr(z, 32)], -1).reshape(len(keys), -1)[:, :n]


def uniforms(keys: torch.Tensor, n: int, device=None) -> torch.Tensor:
    """The first ``n`` float64 uniforms in [0, 1) of each key: the top 53 bits of ``mix64(key + (i + 1) * GAMMA)``
    times 2**-53 (the stream the words halve; a corruption uses one or the other). A numba kernel fills them on
    the CPU."""
    keys = keys.to(device=device, dtype=torch.int64)
    if keys.device.type == "cpu" and kernels.HAVE_NUMBA:
        out = torch.empty((len(keys), n), dtype=torch.float64)
        kernels.run_split(_uniforms, len(keys) * n, out.numpy().reshape(-1), keys.numpy().view(np.uint64), n,
                          align=1, min_part=kernels.part_units(1.5))
        return out
    return _lshr(_hashes(keys, n), 11).to(torch.float64) * 2.0 ** -53


def normals(keys: torch.Tensor, n: int, device=None) -> torch.Tensor:
    """The first ``n`` float64 standard normals of each key, by Box and Muller from pairs of ``uniforms``:
    ``sqrt(-2 log(1 - u0)) * (cos, sin)(2 pi u1)``, the cosine for even positions, the sine for odd."""
    return box_muller(uniforms(keys, 2 * ((n + 1) // 2), device))[:, :n]


def box_muller(u: torch.Tensor) -> torch.Tensor:
    """Standard normals from (N, 2M) uniforms in [0, 1), pairs (u0, u1) in turn."""
    u = u.view(len(u), -1, 2)
    r = torch.sqrt(-2.0 * torch.log1p(-u[..., 0]))
    t = (2.0 * torch.pi) * u[..., 1]
    return torch.stack([r * torch.cos(t), r * torch.sin(t)], -1).reshape(len(u), -1)


if kernels.HAVE_NUMBA:
    from numba import njit

    NB_GAMMA = np.uint64(GAMMA)
    _K1 = np.uint64(_M1)
    _K2 = np.uint64(_M2)
    NB_LOW32 = np.uint64(0xFFFFFFFF)
    NB_ONE = np.uint64(1)

    @njit(nogil=True, cache=True, inline="always")
    def nb_mix(z):
        z = (z ^ (z >> np.uint64(30))) * _K1
        z = (z ^ (z >> np.uint64(27))) * _K2
        return z ^ (z >> np.uint64(31))

    @njit(nogil=True, cache=True, inline="always")
    def nb_word(key, i):
        h = nb_mix(key + (np.uint64(i >> 1) + NB_ONE) * NB_GAMMA)
        if i & 1:
            return h >> np.uint64(32)
        return h & NB_LOW32

    @njit(nogil=True, cache=True, inline="always")
    def nb_uniform(key, i):
        return np.float64(nb_mix(key + (np.uint64(i) + NB_ONE) * NB_GAMMA) >> np.uint64(11)) * 2.0 ** -53

    @njit(nogil=True, cache=True)
    def _uniforms(lo, hi, out, keys, m):
        img = lo // m
        while img * m < hi:
            key = keys[img]
            base = img * m
            for i in range(max(lo, base) - base, min(hi, base + m) - base):
                out[base + i] = nb_uniform(key, i)
            img += 1
