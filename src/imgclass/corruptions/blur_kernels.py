"""CPU kernels (numba) of the blur filters: separable correlation (float, or uint8 in and out) and motion blur.

Their tensor twins are ``base.separable_filter``, ``base.gaussian_blur_uint8`` and ``base.motion_blur_tensor``
(used by the blurs, and by the snow, spatter and elastic transform through ``base``); the tests hold them equal.
"""

from __future__ import annotations

import numpy as np
import torch

from . import kernels
from .kernels import part_units, run_split

__all__ = ["separable", "separable_u8", "motion_blur"]

if kernels.HAVE_NUMBA:
    from numba import njit

    @njit(nogil=True, cache=True)
    def _sep_plane(src, dst, ky, iy, kx, ix, tmp, row):
        """One (H, W) plane: correlate along H with ky, then along W with kx (empty: skip the axis), borders
        through the index maps iy, ix (``base.border_index``); accumulation in src's dtype, in tap order.
        Flat unsigned indices: no negative-index tests, no views per row and tap, the inner loops vectorize."""
        h, w = src.shape
        ty, tx = len(ky), len(kx)
        zero = src.dtype.type(0)
        sf, df, tf = src.reshape(-1), dst.reshape(-1), tmp.reshape(-1)
        uw = np.uint64(w)
        if ty:
            for y in range(h):
                o = np.uint64(y * w)
                for j in range(uw):
                    tf[o + j] = zero
                for t in range(ty):
                    sr = np.uint64(iy[y + t] * w)
                    kk = ky[t]
                    for j in range(uw):
                        tf[o + j] += kk * sf[sr + j]
        else:
            for e in range(h * w):
                tf[e] = sf[e]
        for y in range(h):
            o = np.uint64(y * w)
            if not tx:
                for j in range(uw):
                    df[o + j] = tf[o + j]
                continue
            for j in range(w + tx - 1):
                row[j] = tf[o + np.uint64(ix[j])]
            for j in range(uw):
                df[o + j] = zero
            for t in range(tx):
                kk = kx[t]
                ut = np.uint64(t)
                for j in range(uw):
                    df[o + j] += kk * row[ut + j]

    @njit(nogil=True, cache=True)
    def _separable(lo, hi, x, out, ky, iy, kx, ix):
        """Planes lo..hi of (P, H, W) through ``_sep_plane``."""
        p_, h, w = x.shape
        tmp = np.empty((h, w), dtype=x.dtype)
        row = np.empty(w + max(len(kx), 1), dtype=x.dtype)
        for p in range(lo, hi):
            _sep_plane(x[p], out[p], ky, iy, kx, ix, tmp, row)

    @njit(nogil=True, cache=True)
    def _separable_u8(lo, hi, x, out, ky, iy, kx, ix):
        """``to_uint8(filter(x / 255))`` of uint8 planes lo..hi, in float32: the tensor code's values."""
        p_, h, w = x.shape
        lut = np.empty(256, dtype=np.float32)
        for v in range(256):
            lut[v] = np.float32(v) / np.float32(255)
        src = np.empty((h, w), dtype=np.float32)
        dst = np.empty((h, w), dtype=np.float32)
        tmp = np.empty((h, w), dtype=np.float32)
        row = np.empty(w + max(len(kx), 1), dtype=np.float32)
        for p in range(lo, hi):
            for y in range(h):
                for j in range(w):
                    src[y, j] = lut[x[p, y, j]]
            _sep_plane(src, dst, ky, iy, kx, ix, tmp, row)
            for y in range(h):
                for j in range(w):
                    out[p, y, j] = np.uint8(min(max(dst[y, j], np.float32(0)), np.float32(1)) * np.float32(255))

    @njit(nogil=True, cache=True)
    def _motion(lo, hi, x, out, dy, dx, k, nt):
        """Rows lo..hi of the output's (N * C * OH) rows (out: (N, C, OH, OW), the top left corner of the full
        result): out[y, :] = sum over taps of k * x[clamp(y - dy), clamp(: - dx)], clamped to x's (H, W)."""
        n, c, h, w = x.shape
        oh, ow = out.shape[2], out.shape[3]
        xf = x.reshape(-1)
        of = out.reshape(-1)
        for r in range(lo, hi):
            img = r // (c * oh)
            y = r % oh
            plane = (r // oh) * h * w  # (img, channel) plane offset in x
            o0 = r * ow
            for j in range(ow):
                of[o0 + j] = 0
            for t in range(nt[img]):
                s0 = plane + min(max(y - dy[img, t], 0), h - 1) * w
                kk = k[img, t]
                d = dx[img, t]
                a = min(max(d, 0), ow)  # columns before a read column 0, from b on column w - 1
                b = max(min(w + d, ow), a)
                left = kk * xf[s0]
                right = kk * xf[s0 + w - 1]
                for j in range(a):
                    of[o0 + j] += left
                oa = np.uint64(o0 + a)  # unsigned indices: no negative-index test, the loop vectorizes
                sa = np.uint64(s0 + a - d)
                for j in range(np.uint64(b - a)):
                    of[oa + j] += kk * xf[sa + j]
                for j in range(b, ow):
                    of[o0 + j] += right


def separable_u8(x: torch.Tensor, ky: np.ndarray | None, iy: np.ndarray | None, kx: np.ndarray | None,
                 ix: np.ndarray | None) -> torch.Tensor:
    """CPU kernel of ``to_uint8(separable_filter(x / 255))`` for uint8 x (float32 arithmetic)."""
    shape = x.shape
    planes = x.contiguous().reshape(-1, *shape[-2:])
    out = torch.empty_like(planes)
    none = np.zeros(0, dtype=np.float32), np.zeros(1, dtype=np.int64)
    ky_, iy_ = (np.asarray(ky, dtype=np.float32), iy) if ky is not None else none
    kx_, ix_ = (np.asarray(kx, dtype=np.float32), ix) if kx is not None else none
    run_split(_separable_u8, len(planes), planes.numpy(), out.numpy(), ky_, iy_, kx_, ix_, align=1,
              min_part=part_units(0.2 * planes[0].numel() * (len(ky_) + len(kx_) + 4)))
    return out.reshape(shape)


def separable(x: torch.Tensor, ky: np.ndarray | None, iy: np.ndarray | None, kx: np.ndarray | None,
              ix: np.ndarray | None) -> torch.Tensor:
    """CPU kernel of ``base.separable_filter`` (float32 or float64, any leading shape): a direct correlation,
    the taps of each output in order (the matrix product sums duplicate border taps first: equal to rounding)."""
    shape = x.shape
    planes = x.contiguous().reshape(-1, *shape[-2:])
    out = torch.empty_like(planes)
    dt = planes.numpy().dtype
    none = np.zeros(0, dtype=dt), np.zeros(1, dtype=np.int64)
    ky_, iy_ = (np.asarray(ky, dtype=dt), iy) if ky is not None else none
    kx_, ix_ = (np.asarray(kx, dtype=dt), ix) if kx is not None else none
    run_split(_separable, len(planes), planes.numpy(), out.numpy(), ky_, iy_, kx_, ix_, align=1,
              min_part=part_units(0.2 * planes[0].numel() * (len(ky_) + len(kx_) + 2)))
    return out.reshape(shape)


def motion_blur(x: torch.Tensor, taps: list[list[tuple[int, int, float]]], crop: tuple[int, int] | None = None
                ) -> torch.Tensor:
    """CPU kernel of ``base.motion_blur_tensor`` (products and sums in x's float type, in tap order: the same
    bits); ``crop``: compute only the top left (OH, OW) of the result."""
    n, c, h, w = x.shape
    oh, ow = crop or (h, w)
    t = max((len(tp) for tp in taps), default=0)
    dy = np.zeros((n, max(t, 1)), dtype=np.int64)
    dx = np.zeros_like(dy)
    x = x.contiguous()
    k = np.zeros(dy.shape, dtype=x.numpy().dtype)
    for i, tp in enumerate(taps):
        if tp:
            dy[i, :len(tp)], dx[i, :len(tp)], k[i, :len(tp)] = zip(*tp)
    nt = np.array([len(tp) for tp in taps], dtype=np.int64)
    out = torch.empty((n, c, oh, ow), dtype=x.dtype)
    run_split(_motion, n * c * oh, x.numpy(), out.numpy(), dy, dx, k, nt, align=1,
              min_part=part_units(0.3 * ow * max(t, 1)))
    return out
