"""CPU kernels (numba) of the weather corruptions: fog (the plasma fractal drawn inside) and the snow's layer and
composition.

Their tensor twins are ``weather.plasma_fractal`` / ``weather.fog`` and the tensor steps of ``weather.snow``; the
tests hold them equal. The fog draws its uniforms from ``stream`` inside the loop.
"""

from __future__ import annotations

import numpy as np
import torch

from . import kernels
from .kernels import run_split

__all__ = ["fog", "snow_layer", "snow_compose"]

if kernels.HAVE_NUMBA:
    from numba import njit

    from .stream import nb_uniform

    @njit(nogil=True, cache=True)
    def _plasma(key, mapsize, decay):
        """weather.plasma_fractal of one image, its uniforms drawn here: the same operations in the same order."""
        ul = np.zeros((1, 1))
        a, step, wibble, k = 1, mapsize, 100.0, 0
        while step >= 2:
            dr = np.empty((a, a))
            lt = np.empty((a, a))
            tt = np.empty((a, a))
            for i in range(a):  # neighbours wrap around (the reference's np.roll); no modulo per element
                i1 = i + 1 if i + 1 < a else 0
                for j in range(a):
                    j1 = j + 1 if j + 1 < a else 0
                    sq = (ul[i, j] + ul[i1, j]) + (ul[i, j1] + ul[i1, j1])
                    dr[i, j] = sq / 4 + wibble * (-wibble + 2 * wibble * nb_uniform(key, k + i * a + j))
            k += a * a
            for i in range(a):
                i0 = i - 1 if i > 0 else a - 1
                for j in range(a):
                    j1 = j + 1 if j + 1 < a else 0
                    s_ = (dr[i, j] + dr[i0, j]) + (ul[i, j] + ul[i, j1])
                    lt[i, j] = s_ / 4 + wibble * (-wibble + 2 * wibble * nb_uniform(key, k + i * a + j))
            k += a * a
            for i in range(a):
                i1 = i + 1 if i + 1 < a else 0
                for j in range(a):
                    j0 = j - 1 if j > 0 else a - 1
                    s_ = (dr[i, j] + dr[i, j0]) + (ul[i, j] + ul[i1, j])
                    tt[i, j] = s_ / 4 + wibble * (-wibble + 2 * wibble * nb_uniform(key, k + i * a + j))
            k += a * a
            new = np.empty((2 * a, 2 * a))
            for i in range(a):
                for j in range(a):
                    new[2 * i, 2 * j] = ul[i, j]
                    new[2 * i, 2 * j + 1] = lt[i, j]
                    new[2 * i + 1, 2 * j] = tt[i, j]
                    new[2 * i + 1, 2 * j + 1] = dr[i, j]
            ul = new
            a *= 2
            step //= 2
            wibble /= decay
        ul = ul - ul.min()
        return ul / ul.max()

    @njit(nogil=True, cache=True)
    def _fog(lo, hi, x, out, keys, mapsize, strength, decay):
        n, c, h, w = x.shape
        s32 = np.float32(strength)
        for img in range(lo, hi):
            plasma = _plasma(keys[img], mapsize, decay)
            mx = np.float32(0)
            for ch in range(c):
                for y in range(h):
                    for j in range(w):
                        mx = max(mx, np.float32(x[img, ch, y, j]) / np.float32(255))
            den = mx + s32
            for ch in range(c):
                for y in range(h):
                    for j in range(w):
                        v = np.float32(x[img, ch, y, j]) / np.float32(255) + s32 * np.float32(plasma[y, j])
                        v = min(max((v * mx) / den, np.float32(0)), np.float32(1)) * np.float32(255)
                        out[img, ch, y, j] = np.uint8(v)


def fog(x: torch.Tensor, keys: torch.Tensor, mapsize: int, strength: float, decay: float) -> torch.Tensor:
    """CPU kernel of ``weather.fog`` with its uniforms from ``stream.uniforms``."""
    out = torch.empty_like(x)
    run_split(_fog, len(x), x.contiguous().numpy(), out.numpy(), keys.numpy().view(np.uint64), mapsize,
              float(strength), float(decay), align=1, min_part=1)
    return out


if kernels.HAVE_NUMBA:
    @njit(nogil=True, cache=True)
    def _snow_compose(lo, hi, x, layer, out, blend):
        """weather.snow's last steps for images lo..hi, in float32 as there: the blurred layer rounded to 8 bits,
        the image brightened towards its grey level, the layer and its 180-degree rotation added."""
        n, c, h, w = x.shape
        b1 = np.float32(blend)
        b2 = np.float32(1 - blend)
        lut = np.empty(256, dtype=np.float32)  # v / 255 in float32, as the tensor code divides
        for v in range(256):
            lut[v] = np.float32(v) / np.float32(255)
        q = np.empty((h, w), dtype=np.float32)
        for img in range(lo, hi):
            for y in range(h):
                for j in range(w):
                    q[y, j] = lut[np.uint8(np.rint(layer[img, 0, y, j] * 255))]
            for y in range(h):
                for j in range(w):
                    la = q[y, j]
                    lb = q[h - 1 - y, w - 1 - j]
                    grey = (np.float32(0.299) * lut[x[img, 0, y, j]] + np.float32(0.587) * lut[x[img, 1, y, j]]) \
                        + np.float32(0.114) * lut[x[img, 2, y, j]]
                    grey = grey * np.float32(1.5) + np.float32(0.5)
                    for ch in range(c):
                        v = lut[x[img, ch, y, j]]
                        v = b1 * v + b2 * max(v, grey)
                        v = (v + la) + lb
                        out[img, ch, y, j] = np.uint8(min(max(v, np.float32(0)), np.float32(1)) * np.float32(255))

    @njit(nogil=True, cache=True)
    def _snow_layer(lo, hi, z, out, loc, scale, thresh, i0y, i1y, fy, i0x, i1x, fx, eight_bit):
        """weather.snow's layer for images lo..hi: loc + scale z, zoomed linearly (rows, then columns, at the
        given taps and fractions), thresholded, clipped to [0, 1] (and, for the CIFAR generator, to 8 bits)."""
        n, h, w = z.shape
        oh, ow = out.shape[1], out.shape[2]
        rows = np.empty((oh, w))
        for img in range(lo, hi):
            for r in range(oh):
                a, b, f = i0y[r], i1y[r], fy[r]
                for j in range(w):
                    rows[r, j] = (scale * z[img, a, j] + loc) * (1.0 - f) + (scale * z[img, b, j] + loc) * f
            for r in range(oh):
                for q in range(ow):
                    v = rows[r, i0x[q]] * (1.0 - fx[q]) + rows[r, i1x[q]] * fx[q]
                    if v < thresh:
                        v = 0.0
                    v = min(max(v, 0.0), 1.0)
                    if eight_bit:
                        v = np.float64(np.uint8(v * 255)) / 255
                    out[img, r, q] = v


def snow_layer(z: torch.Tensor, loc: float, scale: float, thresh: float, ty: tuple, tx: tuple,
               eight_bit: bool) -> torch.Tensor:
    """CPU kernel of the snow layer (z: (N, H, W) float64; ty, tx: (first tap, second tap, fraction) arrays)."""
    out = torch.empty((len(z), len(ty[0]), len(tx[0])), dtype=torch.float64)
    run_split(_snow_layer, len(z), z.contiguous().numpy(), out.numpy(), float(loc), float(scale), float(thresh),
              *ty, *tx, bool(eight_bit), align=1, min_part=1)
    return out


def snow_compose(x: torch.Tensor, layer: torch.Tensor, blend: float) -> torch.Tensor:
    """CPU kernel of the end of ``weather.snow`` (layer: the blurred snow, (N, 1, H, W), float)."""
    out = torch.empty_like(x)
    run_split(_snow_compose, len(x), x.contiguous().numpy(), layer.contiguous().numpy(), out.numpy(), float(blend),
              align=1, min_part=1)
    return out
