"""Image-property checks of cleanvision 0.3.7 (dark, light, blurry, low_information, grayscale, odd_size,
odd_aspect_ratio) on batches of uint8 images: pure functions, no files, no datasets.

The definitions, score formulas and default thresholds are cleanvision's (``issue_managers/image_property.py`` and
``image_property_issue_manager.py``), computed the way it computes them from a PIL image:

- dark: the 99th percentile of per-pixel brightness ``sqrt(.241 R^2 + .691 G^2 + .068 B^2) / 255`` (``L / 255``
  for a grayscale image); light: 1 - its 5th percentile (``np.percentile``, linear).
- low_information: ``min(0.1 * entropy, 1)``, the entropy (bits) of PIL's histogram: 768 bins for RGB, 256 for L.
- blurry: on a copy whose longer side is at most 64 (PIL's bicubic ``resize`` to ``(w // r, h // r)``, its
  8-bit fixed-point arithmetic reproduced as exact float64 products of integers), converted to L (PIL's integer
  luma): ``e`` = the standard deviation of PIL's FIND_EDGES of it and ``s`` = the standard deviation of its 256-bin
  histogram; ``min(1 - exp(-e / 100) + (1 - exp(-s / 100) if that exceeds 0.18 else 0), 1)``.
- grayscale: 0 for a grayscale image, else 1. cleanvision asks PIL for the file's mode ("L"); images here arrive as
  3-channel arrays, so unless the caller says which files were grayscale (``grayscale=``), an image is grayscale
  when it has one channel or three equal ones (cleanvision's own rule for an image without a mode), and is then
  measured as the L image it is (entropy over 256 bins). A color-mode file whose channels are all equal (CIFAR-10
  has 14 in its first 1,000 test images) is grayscale here, not for cleanvision, and its entropy is lower by
  log2(3) (low_information by 0.158) than cleanvision's 768-bin entropy of it.
- odd_aspect_ratio: ``min(w / h, h / w)``.
- odd_size: relative to the whole set, like cleanvision: ``size = sqrt(w) sqrt(h)``, ``q1, q3`` its quartiles,
  the range ``[q1 - 3 iqr, q3 + 3 iqr]``; the score is 1 - the distance to the range's middle over its width
  (over the middle when the iqr is 0), clipped to [0, 1].

An image has an issue when its score is below the threshold (DEFAULT_THRESHOLDS); odd_size's default is 0.5, or
1.0 when the sizes' iqr is 0 (every image off the common size is then odd), as cleanvision decides it.

Pixel properties are per image, so a large set can be read in batches: ``image_properties`` of each batch,
concatenated (``concat_properties``), then ``property_scores`` of the whole, which is where the set-relative
odd_size is decided.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Mapping, Sequence

import numpy as np
import torch

from ..errors import UsageError

__all__ = ["ISSUE_TYPES", "DEFAULT_THRESHOLDS", "image_properties", "concat_properties", "property_scores",
           "property_issues"]

ISSUE_TYPES = ("dark", "light", "blurry", "low_information", "grayscale", "odd_size", "odd_aspect_ratio")
# cleanvision 0.3.7's ImagePropertyIssueManager.get_default_params; grayscale flags a score of 0; odd_size: see
# the module docstring (0.5 unless the iqr of sizes is 0)
DEFAULT_THRESHOLDS: dict[str, float] = {"dark": 0.32, "light": 0.05, "odd_aspect_ratio": 0.35,
                                        "low_information": 0.3, "blurry": 0.29, "grayscale": 0.5, "odd_size": 0.5}
RAW_KEYS = ("brightness_perc_5", "brightness_perc_99", "entropy", "blurriness", "blurriness_grayscale_std",
            "grayscale", "height", "width")

_MAX_RESOLUTION = 64  # cleanvision's MAX_RESOLUTION_FOR_BLURRY_DETECTION
_ENTROPY_FACTOR = 0.1  # low_information's normalizing_factor
_BLUR_FACTOR = 0.01  # blurry's normalizing_factor
_COLOR_THRESHOLD = 0.18  # blurry's color_threshold
_IQR_FACTOR = 3.0  # odd_size's iqr_factor
_BITS = 22  # Pillow's PRECISION_BITS for 8-bit resampling
_LOG2E = 1.4426950408889634  # M_LOG2E, as PIL's entropy multiplies by it
_MAX_PIXELS = 1 << 22  # pixels per piece (float64 brightness: 32 MiB)
_V = np.arange(256, dtype=np.int64)
_TERMS = (0.241 * (_V * _V), 0.691 * (_V * _V), 0.068 * (_V * _V))  # cleanvision's brightness terms of 0..255


# -- images in -------------------------------------------------------------------------------------------------


def as_uint8_array(x) -> np.ndarray:
    """A tensor or array of uint8 images as a numpy array (other dtypes are refused: images are uint8 here)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype != np.uint8:
        raise UsageError(f"images must be uint8, not {x.dtype}")
    return x


def _groups(images) -> tuple[int, list[tuple[np.ndarray, np.ndarray]]]:
    """(N, [(positions, (n, C, H, W) uint8)]): images of one shape together."""
    if isinstance(images, (np.ndarray, torch.Tensor)):
        x = as_uint8_array(images)
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise UsageError(f"images must be (N, 3, H, W) or (N, 1, H, W) uint8, not shape {tuple(x.shape)}")
        return len(x), ([(np.arange(len(x)), x)] if len(x) else [])
    items = [as_uint8_array(im) for im in images]
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, im in enumerate(items):
        if im.ndim != 3 or im.shape[0] not in (1, 3):
            raise UsageError(f"image {i} must be (3, H, W) or (1, H, W) uint8, not shape {tuple(im.shape)}")
        by_shape.setdefault(im.shape, []).append(i)
    return len(items), [(np.array(ix), np.stack([items[i] for i in ix])) for ix in by_shape.values()]


# -- Pillow's arithmetic ---------------------------------------------------------------------------------------


def _bicubic(x: np.ndarray) -> np.ndarray:
    """Pillow's bicubic_filter (a = -0.5)."""
    x = np.abs(x)
    a = -0.5
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@lru_cache(maxsize=256)
def _resize_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's 8-bit bicubic resampling along one axis (precompute_coeffs and normalize_coeffs_8bpc, box
    (0, in_size)), the same double arithmetic vectorized over the outputs: (out, ksize) input indices and integer
    weights (0 past each output's window)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    center = (np.arange(out_size) + 0.5) * scale
    xmin = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    n = np.minimum(np.trunc(center + support + 0.5), in_size).astype(np.int64) - xmin
    x = np.arange(ksize)[None, :]
    valid = x < n[:, None]
    w = np.where(valid, _bicubic(((x + xmin[:, None]) - center[:, None] + 0.5) * (1.0 / filterscale)), 0.0)
    ww = np.cumsum(w, axis=1)[:, -1:]  # C sums in order
    w = np.divide(w, ww, out=w.copy(), where=ww != 0.0)
    k = np.where(w < 0, np.trunc(-0.5 + w * (1 << _BITS)), np.trunc(0.5 + w * (1 << _BITS)))
    idx = np.minimum(xmin[:, None] + x, in_size - 1)
    for a in (idx, k):
        a.flags.writeable = False
    return idx, k


def _resample(x: np.ndarray, taps: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """One pass along the last axis: (sum of pixel * weight + 2^21) >> 22, clipped to 0..255. The products and
    sums are integers below 2^53, so float64 holds them exactly, in any order."""
    idx, k = taps
    t = np.einsum("...ok,ok->...o", x[..., idx], k)
    t += 1 << (_BITS - 1)
    return np.clip(np.floor(t * (1.0 / (1 << _BITS))), 0, 255)


def _resize(x: np.ndarray, out_h: int, out_w: int, *, vertical_first: bool | None = None) -> np.ndarray:
    """Pillow's ``Image.resize((out_w, out_h))`` (bicubic) of (n, C, H, W) uint8, each pass rounded to uint8, in
    the installed Pillow's order of passes. Returns float64 holding integers."""
    h, w = x.shape[-2:]
    if vertical_first is None:
        vertical_first = _pillow_tall_rule() and h - out_h > 0 and h - out_h > (w - out_w) * 2
    y = x.astype(np.float64)
    for axis in ("v", "h") if vertical_first else ("h", "v"):
        if axis == "h" and out_w != w:
            y = _resample(y, _resize_taps(w, out_w))
        elif axis == "v" and out_h != h:
            y = _resample(y.swapaxes(-1, -2), _resize_taps(h, out_h)).swapaxes(-1, -2)
    return y


@lru_cache(maxsize=None)
def _pillow_tall_rule() -> bool:
    """Whether the installed Pillow runs the vertical pass first when the height shrinks more than twice as much
    as the width (Pillow 13 does; older releases always ran the horizontal pass first): asked of Pillow itself,
    on an image where the two orders differ."""
    from PIL import Image

    x = np.random.default_rng(0).integers(0, 256, size=(1, 1, 40, 12), dtype=np.uint8)
    got = np.asarray(Image.fromarray(x[0, 0]).resize((10, 9), Image.Resampling.BICUBIC))
    return bool(np.array_equal(got, _resize(x, 9, 10, vertical_first=True)[0, 0]))


def _luma(x: np.ndarray) -> np.ndarray:
    """Pillow's RGB -> L: (19595 R + 38470 G + 7471 B + 0x8000) >> 16, of (n, 3, H, W) integer values."""
    y = x.astype(np.int64)
    return (y[:, 0] * 19595 + y[:, 1] * 38470 + y[:, 2] * 7471 + 0x8000) >> 16


def _find_edges(g: np.ndarray) -> np.ndarray:
    """PIL's FIND_EDGES (8 x centre - the 8 neighbours, clipped to 0..255) of (n, H, W) ints; the border pixels
    are copied, as PIL's 3x3 filter does."""
    out = g.copy()
    if g.shape[1] < 3 or g.shape[2] < 3:
        return out
    c = g[:, 1:-1, 1:-1]
    s = sum(g[:, 1 + dy:g.shape[1] - 1 + dy, 1 + dx:g.shape[2] - 1 + dx]
            for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx)
    out[:, 1:-1, 1:-1] = np.clip(8 * c - s, 0, 255)
    return out


def _histograms(x: np.ndarray) -> np.ndarray:
    """(n, 256 * C) histograms of (n, C, ...) or (n, ...) values in 0..255, channel after channel (PIL's order)."""
    rows = x.reshape(-1, int(np.prod(x.shape[2:])) if x.ndim > 3 else int(np.prod(x.shape[1:])))
    if rows.dtype != np.uint8:
        rows = rows.astype(np.int64)
    return np.stack([np.bincount(r, minlength=256) for r in rows]).reshape(len(x), -1)


def _entropy(hist: np.ndarray) -> np.ndarray:
    """PIL's ``Image.entropy``: -sum p log(p) log2(e) over the non-empty bins."""
    p = hist / hist.sum(axis=1, keepdims=True).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(p != 0.0, p * np.log(p) * _LOG2E, 0.0)
    return -t.sum(axis=1)


def _stat_std(hist: np.ndarray) -> np.ndarray:
    """sqrt of ``ImageStat.Stat(...).var[0]`` from (n, 256) histograms (integer sums, then Python's float)."""
    j = np.arange(256, dtype=np.int64)
    count = hist.sum(axis=1)
    s = hist @ j
    s2 = hist @ (j * j)
    return np.sqrt((s2 - (s * s) / count) / count)


# -- the properties --------------------------------------------------------------------------------------------


def _piece(x: np.ndarray, given: np.ndarray | None) -> dict[str, np.ndarray]:
    """Raw properties of (n, C, H, W) uint8 images of one size; ``given``: which are grayscale files, or None."""
    n, c, h, w = x.shape
    gray = np.ones(n, dtype=bool) if c == 1 else ((x[:, 0] == x[:, 1]) & (x[:, 1] == x[:, 2])).reshape(n, -1).all(1)
    if given is not None:
        if (given & ~gray).any():
            raise UsageError("grayscale marks an image whose channels differ: a grayscale file decodes to equal "
                             "channels")
        if (~given & gray).any() and c == 1:
            raise UsageError("an image with one channel is grayscale: grayscale cannot mark it False")
        gray = given
    # brightness percentiles
    if c == 3:  # sqrt(0.241 * (r * r) + 0.691 * (g * g) + 0.068 * (b * b)) / 255, its terms from tables
        r, g, b = (x[:, i].reshape(n, -1) for i in range(3))
        bright = np.sqrt(_TERMS[0][r] + _TERMS[1][g] + _TERMS[2][b]) / 255
        if gray.any():
            bright[gray] = x[gray, 0].reshape(int(gray.sum()), -1) / 255.0
    else:
        bright = x[:, 0].reshape(n, -1) / 255.0
    p5, p99 = np.percentile(bright, [5, 99], axis=1)
    # entropy of PIL's histogram (bands x 256 bins)
    hist = _histograms(x)  # PIL's histogram: R's 256 bins, then G's, then B's
    entropy = _entropy(hist)
    if c == 3 and gray.any():
        entropy[gray] = _entropy(hist[gray, :256])
    # blurriness on a copy at most 64 pixels on its longer side, in L
    ratio = max(w, h) / _MAX_RESOLUTION
    small = x if ratio <= 1 else _resize(x, max(int(h // ratio), 1), max(int(w // ratio), 1))
    lum = small[:, 0].astype(np.int64) if c == 1 else _luma(small)
    if c == 3 and gray.any():
        lum[gray] = small[gray, 0]
    ghist = _histograms(lum)
    return {"brightness_perc_5": p5, "brightness_perc_99": p99, "entropy": entropy,
            "blurriness": _stat_std(_histograms(_find_edges(lum))),
            "blurriness_grayscale_std": np.std(ghist, axis=1), "grayscale": gray,
            "height": np.full(n, h, dtype=np.int64), "width": np.full(n, w, dtype=np.int64)}


def image_properties(images, *, grayscale=None) -> dict[str, np.ndarray]:
    """Per-image raw properties (cleanvision's names) of uint8 images: an (N, 3, H, W) array or tensor, or a
    sequence of (3, H, W) ones of any sizes (one-channel images are grayscale).

    ``grayscale``: (N,) bool, which images are grayscale files (PIL mode "L"), where the caller knows; by default
    those with one channel or three equal ones. It decides the grayscale score and how the image is measured (L:
    entropy over 256 bins, brightness L / 255; RGB: 768 bins, the weighted formula)."""
    n, groups = _groups(images)
    if grayscale is not None:
        grayscale = np.asarray(grayscale.detach().cpu() if isinstance(grayscale, torch.Tensor) else grayscale)
        if grayscale.shape != (n,) or grayscale.dtype != bool:
            raise UsageError(f"grayscale must be ({n},) bool, not {grayscale.dtype} of shape {grayscale.shape}")
    out = {k: np.zeros(n, dtype=bool if k == "grayscale" else np.int64 if k in ("height", "width") else np.float64)
           for k in RAW_KEYS}
    for pos, x in groups:
        step = max(1, _MAX_PIXELS // (x.shape[2] * x.shape[3]))
        for s in range(0, len(x), step):
            part = pos[s:s + step]
            for k, v in _piece(x[s:s + step], None if grayscale is None else grayscale[part]).items():
                out[k][part] = v
    return out


def concat_properties(parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``image_properties`` of consecutive batches as one."""
    if not parts:
        return image_properties([])
    return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in RAW_KEYS}


def size_scores(size: np.ndarray) -> tuple[np.ndarray, float]:
    """cleanvision's SizeProperty.get_scores and the threshold it then uses."""
    if len(size) == 0:
        return np.zeros(0), 0.5
    q1, q3 = np.percentile(size, [25, 75])
    iqr = q3 - q1
    lo, hi = q1 - _IQR_FACTOR * iqr, q3 + _IQR_FACTOR * iqr
    mid, gap = (lo + hi) / 2, hi - lo
    norm, threshold = (gap, 0.5) if gap > 0 else (mid, 1.0)
    return 1 - np.clip(np.absolute(size - mid) / norm, 0, 1), threshold


def property_scores(images, *, sizes=None, grayscale=None) -> dict[str, np.ndarray]:
    """cleanvision's issue scores (in [0, 1], low = has the issue) of each image, one array per ISSUE_TYPES name,
    plus ``size`` (``sqrt(w) sqrt(h)``, what odd_size is relative to).

    ``images``: uint8 images as ``image_properties`` takes them, or the dict it returns (concatenated over
    batches). ``sizes``: (N, 2) (height, width) of the original images where the pixels given are resized; the
    pixel properties are measured on the pixels given, odd_size and odd_aspect_ratio on ``sizes``. ``grayscale``:
    as ``image_properties`` takes it."""
    if isinstance(images, Mapping):
        if grayscale is not None:
            raise UsageError("grayscale is for images: give it to image_properties")
        raw = images
    else:
        raw = image_properties(images, grayscale=grayscale)
    missing = [k for k in RAW_KEYS if k not in raw]
    if missing:
        raise UsageError(f"properties lack {', '.join(missing)}: pass images or image_properties(images)")
    n = len(raw["entropy"])
    if sizes is not None:
        hw = np.asarray(sizes.detach().cpu() if isinstance(sizes, torch.Tensor) else sizes, dtype=np.float64)
        if hw.shape != (n, 2) or not (hw >= 1).all():
            raise UsageError(f"sizes must be ({n}, 2) positive (height, width), not shape {hw.shape}")
        h, w = hw[:, 0], hw[:, 1]
    else:
        h, w = np.asarray(raw["height"], dtype=np.float64), np.asarray(raw["width"], dtype=np.float64)
    blur = 1 - np.exp(-1 * np.asarray(raw["blurriness"], dtype=np.float64) * _BLUR_FACTOR)
    color = 1 - np.exp(-1 * np.asarray(raw["blurriness_grayscale_std"], dtype=np.float64) * _BLUR_FACTOR)
    color[color <= _COLOR_THRESHOLD] = 0
    size = np.sqrt(w) * np.sqrt(h)
    return {
        "dark": np.asarray(raw["brightness_perc_99"], dtype=np.float64).copy(),
        "light": 1 - np.asarray(raw["brightness_perc_5"], dtype=np.float64),
        "blurry": np.minimum(blur + color, 1),
        "low_information": np.minimum(_ENTROPY_FACTOR * np.asarray(raw["entropy"], dtype=np.float64), 1),
        "grayscale": np.where(np.asarray(raw["grayscale"], dtype=bool), 0.0, 1.0),
        "odd_size": size_scores(size)[0],
        "odd_aspect_ratio": np.minimum(w / h, h / w),
        "size": size,
    }


def property_issues(scores: Mapping[str, np.ndarray], *,
                    thresholds: Mapping[str, float] | None = None) -> dict[str, np.ndarray]:
    """Boolean issue flags (``score < threshold``) for the ISSUE_TYPES in ``scores``; ``thresholds`` overrides
    DEFAULT_THRESHOLDS by name. odd_size's default follows cleanvision (0.5, or 1.0 when the iqr of ``size`` is 0)
    when ``scores`` carries ``size``."""
    thresholds = dict(thresholds or {})
    unknown = sorted(set(thresholds) - set(ISSUE_TYPES))
    if unknown:
        raise UsageError(f"no image property {', '.join(unknown)}; properties: {', '.join(ISSUE_TYPES)}")
    out = {}
    for name in ISSUE_TYPES:
        if name not in scores:
            continue
        t = thresholds.get(name)
        if t is None:
            t = DEFAULT_THRESHOLDS[name]
            if name == "odd_size" and "size" in scores:
                t = size_scores(np.asarray(scores["size"], dtype=np.float64))[1]
        out[name] = np.asarray(scores[name], dtype=np.float64) < t
    return out
