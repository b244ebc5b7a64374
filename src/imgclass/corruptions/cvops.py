"""The OpenCV operations of the spatter corruption, batched in torch with OpenCV's integer arithmetic.

OpenCV is not a dependency of imgclass; these reproduce what ``cv2.Canny``, ``cv2.distanceTransform``
(DIST_L2, 5x5 chamfer mask), ``cv2.equalizeHist``, ``cv2.filter2D`` and ``cv2.blur`` compute on single-channel
images (N, H, W), for other devices and for CPUs without OpenCV (with OpenCV installed, the spatter calls it on
the CPU, where its SIMD code is faster). The tests compare each of them with OpenCV.
"""

from __future__ import annotations

from functools import reduce

import numpy as np
import torch

from ..errors import UsageError

_CANNY_SHIFT = 15
_TG22 = int(0.4142135623730950488016887242097 * (1 << _CANNY_SHIFT) + 0.5)


def _pad_index(n: int, r: int, mode: str, device) -> torch.Tensor:
    from .base import border_index

    return torch.as_tensor(border_index(n, r, r, mode), device=device)


def _pad(x: torch.Tensor, r: int, mode: str) -> torch.Tensor:
    h, w = x.shape[-2:]
    return x.index_select(-2, _pad_index(h, r, mode, x.device)).index_select(-1, _pad_index(w, r, mode, x.device))


def correlate3x3(x: torch.Tensor, kernel, mode: str) -> torch.Tensor:
    """3x3 correlation (anchor at the centre) with the border rule ``mode`` (scipy names)."""
    h, w = x.shape[-2:]
    xp = _pad(x, 1, mode)
    out = torch.zeros_like(x)
    for i in range(3):
        for j in range(3):
            if kernel[i][j] != 0:
                out = out + xp[..., i:i + h, j:j + w] * kernel[i][j]
    return out


def canny(img: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``cv2.Canny(img, low, high)`` (aperture 3, L1 gradient) of uint8 (N, H, W): a bool edge map."""
    h, w = img.shape[-2:]
    x = img.to(torch.int32)
    xp = _pad(x, 1, "nearest")  # Sobel with BORDER_REPLICATE, separably
    hor = xp[..., 2:] - xp[..., :-2]  # [-1, 0, 1] along rows
    dx = hor[..., :-2, :] + 2 * hor[..., 1:-1, :] + hor[..., 2:, :]
    ver = xp[..., 2:, :] - xp[..., :-2, :]
    dy = ver[..., :-2] + 2 * ver[..., 1:-1] + ver[..., 2:]
    mag = dx.abs() + dy.abs()
    mp = torch.nn.functional.pad(mag, (1, 1, 1, 1))  # outside the image the magnitude is 0

    def at(di, dj):  # magnitude of the neighbour (row + di, col + dj)
        return mp[..., 1 + di:1 + di + h, 1 + dj:1 + dj + w]

    ax = dx.abs()
    ay = dy.abs() << _CANNY_SHIFT
    tg22x = ax * _TG22
    tg67x = tg22x + (ax << (_CANNY_SHIFT + 1))
    horizontal = ay < tg22x
    vertical = ~horizontal & (ay > tg67x)
    diagonal = ~horizontal & ~vertical
    same_sign = (dx ^ dy) >= 0  # s = 1: compare (up, left) with (down, right)
    keep_h = (mag > at(0, -1)) & (mag >= at(0, 1))
    keep_v = (mag > at(-1, 0)) & (mag >= at(1, 0))
    keep_d = torch.where(same_sign, (mag > at(-1, -1)) & (mag > at(1, 1)), (mag > at(-1, 1)) & (mag > at(1, -1)))
    cand = (mag > int(np.floor(low))) & ((horizontal & keep_h) | (vertical & keep_v) | (diagonal & keep_d))
    strong = cand & (mag > int(np.floor(high)))
    return _hysteresis(cand, strong)


def _hysteresis(cand: torch.Tensor, strong: torch.Tensor) -> torch.Tensor:
    """Candidates 8-connected to a strong pixel (scipy's labelling, on the CPU)."""
    from scipy import ndimage

    c = cand.cpu().numpy()
    if not c.any():
        return cand
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # connect within an image only
    labels, _ = ndimage.label(c, structure=structure)
    good = np.unique(labels[strong.cpu().numpy()])
    good = good[good > 0]
    return torch.as_tensor(np.isin(labels, good), device=cand.device)


# OpenCV's 5x5 chamfer weights for DIST_L2 (1, 1.4, 2.1969), in exact integer units of 1e-4. OpenCV 5 adds them
# in float32, OpenCV 4 in 16-bit fixed point; exact sums, rounded once to float32, are within a few float32
# ulps of both.
_HV, _DIAG, _LONG = 10000, 14000, 21969
_INIT = 2 ** 30  # "unreachable"; int32 sums stay below 2**31 for images under 4,000 px


def distance_transform_l2_5x5(img: torch.Tensor) -> torch.Tensor:
    """``cv2.distanceTransform(img, cv2.DIST_L2, 5)`` of uint8 (N, H, W): float32 chamfer distance to the zeros.

    OpenCV's two raster passes, row by row (the scan along a row is a running minimum, ``cummin``), in exact
    integer arithmetic; pixels that no zero reaches get a very large value (OpenCV: its own large value).
    """
    n, h, w = img.shape
    dev = img.device
    if h + w > 4000:
        raise UsageError(f"distance transform limited to images under 4,000 px a side, got {h}x{w}")
    t = torch.full((n, h + 4, w + 4), _INIT, dtype=torch.int32, device=dev)
    zero = img == 0
    cols = torch.arange(w, device=dev, dtype=torch.int32) * _HV
    for i in range(h):  # forward: neighbours above and to the left
        r = i + 2
        up2, up1 = t[:, r - 2], t[:, r - 1]
        cand = reduce(torch.minimum, [up2[:, 1:w + 1] + _LONG, up2[:, 3:w + 3] + _LONG, up1[:, 0:w] + _LONG,
                                      up1[:, 1:w + 1] + _DIAG, up1[:, 2:w + 2] + _HV, up1[:, 3:w + 3] + _DIAG,
                                      up1[:, 4:w + 4] + _LONG])
        cand = torch.where(zero[:, i], torch.zeros_like(cand), cand)
        # tmp[j] = min(cand[j], tmp[j-1] + HV): a running minimum of cand[k] - k * HV
        t[:, r, 2:w + 2] = torch.cummin(cand - cols, 1).values + cols
    rcols = torch.arange(w - 1, -1, -1, device=dev, dtype=torch.int32) * _HV
    for i in range(h - 1, -1, -1):  # backward: neighbours below and to the right
        r = i + 2
        dn1, dn2 = t[:, r + 1], t[:, r + 2]
        cur = t[:, r, 2:w + 2]
        cand = reduce(torch.minimum, [cur, dn2[:, 3:w + 3] + _LONG, dn2[:, 1:w + 1] + _LONG, dn1[:, 4:w + 4] + _LONG,
                                      dn1[:, 3:w + 3] + _DIAG, dn1[:, 2:w + 2] + _HV, dn1[:, 1:w + 1] + _DIAG,
                                      dn1[:, 0:w] + _LONG])
        # tmp[j] = min(cand[j], tmp[j+1] + HV), scanning right to left
        run = torch.cummin((cand - rcols).flip(1), 1).values.flip(1) + rcols
        t[:, r, 2:w + 2] = run
    return (t[:, 2:h + 2, 2:w + 2].to(torch.float64) / _HV).to(torch.float32)


def blur3x3_float(x: torch.Tensor) -> torch.Tensor:
    """``cv2.blur(x, (3, 3))`` of float32: sums in double, BORDER_REFLECT_101."""
    s = correlate3x3(x.to(torch.float64), [[1, 1, 1]] * 3, "mirror")
    return (s * (1.0 / 9)).to(torch.float32)


def blur3x3_uint8(x: torch.Tensor) -> torch.Tensor:
    """``cv2.blur(x, (3, 3))`` of uint8: integer sums, rounded."""
    s = correlate3x3(x.to(torch.int64), [[1, 1, 1]] * 3, "mirror")
    return torch.round(s.to(torch.float64) / 9).to(torch.uint8)


def equalize_hist(x: torch.Tensor) -> torch.Tensor:
    """``cv2.equalizeHist`` of uint8 (N, H, W), per image."""
    n = x.shape[0]
    flat = x.reshape(n, -1).to(torch.int64)
    hist = torch.zeros(n, 256, dtype=torch.int64, device=x.device)
    hist.scatter_add_(1, flat, torch.ones_like(flat))
    total = flat.shape[1]
    first = (hist > 0).to(torch.int64).argmax(1)  # first occupied level
    h_first = hist.gather(1, first[:, None]).squeeze(1)
    denom = (total - h_first).clamp_min(1).to(torch.float32)
    scale = torch.full_like(denom, 255.0) / denom  # a true float32 division (a scalar over a tensor goes through
    # the reciprocal, 1 ulp off: a level can then round the other way, e.g. 189 * 255 / 918 = 52.5)
    levels = torch.arange(256, device=x.device)[None, :]
    after = levels > first[:, None]
    cum = torch.cumsum(torch.where(after, hist, torch.zeros_like(hist)), 1)
    lut = torch.round((cum.to(torch.float32) * scale[:, None])).clamp(0, 255)
    lut = torch.where(after, lut, torch.zeros_like(lut)).to(torch.uint8)
    out = lut.gather(1, flat).view_as(x)
    constant = h_first == total  # one level only: OpenCV fills the image with that level
    return torch.where(constant[:, None, None], first[:, None, None].to(torch.uint8).expand_as(x), out)


def filter2d_uint8(x: torch.Tensor, kernel) -> torch.Tensor:
    """``cv2.filter2D(x, cv2.CV_8U, kernel)`` for an integer 3x3 kernel: exact sums, saturated."""
    return correlate3x3(x.to(torch.int64), kernel, "mirror").clamp(0, 255).to(torch.uint8)
