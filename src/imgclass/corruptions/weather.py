"""Weather corruptions: snow, frost, fog, spatter."""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from . import cvops, kernels, stream
from . import weather_kernels as wk
from .base import (gaussian_filter, motion_blur, register, to_uint8, to_uint8_255,
                   zoom_coords)


def _float(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float32) / 255.0


def _gray(x: torch.Tensor) -> torch.Tensor:
    """cv2.cvtColor(RGB2GRAY) of float RGB (N, 3, H, W) -> (N, 1, H, W)."""
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


# ---------------------------------------------------------------------------------------------------------
# snow


def _snow_draw(keys, x, p, pset):
    n, _, h, w = x.shape
    used = 2 * ((h * w + 1) // 2)  # uniforms behind the layer's normals; the next one gives the angle
    u = stream.uniforms(keys, used + 1)
    return {"z": stream.box_muller(u[:, :used])[:, :h * w].reshape(n, h, w), "u": u[:, used]}


def _lerp_taps(coords: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first tap, second tap, fraction) of linear interpolation at coordinates inside [0, n - 1]
    (``interp_matrix``'s rule; coordinate n - 1 has fraction 0)."""
    i0 = np.clip(np.floor(coords).astype(np.int64), 0, n - 1)
    return i0, np.minimum(i0 + 1, n - 1), coords - i0


def _lerp_axis(x: torch.Tensor, taps: tuple[np.ndarray, np.ndarray, np.ndarray], axis: int) -> torch.Tensor:
    i0, i1, f = taps
    shape = [1] * x.dim()
    shape[axis] = len(f)
    ft = torch.as_tensor(f, dtype=x.dtype, device=x.device).view(shape)
    a = x.index_select(axis, torch.as_tensor(i0, device=x.device))
    b = x.index_select(axis, torch.as_tensor(i1, device=x.device))
    return a * (1 - ft) + b * ft


def _zoom_taps(h: int, w: int, z: float, trim: bool, keep: tuple[int, int] | None):
    """Row and column taps of the clipped zoom of an (h, w) layer (scipy.ndimage.zoom, order 1), or of its top
    left ``keep`` (rows, columns)."""
    cy, cx = zoom_coords(h, z, trim=trim), zoom_coords(w, z, trim=trim)
    if keep:
        cy, cx = cy[:keep[0]], cx[:keep[1]]
    return _lerp_taps(cy, h), _lerp_taps(cx, w)


@register("snow", draw=_snow_draw)
def snow(x: torch.Tensor, p: tuple, pset: str, *, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    loc, scale, zoom, thresh, radius, sigma, blend = p
    n, c, h, w = x.shape
    cifar = pset == "cifar10"
    # imagecorruptions zooms the whole layer, blurs it and keeps the image's top left: only the rows and columns
    # that corner's motion blur reads (the blur reaches at most its kernel width) are computed here
    full = (len(zoom_coords(h, zoom, trim=cifar)), len(zoom_coords(w, zoom, trim=cifar)))
    reach = 2 * radius + 2
    ty, tx = _zoom_taps(h, w, zoom, cifar, (min(full[0], h + reach), min(full[1], w + reach)))
    if x.device.type == "cpu" and kernels.HAVE_NUMBA:
        layer = wk.snow_layer(z, loc, scale, thresh, ty, tx, eight_bit=cifar)
    else:  # zoom rows then columns, two taps each
        layer = _lerp_axis(_lerp_axis(loc + scale * z, ty, -2), tx, -1)
        layer = torch.where(layer < thresh, torch.zeros_like(layer), layer).clamp(0, 1)
        if cifar:  # the generator hands ImageMagick an 8-bit image
            layer = (layer * 255).to(torch.uint8).to(torch.float64) / 255
    angles = (-135.0 + 90.0 * u).tolist()
    layer = motion_blur(layer[:, None], radius, sigma, angles, crop=(h, w), extent=full)
    if x.device.type == "cpu" and kernels.HAVE_NUMBA:
        return wk.snow_compose(x, layer, blend)
    layer = torch.round(layer * 255).to(torch.uint8).to(torch.float32) / 255
    xf = _float(x)
    xf = blend * xf + (1 - blend) * torch.maximum(xf, _gray(xf) * 1.5 + 0.5)
    return to_uint8(xf + layer + layer.flip(-2, -1))


# ---------------------------------------------------------------------------------------------------------
# frost: the textures shipped with imagecorruptions, resized like cv2.resize, randomly cropped

FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")  # the reference draws 1..5


def frost_dir() -> Path:
    """The folder of frost textures of the installed ``imagecorruptions`` package (found, not imported)."""
    spec = importlib.util.find_spec("imagecorruptions")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the frost corruption needs the frost textures of the imagecorruptions package: "
                           "pip install imagecorruptions==1.1.2")
    folder = Path(list(spec.submodule_search_locations)[0]) / "frost"
    missing = [f for f in FROST_FILES if not (folder / f).is_file()]
    if missing:
        raise RuntimeError(f"frost textures {missing} missing in {folder}: reinstall imagecorruptions==1.1.2")
    return folder


@lru_cache(maxsize=8)
def _frost_texture(i: int) -> np.ndarray:
    from PIL import Image

    try:
        path = frost_dir() / FROST_FILES[i]
    except RuntimeError as missing_package:  # no imagecorruptions: the same files through the asset layer
        from ..assets import AssetError, fetch

        try:
            path = fetch(f"frost-{i + 1}")
        except AssetError as e:
            raise RuntimeError(f"{missing_package}; or make the texture available: {e}") from e
    with Image.open(path) as im:
        return np.array(im.convert("RGB"))  # cv2.imread drops the alpha channel the same way


def _cv_cubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """cv2.resize INTER_CUBIC weights along one axis (half-pixel centres, A = -0.75, edge pixels repeated)."""
    scale = n_in / n_out
    fx = (np.arange(n_out) + 0.5) * scale - 0.5
    sx = np.floor(fx)
    t = fx - sx
    a = -0.75
    w = np.stack([((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
                  ((a + 2) * t - (a + 3)) * t * t + 1,
                  ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1], 1)
    w = np.concatenate([w, 1 - w.sum(1, keepdims=True)], 1)
    m = np.zeros((n_out, n_in))
    for k in range(4):
        np.add.at(m, (np.arange(n_out), np.clip(sx.astype(np.int64) + k - 1, 0, n_in - 1)), w[:, k])
    return m


def _cv_linear_matrix(n_in: int, n_out: int, inv_scale: float) -> np.ndarray:
    """cv2.resize INTER_LINEAR weights along one axis for a given fx (source = (dst + 0.5) / fx - 0.5)."""
    fx = (np.arange(n_out) + 0.5) / inv_scale - 0.5
    sx = np.floor(fx)
    t = fx - sx
    sx = sx.astype(np.int64)
    t = np.where(sx < 0, 0.0, t)
    sx = np.maximum(sx, 0)
    t = np.where(sx >= n_in - 1, 0.0, t)
    sx = np.minimum(sx, n_in - 1)
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), sx), 1 - t)
    np.add.at(m, (np.arange(n_out), np.minimum(sx + 1, n_in - 1)), t)
    return m


@lru_cache(maxsize=16)
def _frost_resized(i: int, h: int, w: int, cifar: bool, device: str) -> torch.Tensor:
    tex = _frost_texture(i)
    fh, fw = tex.shape[:2]
    if cifar:  # cv2.resize(frost, (0, 0), fx=0.2, fy=0.2) at 32 px; grown with the image side elsewhere
        f = 0.2 * max(h, w) / 32
        f = max(f, 1.1 * h / fh, 1.1 * w / fw)
        oh, ow = int(np.round(fh * f)), int(np.round(fw * f))
        a, b = _cv_linear_matrix(fh, oh, f), _cv_linear_matrix(fw, ow, f)
    else:  # imagecorruptions: scale so that it covers the image, times 1.1, cubic
        s = 1.0
        if fh < h or fw < w:
            s = max(h / fh if fh < h else 0, w / fw if fw < w else 0)
        s *= 1.1
        ow, oh = int(np.ceil(fw * s)), int(np.ceil(fh * s))
        a, b = _cv_cubic_matrix(fh, oh), _cv_cubic_matrix(fw, ow)
    t = torch.as_tensor(tex, dtype=torch.float64).permute(2, 0, 1)
    out = torch.as_tensor(a) @ t @ torch.as_tensor(b).T
    return torch.round(out).clamp(0, 255).to(torch.uint8).to(device)


def _frost_draw(keys, x, p, pset):
    """Texture (uniform over the five) and crop corner (uniform over the positions), as the reference's
    randint calls, from three uniforms per image."""
    h, w = x.shape[-2:]
    idx, starts = [], []
    for u in stream.uniforms(keys, 3).tolist():
        i = min(int(u[0] * 5), 4)
        fr = _frost_resized(i, h, w, pset == "cifar10", str(x.device))
        idx.append(i)
        starts.append((int(u[1] * (fr.shape[1] - h)), int(u[2] * (fr.shape[2] - w))))
    return {"index": idx, "start": starts}


@register("frost", draw=_frost_draw)
def frost(x: torch.Tensor, p: tuple, pset: str, *, index: list[int], start: list[tuple[int, int]]) -> torch.Tensor:
    n, c, h, w = x.shape
    crops = []
    for i, (y0, x0) in zip(index, start):
        fr = _frost_resized(int(i), h, w, pset == "cifar10", str(x.device))
        crops.append(fr[:, y0:y0 + h, x0:x0 + w])
    tex = torch.stack(crops).to(torch.float32)
    return to_uint8_255(p[0] * x.to(torch.float32) + p[1] * tex)


# ---------------------------------------------------------------------------------------------------------
# fog: a diamond-square plasma fractal per image


def _next_pow2(v: int) -> int:
    return 1 if v == 0 else 2 ** (v - 1).bit_length()


def plasma_draw_shapes(mapsize: int) -> list[int]:
    sizes, step = [], mapsize
    while step >= 2:
        sizes += [mapsize // step] * 3
        step //= 2
    return sizes


def plasma_fractal(u: list[torch.Tensor], mapsize: int, decay: float) -> torch.Tensor:
    """The reference's diamond-square heightmap (N, M, M) in [0, 1], from its uniform draws in [0, 1).

    The reference fills one map through strided views; here each level's four sub-grids (corners, centres and
    the two edge midpoints) are contiguous arrays, interleaved into the next level's corners.
    """
    n = u[0].shape[0]
    ul = torch.zeros((n, 1, 1), dtype=torch.float64, device=u[0].device)  # m[0::step, 0::step]
    step, wibble, k = mapsize, 100.0, 0

    def wibbled(arr):
        nonlocal k
        r = -wibble + 2 * wibble * u[k]  # numpy's uniform(-wibble, wibble)
        k += 1
        return arr / 4 + wibble * r

    while step >= 2:
        sq = ul + torch.roll(ul, -1, 1)
        dr = wibbled(sq + torch.roll(sq, -1, 2))  # m[half::step, half::step]
        lt = wibbled((dr + torch.roll(dr, 1, 1)) + (ul + torch.roll(ul, -1, 2)))  # m[0::step, half::step]
        tt = wibbled((dr + torch.roll(dr, 1, 2)) + (ul + torch.roll(ul, -1, 1)))  # m[half::step, 0::step]
        a = ul.shape[1]
        ul = torch.stack([torch.stack([ul, lt], -1), torch.stack([tt, dr], -1)], 2).reshape(n, 2 * a, 2 * a)
        step //= 2
        wibble /= decay
    m = ul - ul.amin((1, 2), keepdim=True)
    return m / m.amax((1, 2), keepdim=True)


def _fog_draw(keys, x, p, pset):
    size = _next_pow2(max(*x.shape[-2:], 3))
    shapes = plasma_draw_shapes(size)
    flat = stream.uniforms(keys, sum(s * s for s in shapes))
    return {"u": [part.view(-1, s, s) for part, s in zip(flat.split([s * s for s in shapes], 1), shapes)]}


def _fog_fused(x, keys, p, pset):
    return wk.fog(x, keys, _next_pow2(max(*x.shape[-2:], 3)), p[0], p[1])


@register("fog", draw=_fog_draw, fused=_fog_fused)
def fog(x: torch.Tensor, p: tuple, pset: str, *, u: list[torch.Tensor]) -> torch.Tensor:
    n, c, h, w = x.shape
    size = _next_pow2(max(h, w, 3))
    plasma = plasma_fractal(u, size, p[1])[:, None, :h, :w].to(torch.float32)
    xf = _float(x)
    max_val = xf.amax((1, 2, 3), keepdim=True)
    xf = xf + p[0] * plasma
    return to_uint8(xf * max_val / (max_val + p[0]))


# ---------------------------------------------------------------------------------------------------------
# spatter: water drops (OpenCV edge and distance maps) or mud


def _spatter_draw(keys, x, p, pset):
    n, _, h, w = x.shape
    return {"z": stream.normals(keys, h * w).reshape(n, h, w)}


_DROP_KERNEL = [[-2, -1, 0], [-1, 1, 1], [0, 1, 2]]


def water_distance(lq8: torch.Tensor, *, opencv: bool | None = None) -> torch.Tensor:
    """The reference's OpenCV chain on the 8-bit liquid layers (N, H, W): edges, distance to them (capped at 20),
    box blur, histogram equalization, an emboss filter, box blur; float32 out.

    ``opencv``: OpenCV itself, image by image (on the CPU when it is installed, by default: its SIMD code is
    faster there), or the batched torch reproduction of ``cvops`` (any device, no OpenCV needed).
    """
    if opencv is None:
        opencv = lq8.device.type == "cpu" and importlib.util.find_spec("cv2") is not None
    if opencv:
        import cv2

        ker = np.array(_DROP_KERNEL)
        src = lq8.cpu().numpy()
        out = np.empty(src.shape, dtype=np.float32)

        def run(lo: int, hi: int) -> None:  # OpenCV releases the GIL: images in torch's threads
            for i in range(lo, hi):
                d = cv2.distanceTransform(255 - cv2.Canny(src[i], 50, 150), cv2.DIST_L2, 5)
                d = cv2.blur(np.minimum(d, np.float32(20)), (3, 3)).astype(np.uint8)
                out[i] = cv2.blur(cv2.filter2D(cv2.equalizeHist(d), cv2.CV_8U, ker), (3, 3))

        kernels.run_split(run, len(src), align=1, min_part=1)
        return torch.from_numpy(out).to(lq8.device)
    dist = 255 - cvops.canny(lq8, 50, 150).to(torch.uint8) * 255
    dist = cvops.distance_transform_l2_5x5(dist).clamp_max(20)
    dist = cvops.blur3x3_float(dist).to(torch.uint8)
    dist = cvops.equalize_hist(dist)
    dist = cvops.filter2d_uint8(dist, _DROP_KERNEL)
    return cvops.blur3x3_uint8(dist).to(torch.float32)


@register("spatter", draw=_spatter_draw)
def spatter(x: torch.Tensor, p: tuple, pset: str, *, z: torch.Tensor) -> torch.Tensor:
    loc, scale, sigma, thresh, intensity, mud = p
    xf = _float(x)
    liquid = gaussian_filter(loc + scale * z, sigma)  # float64, like the reference
    liquid = torch.where(liquid < thresh, torch.zeros_like(liquid), liquid)
    if mud == 0:
        lq8 = torch.remainder(torch.floor(liquid * 255).to(torch.int64), 256).to(torch.uint8)  # numpy's astype
        m = lq8.to(torch.float32) * water_distance(lq8)
        peak = m.amax((1, 2), keepdim=True)
        # the reference divides by the peak; with no drop at all (peak 0) it would write NaN: no spatter instead
        m = torch.where(peak > 0, m / torch.where(peak > 0, peak, torch.ones_like(peak)), torch.zeros_like(m))
        m = (m * intensity)[:, None]
        color = torch.tensor([175 / 255.0, 238 / 255.0, 238 / 255.0], device=x.device).view(1, 3, 1, 1)
        return to_uint8(xf + m * color)
    m = gaussian_filter((liquid > thresh).to(torch.float32), intensity)
    m = torch.where(m < 0.8, torch.zeros_like(m), m)[:, None]
    color = torch.tensor([63 / 255.0, 42 / 255.0, 20 / 255.0], device=x.device).view(1, 3, 1, 1) * m
    return to_uint8(xf * (1 - m) + color)
