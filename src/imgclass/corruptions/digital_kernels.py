"""CPU kernels (numba) of the digital corruptions: brightness, saturate, contrast, pixelate, the elastic
transform, and the pixel interleaving around JPEG's codec calls.

Each does exactly the arithmetic of its tensor twin in ``digital``, so the two agree bit for bit (the tests
hold them equal):

- brightness / saturate: scikit-image's rgb2hsv, a change of S or V, hsv2rgb, per pixel in float64: the
  tensor code's operations in its order, no fused multiply-adds, ties resolved by selects, not branches (the
  loop vectorizes). ``k / 255`` is ``k * hi + k * lo`` (exact for every level), sparing a division.
- contrast: per image and channel, the float64 mean of the float32 levels ``k / 255``. That sum is exact in
  any order (every level is a multiple of 2**-31; a sum of at most 2**22 of them needs at most 53 bits), so
  it may be vectorized; then ``(level - mean) * c + mean`` in float32, truncated.
- pixelate: Pillow's BOX reduction in its 8-bit fixed point (horizontal pass to uint8 rows, then vertical),
  each output the sum of a run of inputs times one weight, plus 2**21, shifted right by 22; then NEAREST back
  (imagecorruptions) or a BOX enlargement back (the CIFAR-10-C generator: at most one input per output, a copy),
  both an index per output row and column.
- elastic transform (imagecorruptions' parameters): the uniform displacement fields drawn inside the loop
  (``stream``), smoothed, then bilinear sampling with reflected taps, sums in the tensor code's order.

The work is split by position (pixels, channel planes or output rows) into parts of at least ``kernels._PART_NS``
of work, so the result never depends on the number of threads. A kernel returns None where its arithmetic would
not hold (images over 2**22 pixels for contrast, reductions by more than 128 for pixelate): ``corrupt`` then
runs the tensor code.
"""

from __future__ import annotations

import struct
from functools import lru_cache

import numpy as np
import torch

from . import kernels
from .base import pil_box_coefficients, pil_nearest_index
from .kernels import flat_view, part_units, run_split

__all__ = ["hsv_adjust", "contrast", "pixelate", "elastic", "to_hwc", "to_chw"]

_SHIFT = 22  # Pillow's PRECISION_BITS for 8-bit images: 32 - 8 - 2


def _split_inverse(d: int) -> tuple[float, float]:
    """1 / d as hi + lo: hi keeps 45 significant bits (k * hi is exact for k < 256), lo the rest."""
    from fractions import Fraction

    bits = struct.unpack("<Q", struct.pack("<d", 1.0 / d))[0] & ~0xFF
    hi = struct.unpack("<d", struct.pack("<Q", bits))[0]
    return hi, float(Fraction(1, d) - Fraction(hi))


_INV255_HI, _INV255_LO = _split_inverse(255)
_k = np.arange(256, dtype=np.float64)
# checked for every level: k / 255 in float64 as hi + lo; float32 k / 255 as float64 k * (1 / 255) rounded
assert np.array_equal(_k * _INV255_HI + _k * _INV255_LO, _k / 255.0)
assert np.array_equal((_k * (1.0 / 255.0)).astype(np.float32), _k.astype(np.float32) / np.float32(255.0))
del _k

if kernels.HAVE_NUMBA:
    from numba import njit

    from .stream import nb_uniform

    @njit(nogil=True, cache=True, inline="always")
    def _unit(k):
        """``k / 255.0`` (float64, correctly rounded) without a division: k * hi is exact, one rounding."""
        return k * _INV255_HI + k * _INV255_LO

    @njit(nogil=True, cache=True)
    def _hsv_pixels(xr, xg, xb, o_r, o_g, o_b, s_mul, s_add, v_add):
        for j in range(xr.size):
            r = _unit(np.float64(xr[j]))
            g = _unit(np.float64(xg[j]))
            b = _unit(np.float64(xb[j]))
            # rgb2hsv
            v = max(max(r, g), b)
            delta = v - min(min(r, g), b)
            flat = delta == 0.0
            safe = 1.0 if flat else delta
            s = 0.0 if flat else delta / (1.0 if v == 0.0 else v)
            num = g - b  # the hue rule of the largest channel; ties: blue over green over red
            off = 0.0
            gmax = g == v
            num = (b - r) if gmax else num
            off = 2.0 if gmax else off
            bmax = b == v
            num = (r - g) if bmax else num
            off = 4.0 if bmax else off
            h = (off + num / safe) / 6.0
            h = (h + 1.0) if h < 0.0 else h  # torch.remainder(h, 1) of h in [-1/6, 5/6]
            h = 0.0 if flat else h
            # the corruption
            s = min(max(s * s_mul + s_add, 0.0), 1.0)
            v = min(max(v + v_add, 0.0), 1.0)
            # hsv2rgb
            h6 = h * 6.0
            sec = np.floor(h6)
            f = h6 - sec
            p = v * (1.0 - s)
            q = v * (1.0 - f * s)
            t = v * (1.0 - (1.0 - f) * s)
            sec = 0.0 if sec == 6.0 else sec  # h == 1: sector 6 is sector 0 (uint8, then % 6)
            # scikit-image's table: r = (v, q, p, p, t, v), g = (t, v, v, q, p, p), b = (p, p, t, v, v, q)
            ro = v
            ro = q if sec == 1.0 else ro
            ro = p if (sec == 2.0) | (sec == 3.0) else ro
            ro = t if sec == 4.0 else ro
            go = p
            go = t if sec == 0.0 else go
            go = v if (sec == 1.0) | (sec == 2.0) else go
            go = q if sec == 3.0 else go
            bo = v
            bo = p if (sec == 0.0) | (sec == 1.0) else bo
            bo = t if sec == 2.0 else bo
            bo = q if sec == 5.0 else bo
            o_r[j] = np.uint8(min(max(ro, 0.0), 1.0) * 255.0)
            o_g[j] = np.uint8(min(max(go, 0.0), 1.0) * 255.0)
            o_b[j] = np.uint8(min(max(bo, 0.0), 1.0) * 255.0)

    @njit(nogil=True, cache=True)
    def _hsv_adjust(lo, hi, x, out, hw, s_mul, s_add, v_add):
        """Pixels [lo, hi) of the batch (image-major, hw per image): rgb2hsv, s = clip(s * s_mul + s_add),
        v = clip(v + v_add), hsv2rgb, truncated to uint8 (scikit-image's rules; see ``digital.rgb2hsv``). Written
        without branches on the data, over slices of the planes: the loop vectorizes."""
        img = lo // hw
        while img * hw < hi:
            j0 = max(lo, img * hw) - img * hw
            n = min(hi, img * hw + hw) - img * hw - j0
            a = 3 * hw * img + j0
            _hsv_pixels(x[a:a + n], x[a + hw:a + hw + n], x[a + 2 * hw:a + 2 * hw + n],
                        out[a:a + n], out[a + hw:a + hw + n], out[a + 2 * hw:a + 2 * hw + n], s_mul, s_add, v_add)
            img += 1

    @njit(nogil=True, cache=True, inline="always")
    def _level(k):
        """float32 ``k / 255`` (correctly rounded: the float64 product rounds to it for every level)."""
        return np.float32(k * (1.0 / 255.0))

    @njit(nogil=True, cache=True, fastmath={"reassoc"})
    def _plane_sum(xs):
        """The float64 sum of the levels: exact in any order (every level a multiple of 2**-31, the sum below
        2**22), so free to vectorize."""
        acc = 0.0
        for j in range(xs.size):
            acc += np.float64(_level(np.float64(xs[j])))
        return acc

    @njit(nogil=True, cache=True)
    def _plane_contrast(xs, os, m, factor):
        for j in range(xs.size):
            y = (_level(np.float64(xs[j])) - m) * factor + m
            os[j] = np.uint8(min(max(y, np.float32(0.0)), np.float32(1.0)) * np.float32(255.0))

    @njit(nogil=True, cache=True)
    def _contrast(lo, hi, x, out, hw, factor):
        """Channel planes [lo, hi): ``to_uint8((level - m) * factor + m)`` in float32, m the plane's float64
        mean of the levels rounded to float32."""
        for plane in range(lo, hi):
            a = plane * hw
            m = np.float32(_plane_sum(x[a:a + hw]) / np.float64(hw))
            _plane_contrast(x[a:a + hw], out[a:a + hw], m, factor)

    @njit(nogil=True, cache=True)
    def _window_sums(xr, run, k):
        """run[j * w + c] = xr[c] + ... + xr[c + j] for j < k (int16: k <= 128)."""
        w = xr.size
        first = run[:w]
        for c in range(w):
            first[c] = np.int16(xr[c])
        for j in range(1, k):
            prev = run[(j - 1) * w:j * w]
            cur = run[j * w:(j + 1) * w]
            xs = xr[j:]
            for c in range(w - j):
                cur[c] = prev[c] + np.int16(xs[c])

    @njit(nogil=True, cache=True)
    def _box_outputs(run, idx, weight, dst):
        """Pillow's fixed point: (sum * weight + 2**21) >> 22 of each output's run of inputs (at most 255 for runs
        of up to 16,447 inputs, so Pillow's clip is never needed)."""
        for i in range(dst.size):
            dst[i] = np.uint8((np.int32(run[idx[i]]) * weight[i] + np.int32(1 << (_SHIFT - 1))) >> np.int32(_SHIFT))

    @njit(nogil=True, cache=True)
    def _box_rows(hbuf, r0, count, sw, weight, acc, dst):
        """The vertical pass: dst = (sum of rows r0 .. r0 + count - 1 of hbuf) * weight, Pillow's rounding."""
        top = hbuf[r0 * sw:(r0 + 1) * sw]
        for i in range(sw):
            acc[i] = np.int32(top[i])
        for r in range(r0 + 1, r0 + count):
            row = hbuf[r * sw:(r + 1) * sw]
            for i in range(sw):
                acc[i] += np.int32(row[i])
        half = np.int32(1 << (_SHIFT - 1))
        for i in range(sw):
            dst[i] = np.uint8((acc[i] * weight + half) >> np.int32(_SHIFT))

    @njit(nogil=True, cache=True)
    def _gather(src, index, dst):
        for i in range(dst.size):
            dst[i] = src[index[i]]

    @njit(nogil=True, cache=True)
    def _copy(src, dst):
        for i in range(dst.size):
            dst[i] = src[i]

    @njit(nogil=True, cache=True)
    def _pixelate(lo, hi, x, out, h, w, sw, hidx, hwt, ksum, vy0, vcnt, vwt, ix, iy):
        """Output rows [lo, hi) of the batch (plane-major, h per channel plane): row ``iy[y]`` of the reduced
        plane, column ``ix[x]``. The reduced plane is Pillow's BOX reduction: output i of a row is the sum of a
        run of ``count`` inputs (``hidx[i]`` = (count - 1) * w + first input, into the row's window sums) times
        one weight ``hwt[i]``, plus 2**21, shifted right by 22 (uint8 rows); then the same down the columns
        (rows vy0[j] .. vy0[j] + vcnt[j] - 1, weight vwt[j]), for the rows the part needs."""
        hbuf = np.empty(h * sw, np.uint8)  # the horizontal pass of the plane's rows
        run = np.empty(ksum * w, np.int16)
        acc = np.empty(sw, np.int32)
        small = np.empty(sw, np.uint8)
        p = lo // h
        y0 = lo - p * h
        u = lo
        while u < hi:
            y1 = min(h, y0 + hi - u)  # this part's rows of plane p: [y0, y1)
            ja, jb = iy[y0], iy[y1 - 1]
            for r in range(vy0[ja], vy0[jb] + vcnt[jb]):
                _window_sums(x[(p * h + r) * w:(p * h + r + 1) * w], run, ksum)
                _box_outputs(run, hidx, hwt, hbuf[r * sw:(r + 1) * sw])
            for y in range(y0, y1):
                o = out[(p * h + y) * w:(p * h + y + 1) * w]
                j = iy[y]
                if y > y0 and j == iy[y - 1]:  # the same reduced row as the output row above
                    _copy(out[(p * h + y - 1) * w:(p * h + y) * w], o)
                else:
                    _box_rows(hbuf, vy0[j], vcnt[j], sw, vwt[j], acc, small)
                    _gather(small, ix, o)
            u += y1 - y0
            p += 1
            y0 = 0


def hsv_adjust(x: torch.Tensor, *, s_mul: float = 1.0, s_add: float = 0.0, v_add: float = 0.0) -> torch.Tensor:
    """CPU kernel of brightness (``v_add``) and saturate (``s_mul``, ``s_add``): the scikit-image HSV round trip
    of ``digital.brightness`` / ``digital.saturate`` (multiplying by 1 and adding 0 change nothing)."""
    n, _, h, w = x.shape
    out = torch.empty_like(x)
    run_split(_hsv_adjust, n * h * w, flat_view(x), out.numpy().reshape(-1), h * w, float(s_mul), float(s_add),
              float(v_add), align=64, min_part=part_units(5.0))
    return out


def contrast(x: torch.Tensor, factor: float) -> torch.Tensor | None:
    """CPU kernel of ``digital.contrast``: per image and channel, ``(x - mean) * factor + mean``."""
    n, c, h, w = x.shape
    if h * w > 1 << 22:  # the float64 sum would no longer be exact in any order
        return None
    out = torch.empty_like(x)
    run_split(_contrast, n * c, flat_view(x), out.numpy().reshape(-1), h * w, np.float32(factor), align=1,
              min_part=part_units(1.0 * h * w))
    return out


def _runs(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pillow's BOX coefficients (an (out, in) matrix) as runs: first input, count, weight of each output (the
    box is a 0/1 window, normalized: a run of equal weights)."""
    nz = m != 0
    count = nz.sum(1)
    first = nz.argmax(1)
    weight = m.max(1)
    cols = np.arange(m.shape[1])[None, :]
    run = (cols >= first[:, None]) & (cols < (first + count)[:, None])
    assert (count > 0).all() and np.array_equal(m, np.where(run, weight[:, None], 0.0))
    return first.astype(np.int64), count.astype(np.int64), weight.astype(np.int32)


def _index_map(m: np.ndarray) -> np.ndarray:
    """A BOX enlargement (each output one input at weight 2**22: a copy) as the index of each output's input."""
    assert ((m != 0).sum(1) == 1).all() and (m.max(1) == 1 << _SHIFT).all()
    return (m != 0).argmax(1).astype(np.int64)


@lru_cache(maxsize=64)
def _pixelate_plan(h: int, w: int, sh: int, sw: int, box_back: bool):
    """The pixelate kernel's tables for (h, w) -> (sh, sw) and back (None: runs too long for its arithmetic)."""
    hx0, hcnt, hwt = _runs(pil_box_coefficients(w, sw))
    vy0, vcnt, vwt = _runs(pil_box_coefficients(h, sh))
    ksum = int(hcnt.max())
    if ksum > 128 or int(vcnt.max()) > 128:  # within: sums fit int16 and (sum * weight + 2**21) >> 22 <= 255
        return None
    hidx = ((hcnt - 1) * w + hx0).astype(np.uint32)  # unsigned indices: no negative-index wrap in the loops
    if box_back:  # Pillow's BOX enlargement copies one input to each output
        ix, iy = _index_map(pil_box_coefficients(sw, w)), _index_map(pil_box_coefficients(sh, h))
    else:
        ix, iy = pil_nearest_index(sw, w), pil_nearest_index(sh, h)
    assert (np.diff(iy) >= 0).all() and (np.diff(vy0) >= 0).all()  # the kernel makes rows in order
    return hidx, hwt, ksum, vy0, vcnt, vwt, ix.astype(np.uint32), iy


def pixelate(x: torch.Tensor, sh: int, sw: int, *, box_back: bool) -> torch.Tensor | None:
    """CPU kernel of ``digital.pixelate``: Pillow's BOX down to (sh, sw), NEAREST (or BOX) back."""
    n, c, h, w = x.shape
    plan = _pixelate_plan(h, w, sh, sw, box_back)
    if plan is None:
        return None
    out = torch.empty_like(x)
    run_split(_pixelate, n * c * h, flat_view(x), out.numpy().reshape(-1), h, w, sw, *plan, align=1,
              min_part=part_units(60.0 + 1.2 * w))
    return out


if kernels.HAVE_NUMBA:
    @njit(nogil=True, cache=True)
    def _elastic(lo, hi, x, out, keys, alpha, low, high, ky, iy, kx, ix):
        """digital.elastic_transform (imagecorruptions' parameters) of images lo..hi: uniform displacement
        fields, Gaussian-smoothed along H then W (reflect borders through the index maps iy, ix), scaled by
        alpha, then bilinear sampling with reflected taps. Sums in the tensor path's order (bit for bit)."""
        n, c, h, w = x.shape
        ty, tx = len(ky), len(kx)
        f = np.empty(2 * h * w)
        g = np.empty(2 * h * w)
        row = np.empty(w + tx)
        lut = np.empty(256, dtype=np.float32)
        for v in range(256):
            lut[v] = np.float32(v) / np.float32(255)
        xf = x.reshape(-1)
        plane = h * w
        for img in range(lo, hi):
            key = keys[img]
            for e in range(2 * plane):
                f[e] = low + (high - low) * nb_uniform(key, e)
            for q in range(2):  # along H: g[y] = sum_t ky[t] f[iy[y + t]], rows at a time
                for y in range(h):
                    o = np.uint64(q * plane + y * w)
                    for j in range(np.uint64(w)):
                        g[o + j] = 0.0
                    for t in range(ty):
                        sr = np.uint64(q * plane + iy[y + t] * w)
                        kk = ky[t]
                        for j in range(np.uint64(w)):
                            g[o + j] += kk * f[sr + j]
            for q in range(2):  # along W, through a reflected copy of the row
                for y in range(h):
                    o = np.uint64(q * plane + y * w)
                    for j in range(w + tx - 1):
                        row[j] = g[o + np.uint64(ix[j])]
                    for j in range(np.uint64(w)):
                        f[o + j] = 0.0
                    for t in range(tx):
                        kk = kx[t]
                        for j in range(np.uint64(w)):
                            f[o + j] += kk * row[np.uint64(t) + j]
            for y in range(h):
                for j in range(w):
                    e = y * w + j
                    yy = y + np.float64(np.float32(f[plane + e] * alpha))
                    xx = j + np.float64(np.float32(f[e] * alpha))
                    y0 = np.floor(yy)
                    x0 = np.floor(xx)
                    fy = np.float32(yy - y0)
                    fx = np.float32(xx - x0)
                    ya, yb = _reflect(np.int64(y0), h), _reflect(np.int64(y0) + 1, h)
                    xa, xb = _reflect(np.int64(x0), w), _reflect(np.int64(x0) + 1, w)
                    gx = np.float32(1) - fx
                    gy = np.float32(1) - fy
                    for ch in range(c):
                        base = (img * c + ch) * plane
                        top = lut[xf[base + ya * w + xa]] * gx + lut[xf[base + ya * w + xb]] * fx
                        bottom = lut[xf[base + yb * w + xa]] * gx + lut[xf[base + yb * w + xb]] * fx
                        r = top * gy + bottom * fy
                        out[img, ch, y, j] = np.uint8(min(max(r, np.float32(0)), np.float32(1)) * np.float32(255))

    @njit(nogil=True, cache=True, inline="always")
    def _reflect(i, size):  # half-sample symmetric: -1 -> 0, size -> size - 1
        if 0 <= i < size:
            return i
        period = 2 * size
        j = i % period
        return j if j < size else period - 1 - j

    @njit(nogil=True, cache=True)
    def to_hwc(x, out):
        """(N, C, H, W) planes -> (N, H, W, C) interleaved pixels (torch's strided uint8 copy is ~20x slower)."""
        n, c, h, w = x.shape
        for i in range(n):
            o = out[i].reshape(-1)
            for ch in range(c):
                plane = x[i, ch].reshape(-1)
                for p in range(h * w):
                    o[p * c + ch] = plane[p]

    @njit(nogil=True, cache=True)
    def to_chw(x, out):
        """(N, H, W, C) interleaved pixels -> (N, C, H, W) planes."""
        n, h, w, c = x.shape
        for i in range(n):
            src = x[i].reshape(-1)
            for ch in range(c):
                plane = out[i, ch].reshape(-1)
                for p in range(h * w):
                    plane[p] = src[p * c + ch]


def elastic(x: torch.Tensor, keys: torch.Tensor, alpha: float, low: float, high: float, ky: np.ndarray,
            iy: np.ndarray, kx: np.ndarray, ix: np.ndarray) -> torch.Tensor:
    """CPU kernel of the elastic transform with imagecorruptions' parameters; its uniforms from ``uniforms``."""
    out = torch.empty_like(x)
    run_split(_elastic, len(x), x.contiguous().numpy(), out.numpy(), keys.numpy().view(np.uint64), float(alpha),
              float(low), float(high), ky, iy, kx, ix, align=1, min_part=1)
    return out
