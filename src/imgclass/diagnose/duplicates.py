"""Duplicate and train/test leakage search on uint8 image batches and feature rows: pure functions, no datasets.

- ``pixel_hashes``: a 128-bit digest of each image's decoded pixels and shape (exact duplicates).
- ``phash``: the perceptual hash of ``imagehash.phash`` (hash_size 8, highfreq_factor 4), bit for bit, batched:
  Pillow's RGB->L luma (its 16-bit fixed point, a numba kernel), Pillow's own LANCZOS resize to 32x32 (in threads; none
  for 32x32 images, as in Pillow), ``scipy.fftpack.dct`` along both axes of the whole batch, the top-left 8x8
  against its median. Bit k of the uint64 (from the most significant) is imagehash's flattened bit k, so
  ``int(str(imagehash.phash(im)), 16)`` is the same number.
- ``exact_groups``, ``near_pairs`` (Hamming distance of hashes, chunked; a numba kernel, numpy without it),
  ``semantic_pairs`` (cosine of feature rows, chunked torch matrix products), ``leakage_accuracy`` (accuracy with
  and without the test samples that leak from the training set, as in Barz & Denzler, "Do We Train on Test Data?
  Purging CIFAR of Near-Duplicates").

Indices returned are positions in the inputs; pairs come sorted by (i, j), whatever the ``chunk``.
"""

from __future__ import annotations

import hashlib
import math
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Sequence

import numpy as np
import torch

from ..errors import UsageError
from .properties import as_uint8_array

__all__ = ["pixel_hashes", "phash", "exact_groups", "near_pairs", "semantic_pairs", "leakage_accuracy",
           "DEFAULT_MAX_DISTANCE"]

try:  # a dependency of the toolkit; without it the same results in numpy (near_pairs ~9x slower)
    from numba import njit

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    HAVE_NUMBA = False

# Why 6 bits (of 64). phash distances are even in practice (a coefficient that crosses the median pushes another
# one back). Measured (tests/test_duplicates.py, benchmarks/diagnose_duplicates.py):
# - the 1,000 lossless CIFAR-10 test images against a changed copy of each: JPEG quality 75: median 0, p99 4,
#   max 4; brightness x1.1: median 0, p99 4, max 8 (x1.2: p99 6, max 14); 32->36->32 bicubic: median 0, max 4;
#   against the third-party JPEG copy of the same images (cifar10-jpeg): 0 (747), 2 (241), 4 (12);
# - different images: the closest of the 499,500 pairs among those 1,000 are at 12 (9 pairs), then 14 (18);
# - CIFAR-10 JPEG train x test (500 million pairs): 3 pairs at 0, 43 at 2, 74 at 4, 122 at 6, 270 at 8, 1,039 at
#   10. Looked at: up to 4 nearly all the same photograph, at 6 most of them, at 8 about half, at 10 few.
# 6 keeps every JPEG / resize copy and 99.9% of the brightened ones while staying clear of unrelated images; use
# 8 for recall (half its extra pairs are false), 4 for precision.
DEFAULT_MAX_DISTANCE = 6

_HASH = 8  # imagehash's hash_size: 8x8 = 64 bits
_SIZE = 32  # hash_size * highfreq_factor: the side of the resized grayscale image
_MAX_VALUES = 1 << 22  # pixels converted to gray per piece (uint32 temporaries: 16 MiB each)


_POOL: list[ThreadPoolExecutor] = []


def _pool() -> ThreadPoolExecutor:
    """Threads for numba kernels and Pillow calls (they release the GIL), as many as torch's."""
    if not _POOL:
        _POOL.append(ThreadPoolExecutor(max(1, torch.get_num_threads()), thread_name_prefix="imgclass-dup"))
    return _POOL[0]


# -- images in -------------------------------------------------------------------------------------------------


def _layout_of(shape: tuple[int, ...], layout: str | None, tensor: bool = False) -> str:
    """'chw' or 'hwc' from the shape of one image; where both axes could hold channels, a torch tensor is
    channels-first (the datasets' contract) and a numpy array needs ``layout``."""
    if layout is not None:
        if layout not in ("chw", "hwc"):
            raise UsageError(f"layout must be 'chw' or 'hwc', not {layout!r}")
        return layout
    first, last = shape[0] in (1, 3), shape[-1] in (1, 3)
    if first and not last:
        return "chw"
    if last and not first:
        return "hwc"
    if tensor:
        return "chw"
    raise UsageError(f"cannot tell the channel axis of images of shape {shape}: pass layout='chw' or 'hwc'")




def _pieces(images, layout: str | None) -> tuple[int, list[tuple[int, np.ndarray]]]:
    """(N, [(first index, (n, H, W, C) uint8 HWC view), ...]): a 4-D batch or an (N, H, W) gray batch in pieces of
    at most ``_MAX_VALUES`` pixels, or a sequence of single images of any sizes ((C, H, W), (H, W, C), (H, W))."""
    if isinstance(images, (np.ndarray, torch.Tensor)):
        tensor = isinstance(images, torch.Tensor)
        x = as_uint8_array(images)
        if x.ndim == 3:  # gray
            x, layout = x[..., None], "hwc"
        if x.ndim != 4:
            raise UsageError(f"a batch of images must be (N, C, H, W), (N, H, W, C) or (N, H, W), not {x.shape}")
        if _layout_of(x.shape[1:], layout, tensor) == "chw":
            x = x.transpose(0, 2, 3, 1)
        _check_channels(x.shape[-1])
        step = max(1, _MAX_VALUES // max(1, x.shape[1] * x.shape[2]))
        return len(x), [(s, x[s: s + step]) for s in range(0, len(x), step)]
    out = []
    for i, im in enumerate(images):
        tensor = isinstance(im, torch.Tensor)
        a = as_uint8_array(im)
        one = layout
        if a.ndim == 2:  # gray
            a, one = a[..., None], "hwc"
        if a.ndim != 3:
            raise UsageError(f"image {i} must be (C, H, W), (H, W, C) or (H, W), not {a.shape}")
        if _layout_of(a.shape, one, tensor) == "chw":
            a = a.transpose(1, 2, 0)
        _check_channels(a.shape[-1])
        out.append((i, a[None]))
    return len(out), out


def _check_channels(c: int) -> None:
    if c not in (1, 3):
        raise UsageError(f"images must have 1 (gray) or 3 (RGB) channels, not {c}")


# -- exact duplicates --------------------------------------------------------------------------------------------


def pixel_hashes(images: np.ndarray | torch.Tensor | Sequence, *, layout: str | None = None) -> np.ndarray:
    """(N, 2) uint64: a 128-bit BLAKE2b digest of each image's pixels and shape (H, W, C), whatever the layout;
    ``images`` as for :func:`phash`."""
    n, pieces = _pieces(images, layout)
    out = np.zeros((n, 2), dtype=np.uint64)
    for first, x in pieces:
        head = np.array(x.shape[1:], dtype="<i8").tobytes()
        for k, im in enumerate(x):
            h = hashlib.blake2b(head, digest_size=16)
            h.update(np.ascontiguousarray(im).data)
            out[first + k] = np.frombuffer(h.digest(), dtype="<u8")
    return out


def exact_groups(hashes: np.ndarray) -> list[np.ndarray]:
    """The groups (two or more, indices ascending, ordered by their first) of rows with equal hashes; ``hashes``
    is (N,) of any dtype or (N, k) (``pixel_hashes``)."""
    h = np.asarray(hashes)
    if h.dtype.kind == "V":
        h = h.view(np.uint8).reshape(len(h), -1)
    if h.ndim not in (1, 2):
        raise UsageError(f"hashes must be (N,) or (N, k), not {h.shape}")
    if len(h) == 0:
        return []
    _, inverse, counts = np.unique(h, axis=0 if h.ndim == 2 else None, return_inverse=True, return_counts=True)
    order = np.argsort(inverse.reshape(-1), kind="stable")
    groups = [g for g in np.split(order, np.cumsum(counts)[:-1]) if len(g) > 1]
    return sorted(groups, key=lambda g: int(g[0]))


# -- perceptual hash ---------------------------------------------------------------------------------------------


if HAVE_NUMBA:

    @njit(cache=True, nogil=True)
    def _luma_rgb(x, out):
        for a in range(x.shape[0]):
            for i in range(x.shape[1]):
                for j in range(x.shape[2]):
                    v = (np.uint32(x[a, i, j, 0]) * np.uint32(19595) + np.uint32(x[a, i, j, 1]) * np.uint32(38470)
                         + np.uint32(x[a, i, j, 2]) * np.uint32(7471) + np.uint32(0x8000))
                    out[a, i, j] = v >> np.uint32(16)


def _luma(x: np.ndarray) -> np.ndarray:
    """(n, H, W, C) uint8 -> (n, H, W) uint8: Pillow's ``convert('L')`` (ITU-R 601-2 in 16-bit fixed point)."""
    if x.shape[-1] == 1:
        return x[..., 0]
    if HAVE_NUMBA:
        out = np.empty(x.shape[:3], dtype=np.uint8)
        _luma_rgb(x, out)
        return out
    r, g, b = (x[..., c].astype(np.uint32) for c in range(3))  # pragma: no cover - numba is a dependency
    r *= 19595
    g *= 38470
    b *= 7471
    r += g
    r += b
    r += 0x8000
    r >>= 16
    return r.astype(np.uint8)


def _resize32(gray: np.ndarray) -> np.ndarray:
    """(n, H, W) uint8 -> (n, 32, 32) uint8: Pillow's own ``resize((32, 32), LANCZOS)`` of each image; 32x32
    images stay as they are (Pillow returns a copy for them)."""
    if gray.shape[1:] == (_SIZE, _SIZE):
        return gray
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(g)).resize((_SIZE, _SIZE), Image.LANCZOS))
                     for g in gray])


def _phash_gray(g: np.ndarray) -> np.ndarray:
    """(n, 32, 32) uint8 -> (n,) uint64: imagehash's ``scipy.fftpack.dct`` along both axes (batched: the same
    transforms, the same bits), the top-left 8x8 against its median."""
    import scipy.fftpack

    dct = scipy.fftpack.dct(scipy.fftpack.dct(g, axis=1), axis=2)  # uint8 in, as imagehash passes it
    low = dct[:, :_HASH, :_HASH].reshape(len(g), _HASH * _HASH)
    return np.packbits(low > np.median(low, axis=1)[:, None], axis=1).view(">u8")[:, 0].astype(np.uint64)


def phash(images: np.ndarray | torch.Tensor | Sequence, *, layout: str | None = None) -> np.ndarray:
    """(N,) uint64 perceptual hashes, the same bits as ``imagehash.phash`` of each image as a PIL image.

    ``images``: a uint8 batch (N, 3, H, W), (N, H, W, 3), (N, 1, H, W) or (N, H, W) (gray), numpy or torch, or a
    sequence of single images of any sizes; ``layout`` ('chw' / 'hwc') where the shape cannot tell (torch
    tensors are then channels-first).
    """
    n, pieces = _pieces(images, layout)
    small = np.empty((n, _SIZE, _SIZE), dtype=np.uint8)

    def work(first: int, x: np.ndarray) -> None:  # in threads: the luma kernel and Pillow release the GIL
        small[first: first + len(x)] = _resize32(_luma(x))

    for f in [_pool().submit(work, first, x) for first, x in pieces]:
        f.result()
    out = np.empty(n, dtype=np.uint64)
    for s in range(0, n, 4096):  # the DCTs in float64: 16 KiB an image
        out[s: s + 4096] = _phash_gray(small[s: s + 4096])
    return out


# -- near duplicates by Hamming distance ---------------------------------------------------------------------------


def _as_hashes(h, name: str) -> np.ndarray:
    a = np.asarray(h)
    if a.ndim != 1 or a.dtype.kind not in "iu" or a.dtype.itemsize != 8:
        raise UsageError(f"{name} must be a 1-D array of 64-bit hashes (phash), not {a.dtype} {a.shape}")
    return np.ascontiguousarray(a).view(np.uint64)


if HAVE_NUMBA:

    @njit(cache=True, nogil=True, inline="always")
    def _popcount(x):
        x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
        x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
        x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
        return (x * np.uint64(0x0101010101010101)) >> np.uint64(56)  # LLVM turns this into popcnt

    @njit(cache=True, nogil=True)
    def _near_rows(a, b, r0, r1, within, maxd, oi, oj, od):
        """Pairs (i, j) of rows r0..r1 of ``a`` against ``b`` (j > i when ``within``) with distance <= maxd,
        row-major into oi/oj/od while they have room; returns how many there are."""
        n = 0
        cap = oi.shape[0]
        m = b.shape[0]
        for i in range(r0, r1):
            x = a[i]
            j0 = i + 1 if within else 0
            for j in range(j0, m):
                d = _popcount(x ^ b[j])
                if d <= maxd:
                    if n < cap:
                        oi[n] = i
                        oj[n] = j
                        od[n] = d
                    n += 1
        return n


def _near_block_numba(a, b, r0, r1, within, maxd):
    cap = 4 * (r1 - r0) + 1024
    while True:
        oi, oj = np.empty(cap, np.int64), np.empty(cap, np.int64)
        od = np.empty(cap, np.uint8)
        n = _near_rows(a, b, r0, r1, within, np.uint64(maxd), oi, oj, od)
        if n <= cap:
            return oi[:n], oj[:n], od[:n]
        cap = n


def _near_block_numpy(a, b, r0, r1, within, maxd, chunk):
    parts = []
    for c0 in range(r0 if within else 0, len(b), chunk):
        d = np.bitwise_count(a[r0:r1, None] ^ b[None, c0: c0 + chunk])
        keep = d <= maxd
        if within:
            keep &= np.arange(r0, r1)[:, None] < np.arange(c0, c0 + d.shape[1])[None, :]
        i, j = np.nonzero(keep)
        parts.append((i + r0, j + c0, d[i, j].astype(np.uint8)))
    i, j, d = (np.concatenate(p) for p in zip(*parts)) if parts else (np.zeros(0, np.int64),) * 2 + (
        np.zeros(0, np.uint8),)
    order = np.lexsort((j, i))
    return i[order].astype(np.int64), j[order].astype(np.int64), d[order]


def near_pairs(h1: np.ndarray, h2: np.ndarray | None = None, *, max_distance: int = DEFAULT_MAX_DISTANCE,
               chunk: int = 2048) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, distance): every pair of 64-bit hashes within ``max_distance`` bits, i in ``h1`` and j in ``h2``
    (or within ``h1``, i < j, when ``h2`` is None), sorted by (i, j).

    ``chunk`` rows of ``h1`` are compared at a time (without numba, against ``chunk`` columns: memory about
    9 * chunk**2 bytes); the result does not depend on it.
    """
    a = _as_hashes(h1, "h1")
    within = h2 is None
    b = a if within else _as_hashes(h2, "h2")
    if not 0 <= int(max_distance) <= 64:
        raise UsageError(f"max_distance must be 0..64 bits, not {max_distance}")
    if int(chunk) < 1:
        raise UsageError(f"chunk must be >= 1, not {chunk}")
    maxd, chunk = int(max_distance), int(chunk)
    blocks = [(r0, min(r0 + chunk, len(a))) for r0 in range(0, len(a), chunk)]
    if HAVE_NUMBA:
        jobs = [_pool().submit(_near_block_numba, a, b, r0, r1, within, maxd) for r0, r1 in blocks]
        parts = [f.result() for f in jobs]  # blocks in row order: the pairs stay sorted by (i, j)
    else:  # pragma: no cover - numba is a dependency
        parts = [_near_block_numpy(a, b, r0, r1, within, maxd, chunk) for r0, r1 in blocks]
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.uint8)
    i, j, d = (np.concatenate(p) for p in zip(*parts))
    return i, j, d


# -- near duplicates by feature cosine ----------------------------------------------------------------------------


def _unit_rows(f, name: str) -> torch.Tensor:
    t = torch.as_tensor(f).detach().cpu()
    if t.ndim != 2:
        raise UsageError(f"{name} must be (N, D) feature rows, not {tuple(t.shape)}")
    return torch.nn.functional.normalize(t.to(torch.float32), dim=1)


def semantic_pairs(f1: np.ndarray | torch.Tensor, f2: np.ndarray | torch.Tensor | None = None, *,
                   min_cosine: float = 0.95, chunk: int = 4096,
                   top_k: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, cosine) of feature rows (L2-normalized here) with cosine >= ``min_cosine``, i in ``f1`` and j in
    ``f2`` (or within ``f1``, i < j, when ``f2`` is None), sorted by (i, j); float32 products over ``chunk`` x
    ``chunk`` blocks (memory about 4 * chunk**2 bytes).

    ``top_k``: keep for each row of ``f1`` only its ``top_k`` most similar rows (ties to the lower index); within
    ``f1`` a pair stays when either is among the other's ``top_k``.
    """
    a = _unit_rows(f1, "f1")
    within = f2 is None
    b = a if within else _unit_rows(f2, "f2")
    if a.shape[1] != b.shape[1]:
        raise UsageError(f"f1 and f2 must have as many features: {a.shape[1]} != {b.shape[1]}")
    if int(chunk) < 1:
        raise UsageError(f"chunk must be >= 1, not {chunk}")
    if top_k is not None and int(top_k) < 1:
        raise UsageError(f"top_k must be >= 1 or None, not {top_k}")
    chunk = int(chunk)
    thr = float(min_cosine)
    parts = []
    for r0 in range(0, len(a), chunk):
        r1 = min(r0 + chunk, len(a))
        rows = torch.arange(r0, r1)[:, None]
        cand = []
        # without top_k, within f1 only the blocks on or right of the diagonal hold pairs i < j
        for c0 in range(r0 if within and top_k is None else 0, len(b), chunk):
            s = torch.mm(a[r0:r1], b[c0: c0 + chunk].T)
            keep = s >= thr
            if within:
                cols = torch.arange(c0, c0 + s.shape[1])[None, :]
                keep &= (rows < cols) if top_k is None else (rows != cols)
            if top_k is not None and s.shape[1] > top_k:  # the block's top_k of each row, and all ties with them
                kth = torch.topk(s.masked_fill(~keep, -math.inf), int(top_k), dim=1).values[:, -1:]
                keep &= s >= kth
            i, j = keep.nonzero(as_tuple=True)
            cand.append((i.numpy() + r0, j.numpy() + c0, s[i, j].numpy()))
        if cand:
            i, j, v = (np.concatenate(c) for c in zip(*cand))
            order = np.lexsort((j, -v.astype(np.float64), i))
            i, j, v = i[order], j[order], v[order]
            if top_k is not None:  # rank within each row (sorted by cosine descending, then j)
                first = np.searchsorted(i, i, side="left")
                rank = np.arange(len(i)) - first
                i, j, v = i[rank < top_k], j[rank < top_k], v[rank < top_k]
            parts.append((i, j, v))
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    i, j, v = (np.concatenate(p) for p in zip(*parts))
    if within and top_k is not None:  # each pair once as (min, max), the value from its first occurrence
        i, j = np.minimum(i, j), np.maximum(i, j)
    order = np.lexsort((j, i))
    i, j, v = i[order].astype(np.int64), j[order].astype(np.int64), v[order].astype(np.float32)
    if within and top_k is not None and len(i):
        first = np.ones(len(i), dtype=bool)
        first[1:] = (i[1:] != i[:-1]) | (j[1:] != j[:-1])
        i, j, v = i[first], j[first], v[first]
    return i, j, v


# -- what leakage does to accuracy -------------------------------------------------------------------------------


def leakage_accuracy(correct: np.ndarray, leaked: np.ndarray) -> dict:
    """Accuracy on all test samples, on the leaked ones (duplicated in the training set, e.g. the distinct j of
    ``near_pairs(train, test)``) and on the rest (ciFAIR style); ``leaked`` is a boolean mask or indices.

    Returns ``n``, ``n_leaked``, ``accuracy``, ``accuracy_leaked``, ``accuracy_without`` (None where no sample) and
    ``gap`` = accuracy - accuracy_without (how much the leaked samples inflate the score).
    """
    c = np.asarray(correct)
    if c.ndim != 1:
        raise UsageError(f"correct must be a 1-D array of per-sample outcomes, not {c.shape}")
    c = c.astype(bool)
    lk = np.asarray(leaked)
    if lk.dtype == bool:
        if lk.shape != c.shape:
            raise UsageError(f"leaked mask has shape {lk.shape}, correct has {c.shape}")
        mask = lk
    else:
        if lk.size and (lk.dtype.kind not in "iu" or lk.min() < 0 or lk.max() >= len(c)):
            raise UsageError(f"leaked must be a boolean mask or indices in 0..{len(c) - 1}")
        mask = np.zeros(len(c), dtype=bool)
        mask[lk.astype(np.int64)] = True

    def acc(m: np.ndarray) -> float | None:
        return float(c[m].mean()) if m.any() else None

    everything = np.ones(len(c), dtype=bool)
    a, without = acc(everything), acc(~mask)
    return {"n": int(len(c)), "n_leaked": int(mask.sum()), "accuracy": a, "accuracy_leaked": acc(mask),
            "accuracy_without": without, "gap": None if a is None or without is None else a - without}
