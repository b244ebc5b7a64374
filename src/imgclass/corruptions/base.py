"""Shared machinery of the corruptions: the registry, per-image keys, exact filters.

Every corruption is an ``apply(x, p, pset, **draws)`` on a uint8 batch (N, 3, H, W) plus, for the random ones, a
``draw(keys, x, p, pset)`` that makes the random variables from each image's key (``stream.words``,
``uniforms``). Keeping the two apart lets the tests feed the reference implementation the very same draws.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np
import torch

from ..registry import Registry
from . import blur_kernels, kernels

__all__ = ["Corruption", "REGISTRY", "register", "keys", "to_uint8", "to_uint8_255", "gaussian_kernel1d", "border_index",
           "filter_matrix", "separable_filter", "motion_blur", "motion_blur_tensor", "zoom_coords", "interp_matrix",
           "pil_box_coefficients", "pil_nearest_index"]


@dataclass(frozen=True)
class Corruption:
    name: str
    apply: Callable[..., torch.Tensor]
    draw: Callable[..., dict] | None = None  # None: deterministic
    # values (N*C*H*W) corrupted at a time on the CPU: pieces that stay in the cache are several times faster
    # than whole batches (fresh multi-megabyte temporaries page-fault); loop-heavy corruptions take more
    chunk: int = 1 << 20
    # the CPU kernel: fused(x, keys, p, pset) -> corrupted batch, the same values as apply(draw(...))
    fused: Callable[..., torch.Tensor] | None = None


REGISTRY: Registry[Corruption] = Registry("corruption")


def register(name: str, draw: Callable[..., dict] | None = None, *, chunk: int = 1 << 20,
             fused: Callable[..., torch.Tensor] | None = None):
    def deco(fn):
        REGISTRY[name] = Corruption(name, fn, draw, chunk, fused)
        return fn

    return deco


def _key(seed: int, name: str, severity: int, sample_id: str | int) -> int:
    tag = f"i:{sample_id}" if isinstance(sample_id, (int, np.integer)) else f"s:{sample_id}"
    h = hashlib.blake2b(f"{int(seed)}|{name}|{int(severity)}|{tag}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def keys(seed: int, name: str, severity: int, sample_ids: Sequence[str | int]) -> torch.Tensor:
    """The 63-bit key of each image (int64, on the CPU): the seed of its counter-based random words; ``_key``'s
    digests, the common prefix hashed once."""
    base = hashlib.blake2b(f"{int(seed)}|{name}|{int(severity)}|".encode(), digest_size=8)
    out = []
    for sid in sample_ids:
        h = base.copy()
        h.update((f"i:{sid}" if isinstance(sid, (int, np.integer)) else f"s:{sid}").encode())
        out.append(int.from_bytes(h.digest(), "little") & ((1 << 63) - 1))
    return torch.tensor(out, dtype=torch.int64)


def to_uint8(y: torch.Tensor) -> torch.Tensor:
    """``np.uint8(np.clip(y, 0, 1) * 255)``: clip, scale, truncate (the reference truncates, it does not round)."""
    return (y.clamp(0, 1) * 255).to(torch.uint8)


def to_uint8_255(y: torch.Tensor) -> torch.Tensor:
    """``np.uint8(np.clip(y, 0, 255))`` for results already in 0..255 units."""
    return y.clamp(0, 255).to(torch.uint8)


# ---------------------------------------------------------------------------------------------------------
# linear filters with exact border rules, as dense (n x n) matrices: fast batched matmuls on any device


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """scipy.ndimage's Gaussian weights (radius ``int(truncate * sigma + 0.5)``, normalized to sum 1)."""
    r = int(truncate * float(sigma) + 0.5)
    x = np.arange(-r, r + 1, dtype=np.float64)
    phi = np.exp(-0.5 / float(sigma) ** 2 * x ** 2)
    return phi / phi.sum()


def border_index(n: int, before: int, after: int, mode: str) -> np.ndarray:
    """Source index of each position of a signal of length n padded by (before, after).

    Modes as scipy.ndimage names them: 'nearest' (a a a | a b c d | d d d), 'reflect' (b a | a b c d | d c),
    'mirror' (c b | a b c d | c b; OpenCV's BORDER_REFLECT_101).
    """
    i = np.arange(-before, n + after)
    if mode == "nearest" or n == 1:
        return np.clip(i, 0, n - 1)
    if mode == "reflect":
        period = 2 * n
        j = np.mod(i, period)
        return np.where(j < n, j, period - 1 - j)
    if mode == "mirror":
        period = 2 * n - 2
        j = np.mod(i, period)
        return np.where(j < n, j, period - j)
    raise ValueError(f"unknown border mode {mode!r}")


@lru_cache(maxsize=256)
def _filter_matrix_np(n: int, kernel: tuple[float, ...], mode: str) -> np.ndarray:
    k = np.asarray(kernel, dtype=np.float64)
    r = (len(k) - 1) // 2
    src = border_index(n, r, len(k) - 1 - r, mode)
    m = np.zeros((n, n), dtype=np.float64)
    rows = np.arange(n)
    for t, w in enumerate(k):  # out[i] = sum_t k[t] * x[src[i + t]]  (correlation, scipy's origin 0)
        np.add.at(m, (rows, src[rows + t]), w)
    return m


def filter_matrix(n: int, kernel: np.ndarray, mode: str, *, dtype=torch.float32, device=None) -> torch.Tensor:
    return torch.as_tensor(_filter_matrix_np(n, tuple(float(v) for v in kernel), mode), dtype=dtype, device=device)


def separable_filter(x: torch.Tensor, k_rows: np.ndarray | None, k_cols: np.ndarray | None, mode: str) -> torch.Tensor:
    """Correlate the last two axes of ``x`` with 1-D kernels (None: leave that axis), scipy border ``mode``.

    Dense (n x n) filter matrices and matmuls (any device), or on the CPU the direct correlation of
    ``blur_kernels`` (the same sums, but for duplicate border taps, which the matrix adds first: equal to
    rounding)."""
    h, w = x.shape[-2:]
    if x.device.type == "cpu" and kernels.HAVE_NUMBA and x.dtype in (torch.float32, torch.float64):
        iy = border_index(h, (len(k_rows) - 1) // 2, len(k_rows) // 2, mode) if k_rows is not None else None
        ix = border_index(w, (len(k_cols) - 1) // 2, len(k_cols) // 2, mode) if k_cols is not None else None
        return blur_kernels.separable(x, k_rows, iy, k_cols, ix)
    if k_rows is not None:
        x = torch.matmul(filter_matrix(h, k_rows, mode, dtype=x.dtype, device=x.device), x)
    if k_cols is not None:
        x = torch.matmul(x, filter_matrix(w, k_cols, mode, dtype=x.dtype, device=x.device).T)
    return x


def gaussian_blur_uint8(x: torch.Tensor, sigma: float | tuple[float, float], *, mode: str = "nearest",
                        truncate: float = 4.0) -> torch.Tensor:
    """``to_uint8(gaussian_filter(x / 255, sigma))`` of uint8 images, float32 (one fused kernel on the CPU)."""
    if x.device.type == "cpu" and kernels.HAVE_NUMBA:
        h, w = x.shape[-2:]
        sy, sx = (sigma, sigma) if np.isscalar(sigma) else sigma
        ky = gaussian_kernel1d(sy, truncate) if sy > 0 else None
        kx = gaussian_kernel1d(sx, truncate) if sx > 0 else None
        iy = border_index(h, (len(ky) - 1) // 2, len(ky) // 2, mode) if ky is not None else None
        ix = border_index(w, (len(kx) - 1) // 2, len(kx) // 2, mode) if kx is not None else None
        return blur_kernels.separable_u8(x, ky, iy, kx, ix)
    return to_uint8(gaussian_filter(x.to(torch.float32) / 255.0, sigma, mode=mode, truncate=truncate))


def gaussian_filter(x: torch.Tensor, sigma: float | tuple[float, float], *, mode: str = "nearest",
                    truncate: float = 4.0) -> torch.Tensor:
    """``skimage.filters.gaussian`` / ``scipy.ndimage.gaussian_filter`` over the last two axes."""
    sy, sx = (sigma, sigma) if np.isscalar(sigma) else sigma
    ky = gaussian_kernel1d(sy, truncate) if sy > 0 else None
    kx = gaussian_kernel1d(sx, truncate) if sx > 0 else None
    return separable_filter(x, ky, kx, mode)


# ---------------------------------------------------------------------------------------------------------
# Pillow's BOX resize coefficients and NEAREST indices (the pixelate corruption and its kernel)

PIL_PRECISION_BITS = 32 - 8 - 2


@lru_cache(maxsize=64)
def pil_box_coefficients(in_size: int, out_size: int) -> np.ndarray:
    """Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` for the BOX filter, as an (out, in) matrix."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    m = np.zeros((out_size, in_size), dtype=np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        ss = 1.0 / filterscale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        k = np.array([1.0 if -0.5 < (x + xmin - center + 0.5) * ss <= 0.5 else 0.0 for x in range(xmax - xmin)])
        if k.sum() != 0:
            k = k / k.sum()
        m[xx, xmin:xmax] = np.where(k < 0, np.trunc(-0.5 + k * (1 << PIL_PRECISION_BITS)),
                                    np.trunc(0.5 + k * (1 << PIL_PRECISION_BITS)))
    return m


@lru_cache(maxsize=64)
def pil_nearest_index(in_size: int, out_size: int) -> np.ndarray:
    """The source index of each output pixel of Pillow's NEAREST resize (asked from Pillow itself)."""
    from PIL import Image

    ramp = Image.fromarray(np.arange(in_size, dtype=np.int32)[None, :])
    return np.asarray(ramp.resize((out_size, 1), Image.NEAREST))[0].astype(np.int64)


# ---------------------------------------------------------------------------------------------------------
# the motion blur of imagecorruptions (its numpy replacement of ImageMagick's MotionBlurImage)


def motion_taps(radius: int, sigma: float, angle: float, h: int, w: int) -> list[tuple[int, int, float]]:
    """(dy, dx, weight) of each shifted copy, exactly as imagecorruptions' ``_motion_blur`` computes them: the
    same float64 operations, element by element (the angle's sine and cosine as scalars, the walk as arrays)."""
    width = radius * 2 + 1
    k = np.exp(-np.arange(width) ** 2 / (2 * sigma ** 2)) / (np.sqrt(2 * np.pi) * sigma)
    k = k / np.sum(k)
    point = (width * np.sin(np.deg2rad(angle)), width * np.cos(np.deg2rad(angle)))
    hyp = math.hypot(point[0], point[1])
    i = np.arange(width, dtype=np.float64)
    dy = -np.ceil(((i * point[0]) / hyp) - 0.5)
    dx = -np.ceil(((i * point[1]) / hyp) - 0.5)
    out = np.flatnonzero((np.abs(dy) >= h) | (np.abs(dx) >= w))  # the reference stops where the motion leaves
    n = int(out[0]) if len(out) else width
    return list(zip(dy[:n].astype(int).tolist(), dx[:n].astype(int).tolist(), k[:n].tolist()))


def motion_blur(x: torch.Tensor, radius: int, sigma: float, angles: Sequence[float],
                crop: tuple[int, int] | None = None, extent: tuple[int, int] | None = None) -> torch.Tensor:
    """Per-image motion blur of float (N, C, H, W): the sum of edge-clamped shifted copies
    ``k * x[h - dy, w - dx]``, in tap order, in x's float type; ``crop``: only the top left (OH, OW) of it (the snow blurs
    a zoomed layer, then keeps the image's size); ``extent``: the size of the image ``x`` is the top left of, for
    the reference's stop rule (the snow passes only the part of its layer the crop reads). A numba kernel on the
    CPU, ``motion_blur_tensor`` elsewhere (the same products and sums in the same order: bit for bit the same)."""
    n, c, h, w = x.shape
    taps = [motion_taps(radius, sigma, float(a), *(extent or (h, w))) for a in angles]
    crop = (min(crop[0], h), min(crop[1], w)) if crop else None
    if x.device.type == "cpu" and kernels.HAVE_NUMBA:
        return blur_kernels.motion_blur(x, taps, crop)
    return motion_blur_tensor(x, taps, crop)


def motion_blur_tensor(x: torch.Tensor, taps: list[list[tuple[int, int, float]]],
                       crop: tuple[int, int] | None = None) -> torch.Tensor:
    n, c, h, w = x.shape
    oh, ow = crop or (h, w)
    pad = max((max(abs(dy), abs(dx)) for t in taps for dy, dx, _ in t), default=0)
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate") if pad else x
    out = x.new_zeros((n, c, oh, ow))
    for i, t in enumerate(taps):  # a product, then a sum, per tap and image, on views of the padded copy
        for dy, dx, k in t:
            out[i].add_(xp[i, :, pad - dy:pad - dy + oh, pad - dx:pad - dx + ow] * torch.tensor(k, dtype=x.dtype))
    return out


# ---------------------------------------------------------------------------------------------------------
# scipy.ndimage.zoom(order=1) of a centre crop: the "clipped zoom" of the zoom blur and the snow


def zoom_coords(n: int, z: float, *, trim: bool) -> np.ndarray:
    """Input coordinate of every output index of the clipped zoom along one axis.

    The centre ``ceil(n / z)`` pixels are zoomed by scipy's rule (output ``round(ch * z)``, corners aligned);
    imagecorruptions keeps all of them (``trim=False``, callers take the first n), Hendrycks' CIFAR generator
    keeps the centre n (``trim=True``).
    """
    ch = int(np.ceil(n / float(z)))
    top = (n - ch) // 2
    out = int(round(ch * z))
    scale = (ch - 1) / (out - 1) if out > 1 else 0.0
    coords = top + np.arange(out, dtype=np.float64) * scale
    if trim:
        start = (out - n) // 2
        coords = coords[start:start + n]
    return coords


def interp_matrix(coords: np.ndarray, n_in: int) -> np.ndarray:
    """Rows of linear-interpolation weights at the given input coordinates (all inside [0, n_in - 1])."""
    i0 = np.floor(coords).astype(np.int64)
    f = coords - i0
    i0 = np.clip(i0, 0, n_in - 1)
    m = np.zeros((len(coords), n_in), dtype=np.float64)
    rows = np.arange(len(coords))
    np.add.at(m, (rows, i0), 1.0 - f)
    i1 = i0 + 1
    ok = i1 < n_in
    np.add.at(m, (rows[ok], i1[ok]), f[ok])
    return m
