"""Blur corruptions: defocus, glass, motion, zoom, gaussian."""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np
import torch

from . import stream
from .base import (border_index, filter_matrix, gaussian_blur_uint8, interp_matrix, motion_blur, register,
                   to_uint8, to_uint8_255, zoom_coords)


def _float(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float32) / 255.0


@register("gaussian_blur")
def gaussian_blur(x: torch.Tensor, p: float, pset: str) -> torch.Tensor:
    return gaussian_blur_uint8(x, float(p))


# ---------------------------------------------------------------------------------------------------------
# defocus: correlation with an anti-aliased disk (OpenCV's filter2D, BORDER_REFLECT_101), done by FFT


def _cv_gaussian_1d(ksize: int, sigma: float) -> np.ndarray:
    """cv2.getGaussianKernel for sigma > 0, in float32 as GaussianBlur uses it on a float32 image."""
    i = np.arange(ksize, dtype=np.float64) - (ksize - 1) / 2
    k = np.exp(-(i ** 2) / (2 * sigma ** 2))
    return (k / k.sum()).astype(np.float32)


@lru_cache(maxsize=32)
def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """The reference's ``disk``: a normalized aliased disk, smoothed by cv2.GaussianBlur (3x3, or 5x5 beyond 8)."""
    if radius <= 8:
        grid, ksize = np.arange(-8, 8 + 1), 3
    else:
        grid, ksize = np.arange(-radius, radius + 1), 5
    xx, yy = np.meshgrid(grid, grid)
    d = np.array((xx ** 2 + yy ** 2) <= radius ** 2, dtype=np.float32)
    d /= np.sum(d)
    g = _cv_gaussian_1d(ksize, alias_blur)
    r = ksize // 2
    n = d.shape[0]
    idx = border_index(n, r, r, "mirror")
    rows = sum(g[t] * d[:, idx[t:t + n]] for t in range(ksize)).astype(np.float32)  # row filter first, as cv2
    return sum(g[t] * rows[idx[t:t + n], :] for t in range(ksize)).astype(np.float32)


@lru_cache(maxsize=32)
def _kernel_spectrum(kernel_key: tuple, k: int, lh: int, lw: int, device: str) -> torch.Tensor:
    """rfft2 of the flipped kernel centred on the origin of an (lh, lw) grid (correlation as a convolution)."""
    kernel = np.asarray(kernel_key, dtype=np.float32).reshape(k, k)
    r = k // 2
    kt = torch.zeros(lh, lw, dtype=torch.float32)
    kt[:k, :k] = torch.from_numpy(np.ascontiguousarray(kernel[::-1, ::-1]))
    return torch.fft.rfft2(torch.roll(kt, shifts=(-r, -r), dims=(0, 1))).to(device)


def correlate_fft(x: torch.Tensor, kernel: np.ndarray) -> torch.Tensor:
    """2-D correlation of float32 (N, C, H, W) with a square odd kernel, BORDER_REFLECT_101, through the FFT."""
    from scipy.fft import next_fast_len

    k = kernel.shape[0]
    r = k // 2
    h, w = x.shape[-2:]
    if r < min(h, w):
        xp = torch.nn.functional.pad(x, (r, r, r, r), mode="reflect")  # torch's reflect is BORDER_REFLECT_101
    else:  # several reflections
        xp = x.index_select(-2, torch.as_tensor(border_index(h, r, r, "mirror"), device=x.device))
        xp = xp.index_select(-1, torch.as_tensor(border_index(w, r, r, "mirror"), device=x.device))
    # a circular convolution over at least the padded size leaves the valid part untouched
    lh, lw = next_fast_len(h + 2 * r, real=True), next_fast_len(w + 2 * r, real=True)
    spec = _kernel_spectrum(tuple(kernel.astype(np.float32).ravel()), k, lh, lw, str(x.device))
    out = torch.fft.irfft2(torch.fft.rfft2(xp, s=(lh, lw)).mul_(spec), s=(lh, lw))
    return out[..., r:r + h, r:r + w]


@lru_cache(maxsize=32)
def _low_rank(kernel_key: tuple, h: int, w: int, device: str):
    """The disk as a sum of a few separable kernels (its SVD; the rank is 1 to 7), as filter matrices."""
    k = np.asarray(kernel_key, dtype=np.float64)
    n = int(round(np.sqrt(len(k))))
    u, s, vt = np.linalg.svd(k.reshape(n, n))
    r = max(1, int((s > 1e-7 * s[0]).sum()))  # the rest is below float32 resolution
    rows = torch.stack([filter_matrix(h, u[:, a] * s[a], "mirror", device=device) for a in range(r)])
    cols = torch.stack([filter_matrix(w, vt[a], "mirror", device=device) for a in range(r)])
    return rows, cols.transpose(1, 2).contiguous()


def correlate_disk(x: torch.Tensor, kernel: np.ndarray) -> torch.Tensor:
    """Correlation with the disk: low-rank matrix products on small images, the FFT on large ones."""
    h, w = x.shape[-2:]
    if h * w > 96 * 96:
        return correlate_fft(x, kernel)
    rows, cols = _low_rank(tuple(kernel.astype(np.float64).ravel()), h, w, str(x.device))
    return torch.matmul(rows, torch.matmul(x.unsqueeze(-3), cols)).sum(-3)


@register("defocus_blur")
def defocus_blur(x: torch.Tensor, p: tuple, pset: str) -> torch.Tensor:
    return to_uint8(correlate_disk(_float(x), disk_kernel(*p)))


# ---------------------------------------------------------------------------------------------------------
# glass blur


def _glass_draw(keys, x, p, pset):
    """One (dy, dx) per visited pixel and iteration, uniform over [-d, d) each (the reference's randint)."""
    sigma, d, iters = p
    n, _, h, w = x.shape
    lh, lw = max(h - 2 * d, 0), max(w - 2 * d, 0)
    u = stream.uniforms(keys, iters * lh * lw * 2, x.device).view(n, iters, lh, lw, 2)
    return {"offsets": (u * (2 * d)).to(torch.int64).clamp_max_(2 * d - 1) - d}


def glass_sources(offsets: torch.Tensor, h: int, w: int, d: int) -> torch.Tensor:
    """Flat source index of every pixel after the reference's "local shuffle" (N, H*W).

    The reference walks the pixels from the bottom-right, h = H-d .. d+1, w = W-d .. d+1, and does
    ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` on NumPy row views: the right-hand side is a view, so this is
    a copy ``x[h, w] = x[h + dy, w + dx]``, not a swap. A pixel is written once per pass, when it is visited, and
    reads either a pixel visited before it (its final value) or one not yet visited (its original value):
    the source of each pixel is found by pointer jumping instead of a 50,000-step Python loop.
    ``offsets``: (N, iterations, H-2d, W-2d, 2) of (dx, dy), indexed by (h - d - 1, w - d - 1).
    """
    n, iters = offsets.shape[:2]
    dev = offsets.device
    total = torch.arange(h * w, device=dev).expand(n, -1)
    hh = torch.arange(d + 1, h - d + 1, device=dev)
    ww = torch.arange(d + 1, w - d + 1, device=dev)
    if len(hh) == 0 or len(ww) == 0:
        return total.clone()
    pos = (hh[:, None] * w + ww[None, :]).flatten()  # loop positions (flat), raster order
    in_loop = torch.zeros(h * w, dtype=torch.bool, device=dev)
    in_loop[pos] = True
    for it in range(iters):
        dx = offsets[:, it, ..., 0].reshape(n, -1)
        dy = offsets[:, it, ..., 1].reshape(n, -1)
        q = pos[None, :] + dy * w + dx  # (N, L)
        term = torch.arange(h * w, device=dev).repeat(n, 1)
        term[:, pos] = q
        ptr = torch.arange(h * w, device=dev).repeat(n, 1)
        chained = in_loop[q] & (q > pos[None, :])  # q was visited earlier in this pass
        ptr[:, pos] = torch.where(chained, q, pos[None, :].expand_as(q))
        while True:  # ptr -> the first pixel of the chain that read an unvisited one
            nxt = ptr.gather(1, ptr)
            if torch.equal(nxt, ptr):
                break
            ptr = nxt
        src = term.gather(1, ptr)
        total = total.gather(1, src)
    return total


@register("glass_blur", draw=_glass_draw, chunk=1 << 22)
def glass_blur(x: torch.Tensor, p: tuple, pset: str, *, offsets: torch.Tensor) -> torch.Tensor:
    sigma, d, _ = p
    n, c, h, w = x.shape
    x8 = gaussian_blur_uint8(x, sigma)
    src = glass_sources(offsets, h, w, d)
    idx = (src[:, None, :] + (torch.arange(n * c, device=x.device) * (h * w)).view(n, c, 1)).reshape(-1)
    x8 = x8.reshape(-1).index_select(0, idx).view(n, c, h, w)
    return gaussian_blur_uint8(x8, sigma)


# ---------------------------------------------------------------------------------------------------------
# motion blur


def _angle_draw(keys, x, p, pset):
    return {"u": stream.uniforms(keys, 1, x.device)[:, 0]}


@register("motion_blur", draw=_angle_draw)
def motion_blur_(x: torch.Tensor, p: tuple, pset: str, *, u: torch.Tensor) -> torch.Tensor:
    """imagecorruptions' NumPy motion blur (angle uniform in [-45, 45)); for the CIFAR set it stands in for
    the ImageMagick MotionBlurImage Hendrycks used, whose kernel and offsets it reproduces."""
    radius, sigma = p
    angles = (-45.0 + 90.0 * u).tolist()
    return to_uint8_255(motion_blur(x.to(torch.float32), radius, sigma, angles))


# ---------------------------------------------------------------------------------------------------------
# zoom blur: the mean of the image and its clipped zooms, one sparse linear operator per (size, severity)


@lru_cache(maxsize=16)
def _zoom_operator(h: int, w: int, zooms: tuple[float, ...], trim: bool, device: str) -> torch.Tensor:
    """sum_z kron(A_z, B_z) over the zooms (output (i, j) reads input (k, l) with weight A_z[i, k] B_z[j, l]),
    built with scipy.sparse in double precision, as a torch CSR matrix (H*W, H*W)."""
    import scipy.sparse as sp

    parts = [sp.kron(sp.csr_matrix(interp_matrix(zoom_coords(h, z, trim=trim)[:h], h)),
                     sp.csr_matrix(interp_matrix(zoom_coords(w, z, trim=trim)[:w], w)), format="coo") for z in zooms]
    op = sp.coo_matrix((np.concatenate([p.data for p in parts]),
                        (np.concatenate([p.row for p in parts]), np.concatenate([p.col for p in parts]))),
                       shape=(h * w, h * w)).tocsr()  # duplicates summed
    op.sort_indices()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sparse tensors warn that they are "beta"
        return torch.sparse_csr_tensor(torch.from_numpy(op.indptr.astype(np.int64)),
                                       torch.from_numpy(op.indices.astype(np.int64)),
                                       torch.from_numpy(op.data.astype(np.float32)), (h * w, h * w)).to(device)


@register("zoom_blur")
def zoom_blur(x: torch.Tensor, p: np.ndarray, pset: str) -> torch.Tensor:
    n, c, h, w = x.shape
    op = _zoom_operator(h, w, tuple(float(z) for z in p), pset == "cifar10", str(x.device))
    xf = _float(x)
    cols = xf.permute(2, 3, 0, 1).reshape(h * w, n * c)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zoomed = (op @ cols).view(h, w, n, c).permute(2, 3, 0, 1)
    return to_uint8((xf + zoomed) / (len(p) + 1))
