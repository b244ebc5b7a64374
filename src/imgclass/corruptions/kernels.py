"""CPU kernels of the corruptions (numba), and the counter-based random words they share with the tensor path.

On the CPU a corruption that is a short per-pixel computation spends its time in torch's passes over the
batch (one temporary per operation, a generator call per image); a fused loop compiled by numba does the
same arithmetic in one pass. The kernels release the GIL and run on the process-wide thread pool, the work
split by position, so the result never depends on the number of threads. Each kernel has a tensor
twin (the code in the corruption's module) that runs on every device; the tests hold the two equal.

Random words: word ``i`` of an image (its values in (C, H, W) order) is half of ``mix64(key + (i // 2 + 1) *
GAMMA)``, the low 32 bits for even ``i``, the high ones for odd (SplitMix64's output function; ``key`` is the
image's 63-bit key from (seed, corruption, severity, sample id)). A counter-based generator: any piece of
any image is drawn without the others, on any device, bit for bit the same.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

try:  # numba is a dependency; without it (or with NUMBA_DISABLE_JIT) the tensor path runs on the CPU too
    from numba import njit

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    HAVE_NUMBA = False

GAMMA = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB

__all__ = ["HAVE_NUMBA", "GAMMA", "words", "pool", "run_split", "sample_table", "impulse", "motion_blur", "uniforms", "normals", "box_muller", "fog", "elastic", "separable", "separable_u8", "snow_layer", "snow_compose"]


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
    if keys.device.type == "cpu" and HAVE_NUMBA:
        out = torch.empty((len(keys), n), dtype=torch.float64)
        run_split(_uniforms, len(keys) * n, out.numpy().reshape(-1), keys.numpy().view(np.uint64), n, align=1,
                  min_part=_min_part(1.5))
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


# handing a part to a pool thread and getting it back costs 0.1-0.25 ms on a small VM: parts are sized to take
# at least about 0.3 ms (min_part, from each kernel's rough cost per unit)
_PART_NS = 300_000


def _min_part(unit_ns: float) -> int:
    return max(1, int(_PART_NS / max(unit_ns, 1e-3)))


_POOL: dict[int, ThreadPoolExecutor] = {}  # by number of workers


def pool(workers: int) -> ThreadPoolExecutor:
    """A process-wide pool for kernels and per-image codec calls in threads (they release the GIL)."""
    if workers not in _POOL:
        _POOL[workers] = ThreadPoolExecutor(workers, thread_name_prefix="imgclass-corrupt")
    return _POOL[workers]


def run_split(fn, total: int, *args, align: int = 2, min_part: int | None = None) -> None:
    """Call ``fn(lo, hi, *args)`` over [0, total) in as many parts as torch has threads, the first in the calling
    thread, the others in the thread pool (the kernels release the GIL); parts start at multiples of ``align``."""
    min_part = _min_part(3.0) if min_part is None else min_part  # default: units of ~3 ns (a value of a noise)
    parts = max(1, min(torch.get_num_threads(), total // max(1, min_part)))
    if threading.current_thread().name.startswith("imgclass-corrupt"):
        parts = 1  # already in a pool thread: waiting on the pool from inside it could deadlock
    if parts == 1:
        fn(0, total, *args)
        return
    step = -(-total // parts)
    step += (-step) % align
    bounds = [(lo, min(lo + step, total)) for lo in range(0, total, step)]
    futures = [pool(parts - 1).submit(fn, lo, hi, *args) for lo, hi in bounds[1:]]
    fn(*bounds[0], *args)  # the first part in the calling thread: one hand-off fewer
    for f in futures:
        f.result()


if HAVE_NUMBA:
    _G = np.uint64(GAMMA)
    _K1 = np.uint64(_M1)
    _K2 = np.uint64(_M2)
    _LOW = np.uint64(0xFFFFFFFF)
    _ONE = np.uint64(1)

    @njit(nogil=True, cache=True, inline="always")
    def _mix(z):
        z = (z ^ (z >> np.uint64(30))) * _K1
        z = (z ^ (z >> np.uint64(27))) * _K2
        return z ^ (z >> np.uint64(31))

    @njit(nogil=True, cache=True, inline="always")
    def _word(key, i):
        h = _mix(key + (np.uint64(i >> 1) + _ONE) * _G)
        if i & 1:
            return h >> np.uint64(32)
        return h & _LOW

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
                out[base + i] = _pick(x[base + i], _word(key, i), table)
                i += 1
            while i + 1 < end:  # both halves of one hash
                h = _mix(key + (np.uint64(i >> 1) + _ONE) * _G)
                out[base + i] = _pick(x[base + i], h & _LOW, table)
                out[base + i + 1] = _pick(x[base + i + 1], h >> np.uint64(32), table)
                i += 2
            if i < end:
                out[base + i] = _pick(x[base + i], _word(key, i), table)
            img += 1

    @njit(nogil=True, cache=True)
    def _impulse(lo, hi, x, out, keys, m, t_flip, t_salt):
        img = lo // m
        while img * m < hi:
            key = keys[img]
            base = img * m
            for i in range(max(lo, base) - base, min(hi, base + m) - base):
                w = np.int64(_word(key, i))
                flip = np.int64(w < t_flip)
                out[base + i] = np.uint8(np.int64(x[base + i]) * (1 - flip) + 255 * np.int64(w < t_salt))
            img += 1


if HAVE_NUMBA:
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


if HAVE_NUMBA:
    @njit(nogil=True, cache=True, inline="always")
    def _uniform(key, i):
        return np.float64(_mix(key + (np.uint64(i) + _ONE) * _G) >> np.uint64(11)) * 2.0 ** -53

    @njit(nogil=True, cache=True)
    def _uniforms(lo, hi, out, keys, m):
        img = lo // m
        while img * m < hi:
            key = keys[img]
            base = img * m
            for i in range(max(lo, base) - base, min(hi, base + m) - base):
                out[base + i] = _uniform(key, i)
            img += 1

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
                    dr[i, j] = sq / 4 + wibble * (-wibble + 2 * wibble * _uniform(key, k + i * a + j))
            k += a * a
            for i in range(a):
                i0 = i - 1 if i > 0 else a - 1
                for j in range(a):
                    j1 = j + 1 if j + 1 < a else 0
                    s_ = (dr[i, j] + dr[i0, j]) + (ul[i, j] + ul[i, j1])
                    lt[i, j] = s_ / 4 + wibble * (-wibble + 2 * wibble * _uniform(key, k + i * a + j))
            k += a * a
            for i in range(a):
                i1 = i + 1 if i + 1 < a else 0
                for j in range(a):
                    j0 = j - 1 if j > 0 else a - 1
                    s_ = (dr[i, j] + dr[i, j0]) + (ul[i, j] + ul[i1, j])
                    tt[i, j] = s_ / 4 + wibble * (-wibble + 2 * wibble * _uniform(key, k + i * a + j))
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
    """CPU kernel of weather.fog with its uniforms from ``uniforms``."""
    out = torch.empty_like(x)
    run_split(_fog, len(x), x.contiguous().numpy(), out.numpy(), keys.numpy().view(np.uint64), mapsize,
              float(strength), float(decay), align=1, min_part=1)
    return out


if HAVE_NUMBA:
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
                f[e] = low + (high - low) * _uniform(key, e)
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


def elastic(x: torch.Tensor, keys: torch.Tensor, alpha: float, low: float, high: float, ky: np.ndarray,
            iy: np.ndarray, kx: np.ndarray, ix: np.ndarray) -> torch.Tensor:
    """CPU kernel of the elastic transform with imagecorruptions' parameters; its uniforms from ``uniforms``."""
    out = torch.empty_like(x)
    run_split(_elastic, len(x), x.contiguous().numpy(), out.numpy(), keys.numpy().view(np.uint64), float(alpha),
              float(low), float(high), ky, iy, kx, ix, align=1, min_part=1)
    return out


if HAVE_NUMBA:
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
              min_part=_min_part(0.2 * planes[0].numel() * (len(ky_) + len(kx_) + 4)))
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
              min_part=_min_part(0.2 * planes[0].numel() * (len(ky_) + len(kx_) + 2)))
    return out.reshape(shape)


if HAVE_NUMBA:
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


if HAVE_NUMBA:
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


if HAVE_NUMBA:
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
              min_part=_min_part(0.3 * ow * max(t, 1)))
    return out


def _flat(x: torch.Tensor) -> np.ndarray:
    return x.contiguous().numpy().reshape(-1)


def sample_table(x: torch.Tensor, keys: torch.Tensor, table: np.ndarray) -> torch.Tensor:
    """CPU kernel: every value of the uint8 batch replaced by a draw from its level's row of an alias table
    (``noise.packed_table``: threshold << 8 | alias per column)."""
    out = torch.empty_like(x)
    m = x[0].numel()
    run_split(_sample_table, x.numel(), _flat(x), out.numpy().reshape(-1), keys.numpy().view(np.uint64), m, table)
    return out


def impulse(x: torch.Tensor, keys: torch.Tensor, t_flip: int, t_salt: int) -> torch.Tensor:
    """CPU kernel of the salt-and-pepper noise: word < t_salt -> 255, < t_flip -> 0, else unchanged."""
    out = torch.empty_like(x)
    run_split(_impulse, x.numel(), _flat(x), out.numpy().reshape(-1), keys.numpy().view(np.uint64),
              x[0].numel(), t_flip, t_salt)
    return out
