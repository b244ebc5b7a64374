"""CPU kernels (numba) of the noise corruptions: alias-table sampling per value, salt and pepper, and the
construction of the alias tables.

Each has its twin in ``noise`` (``table_apply``, ``impulse_noise``, the Python loop of ``_alias_rows``); the tests
hold the two equal. Every value's word comes from ``stream``; the work splits by value position
(``kernels.run_split``).
"""

from __future__ import annotations

import numpy as np
import torch

from . import kernels
from .kernels import flat_view, run_split

__all__ = ["alias_rows", "impulse", "sample_table"]

if kernels.HAVE_NUMBA:
    from numba import njit

    from .stream import NB_GAMMA, NB_LOW32, NB_ONE, nb_mix, nb_word

    @njit(nogil=True, cache=True, inline="always")
    def _pick(v, w, table):
        j = w >> np.uint64(24)
        e = np.uint64(table[np.int64(v) * 256 + np.int64(j)])
        keep = np.uint64((w & np.uint64(0xFFFFFF)) < (e >> np.uint64(8)))
        a = e & np.uint64(255)
        return np.uint8(a + keep * (j - a))  # branch-free (the comparison is a coin flip); j - a wraps, exact

    @njit(nogil=True, cache=True)
    def _sample_table(lo, hi, x, out, keys, m, table):
        """out[e] = outcome of input level x[e] drawn by the alias table from word e % m of image e // m."""
        img = lo // m
        while img * m < hi:
            key = keys[img]
            base = img * m
            i = max(lo, base) - base
            end = min(hi, base + m) - base
            if i & 1 and i < end:  # odd start: the high half alone
                out[base + i] = _pick(x[base + i], nb_word(key, i), table)
                i += 1
            while i + 1 < end:  # both halves of one hash
                h = nb_mix(key + (np.uint64(i >> 1) + NB_ONE) * NB_GAMMA)
                out[base + i] = _pick(x[base + i], h & NB_LOW32, table)
                out[base + i + 1] = _pick(x[base + i + 1], h >> np.uint64(32), table)
                i += 2
            if i < end:
                out[base + i] = _pick(x[base + i], nb_word(key, i), table)
            img += 1

    @njit(nogil=True, cache=True)
    def _impulse(lo, hi, x, out, keys, m, t_flip, t_salt):
        img = lo // m
        while img * m < hi:
            key = keys[img]
            base = img * m
            for i in range(max(lo, base) - base, min(hi, base + m) - base):
                w = np.int64(nb_word(key, i))
                flip = np.int64(w < t_flip)
                out[base + i] = np.uint8(np.int64(x[base + i]) * (1 - flip) + 255 * np.int64(w < t_salt))
            img += 1

    @njit(cache=True)
    def _alias_rows(prob, thr, alias):
        """``noise._alias_rows``'s Python loop, operation for operation (the same stacks, pops and sums)."""
        rows, k = prob.shape
        small = np.empty(k, np.int64)
        large = np.empty(k, np.int64)
        for r in range(rows):
            q = prob[r] * k
            ns = nl = 0
            for j in range(k):
                if q[j] < 1.0:
                    small[ns] = j
                    ns += 1
                else:
                    large[nl] = j
                    nl += 1
            for j in range(k):
                alias[r, j] = j
                thr[r, j] = 1 << 24
            while ns and nl:
                ns -= 1
                nl -= 1
                s, g = small[ns], large[nl]
                thr[r, s] = int(q[s] * (1 << 24) + 0.5)
                alias[r, s] = g
                q[g] = (q[g] + q[s]) - 1.0
                if q[g] < 1.0:
                    small[ns] = g
                    ns += 1
                else:
                    large[nl] = g
                    nl += 1


def alias_rows(prob: np.ndarray, thr: np.ndarray, alias: np.ndarray) -> None:
    """CPU kernel of ``noise._alias_rows``: fills thr (int32) and alias (uint8), each (rows, 256)."""
    _alias_rows(np.ascontiguousarray(prob, dtype=np.float64), thr, alias)


def sample_table(x: torch.Tensor, keys: torch.Tensor, table: np.ndarray) -> torch.Tensor:
    """CPU kernel: every value of the uint8 batch replaced by a draw from its level's row of an alias table
    (``noise.packed_table``: threshold << 8 | alias per column); the twin of ``noise.table_apply``."""
    out = torch.empty_like(x)
    m = x[0].numel()
    run_split(_sample_table, x.numel(), flat_view(x), out.numpy().reshape(-1), keys.numpy().view(np.uint64), m, table)
    return out


def impulse(x: torch.Tensor, keys: torch.Tensor, t_flip: int, t_salt: int) -> torch.Tensor:
    """CPU kernel of the salt-and-pepper noise: word < t_salt -> 255, < t_flip -> 0, else unchanged."""
    out = torch.empty_like(x)
    run_split(_impulse, x.numel(), flat_view(x), out.numpy().reshape(-1), keys.numpy().view(np.uint64),
              x[0].numel(), t_flip, t_salt)
    return out
