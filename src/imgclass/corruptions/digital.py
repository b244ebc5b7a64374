"""Digital corruptions: brightness, contrast, saturate, elastic transform, pixelate, JPEG."""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch

from . import digital_kernels as kd
from . import kernels, stream
from .base import (PIL_PRECISION_BITS, gaussian_filter, pil_box_coefficients, pil_nearest_index, register,
                   to_uint8)
from .kernels import pool


def _float(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float32) / 255.0


# ---------------------------------------------------------------------------------------------------------
# colour: scikit-image's rgb2hsv / hsv2rgb, written for (N, 3, H, W)


def rgb2hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    v = x.amax(1)
    delta = v - x.amin(1)
    flat = delta == 0
    safe = torch.where(flat, torch.ones_like(delta), delta)
    s = torch.where(flat, torch.zeros_like(delta), delta / torch.where(v == 0, torch.ones_like(v), v))
    h = torch.zeros_like(v)
    h = torch.where(r == v, (g - b) / safe, h)  # later rules win ties, as in scikit-image
    h = torch.where(g == v, 2.0 + (b - r) / safe, h)
    h = torch.where(b == v, 4.0 + (r - g) / safe, h)
    h = torch.remainder(h / 6.0, 1.0)
    h = torch.where(flat, torch.zeros_like(h), h)
    return torch.stack([h, s, v], 1)


# which of (v, p, q, t) each output channel takes in each of the six hue sectors (scikit-image's table)
_SECTOR = torch.tensor([[0, 2, 1, 1, 3, 0], [3, 0, 0, 2, 1, 1], [1, 1, 3, 0, 0, 2]])


def hsv2rgb(hsv: torch.Tensor) -> torch.Tensor:
    h, s, v = hsv.unbind(1)
    hi = torch.floor(h * 6)
    f = h * 6 - hi
    p = v * (1 - s)
    q = v * (1 - f * s)
    t = v * (1 - (1 - f) * s)
    hi = torch.remainder(hi.to(torch.uint8), 6).to(torch.int64)  # the reference casts to uint8 first
    cand = torch.stack([v, p, q, t], 1)  # (N, 4, H, W)
    pick = _SECTOR.to(hi.device)[:, hi].permute(1, 0, 2, 3)  # (N, 3, H, W): index into cand
    return cand.gather(1, pick)


def _float64(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float64) / 255.0  # the colour round trip in double, as the reference: exact to the level


@register("brightness", fused=lambda x, keys, p, pset: kd.hsv_adjust(x, v_add=p))
def brightness(x: torch.Tensor, p: float, pset: str) -> torch.Tensor:
    hsv = rgb2hsv(_float64(x))
    hsv[:, 2] = (hsv[:, 2] + p).clamp(0, 1)
    return to_uint8(hsv2rgb(hsv))


@register("saturate", fused=lambda x, keys, p, pset: kd.hsv_adjust(x, s_mul=p[0], s_add=p[1]))
def saturate(x: torch.Tensor, p: tuple, pset: str) -> torch.Tensor:
    hsv = rgb2hsv(_float64(x))
    hsv[:, 1] = (hsv[:, 1] * p[0] + p[1]).clamp(0, 1)
    return to_uint8(hsv2rgb(hsv))


@register("contrast", fused=lambda x, keys, p, pset: kd.contrast(x, p))
def contrast(x: torch.Tensor, p: float, pset: str) -> torch.Tensor:
    xf = _float(x)
    means = xf.to(torch.float64).mean((2, 3), keepdim=True).to(torch.float32)
    return to_uint8((xf - means) * p + means)


# ---------------------------------------------------------------------------------------------------------
# elastic transform


def bilinear_reflect(img: torch.Tensor, yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
    """``scipy.ndimage.map_coordinates(order=1, mode='reflect')`` of (N, C, H, W) at per-image (N, H', W') points."""
    n, c, h, w = img.shape

    def reflect(i, size):  # half-sample symmetric: -1 -> 0, size -> size - 1
        period = 2 * size
        j = torch.remainder(i, period)
        return torch.where(j < size, j, period - 1 - j)

    y0 = torch.floor(yy)
    x0 = torch.floor(xx)
    fy = (yy - y0).to(img.dtype)
    fx = (xx - x0).to(img.dtype)
    y0, x0 = y0.long(), x0.long()
    ya, yb = reflect(y0, h), reflect(y0 + 1, h)
    xa, xb = reflect(x0, w), reflect(x0 + 1, w)
    flat = img.reshape(-1)
    base = (torch.arange(n * c, device=img.device) * (h * w)).view(n, c, 1)

    def tap(yi, xi):  # index_select on the flat batch: much faster than gather on the CPU
        idx = (base + (yi * w + xi).flatten(1)[:, None, :]).reshape(-1)
        return flat.index_select(0, idx).view(n, c, *yy.shape[1:])

    fy, fx = fy[:, None], fx[:, None]
    top = tap(ya, xa) * (1 - fx) + tap(ya, xb) * fx
    bottom = tap(yb, xa) * (1 - fx) + tap(yb, xb) * fx
    return top * (1 - fy) + bottom * fy


def _affine_from_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """cv2.getAffineTransform: the 2x3 matrix taking three source points to three destination points."""
    a = np.concatenate([src.astype(np.float64), np.ones((3, 1))], 1)
    return np.linalg.solve(a, dst.astype(np.float64)).T


def _elastic_draw(keys, x, p, pset):
    n, _, h, w = x.shape
    u = stream.uniforms(keys, 2 * h * w + 6)  # the displacement fields, then the affine jitter (CIFAR)
    out = {"u": u[:, :2 * h * w].reshape(n, 2, h, w)}
    if pset == "cifar10":
        out["affine"] = u[:, 2 * h * w:].reshape(n, 3, 2)
    return out


def _elastic_fused(x, keys, p, pset):
    """The CPU kernel for imagecorruptions' parameters (the CIFAR generator's affine warp: the tensor path)."""
    if pset == "cifar10":
        return None
    from .base import border_index, gaussian_kernel1d

    h, w = x.shape[-2:]
    ky, kx = gaussian_kernel1d(h * 0.01, 3), gaussian_kernel1d(w * 0.01, 3)
    iy = border_index(h, len(ky) // 2, len(ky) // 2, "reflect")
    ix = border_index(w, len(kx) // 2, len(kx) // 2, "reflect")
    return kd.elastic(x, keys, p, -h * 0.005, h * 0.005, ky, iy, kx, ix)


@register("elastic_transform", draw=_elastic_draw, fused=_elastic_fused)
def elastic_transform(x: torch.Tensor, p, pset: str, *, u: torch.Tensor,
                      affine: torch.Tensor | None = None) -> torch.Tensor:
    """imagecorruptions: smooth random displacements only; the CIFAR generator: a random affine warp
    (cv2.warpAffine, BORDER_REFLECT_101) first, then displacements."""
    n, c, h, w = x.shape
    img = _float(x)
    if pset == "cifar10":
        size = min(h, w)  # the generator's IMSIZE
        alpha, sigma, jitter = (v * size for v in p)
        low, high = -1.0, 1.0
        img = _warp_affine(img, affine, jitter)
    else:
        alpha, sigma = p, (h * 0.01, w * 0.01)
        low, high = -h * 0.005, h * 0.005
    field = low + (high - low) * u  # (N, 2, H, W) float64, as numpy's uniform(low, high)
    if (np.isscalar(sigma) and sigma > 0) or not np.isscalar(sigma):
        field = gaussian_filter(field, sigma, mode="reflect", truncate=3)
    field = (field * alpha).to(torch.float32)
    yy = torch.arange(h, device=x.device, dtype=torch.float64)[:, None] + field[:, 1].double()
    xx = torch.arange(w, device=x.device, dtype=torch.float64)[None, :] + field[:, 0].double()
    return to_uint8(bilinear_reflect(img, yy, xx))


def _warp_affine(img: torch.Tensor, unit: torch.Tensor, jitter: float) -> torch.Tensor:
    n, c, h, w = img.shape
    center = np.float32((h, w)) // 2
    square = min(h, w) // 3
    pts1 = np.float32([center + square, [center[0] + square, center[1] - square], center - square])
    ys, xs = [], []
    for i in range(n):
        pts2 = pts1 + (-jitter + 2 * jitter * unit[i].cpu().numpy()).astype(np.float32)
        m = np.concatenate([_affine_from_points(pts1, pts2), [[0, 0, 1]]])
        inv = np.linalg.inv(m)  # warpAffine samples the source at M^-1 (x, y)
        gy, gx = np.mgrid[0:h, 0:w].astype(np.float64)
        xs.append(inv[0, 0] * gx + inv[0, 1] * gy + inv[0, 2])
        ys.append(inv[1, 0] * gx + inv[1, 1] * gy + inv[1, 2])
    yy = torch.as_tensor(np.stack(ys), device=img.device)
    xx = torch.as_tensor(np.stack(xs), device=img.device)
    return _bilinear_mirror(img, yy, xx)


def _bilinear_mirror(img: torch.Tensor, yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
    """Bilinear sampling with BORDER_REFLECT_101 taps (cv2.remap's rule for warpAffine)."""
    n, c, h, w = img.shape

    def mirror(i, size):
        if size == 1:
            return torch.zeros_like(i)
        period = 2 * size - 2
        j = torch.remainder(i, period)
        return torch.where(j < size, j, period - j)

    y0, x0 = torch.floor(yy), torch.floor(xx)
    fy, fx = (yy - y0).to(img.dtype)[:, None], (xx - x0).to(img.dtype)[:, None]
    y0, x0 = y0.long(), x0.long()
    flat = img.reshape(-1)
    base = (torch.arange(n * c, device=img.device) * (h * w)).view(n, c, 1)

    def tap(yi, xi):
        idx = (base + (mirror(yi, h) * w + mirror(xi, w)).flatten(1)[:, None, :]).reshape(-1)
        return flat.index_select(0, idx).view(n, c, h, w)

    top = tap(y0, x0) * (1 - fx) + tap(y0, x0 + 1) * fx
    bottom = tap(y0 + 1, x0) * (1 - fx) + tap(y0 + 1, x0 + 1) * fx
    return top * (1 - fy) + bottom * fy


# ---------------------------------------------------------------------------------------------------------
# pixelate: Pillow's BOX reduction (its 8-bit fixed-point arithmetic, reproduced), then NEAREST (or BOX) back
# (the coefficients: base.pil_box_coefficients, base.pil_nearest_index)


def _pil_box_pass(x: torch.Tensor, m: np.ndarray, axis: int) -> torch.Tensor:
    mt = torch.as_tensor(m, dtype=torch.float64, device=x.device)
    xd = x.to(torch.float64)
    s = torch.matmul(xd, mt.T) if axis == -1 else torch.matmul(mt, xd)
    half = float(1 << (PIL_PRECISION_BITS - 1))
    return torch.floor((s + half) / float(1 << PIL_PRECISION_BITS)).clamp(0, 255).to(torch.uint8)


def pil_resize_box(x: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """``Image.resize((out_w, out_h), Image.BOX)`` of a uint8 (N, C, H, W) batch: horizontal pass, then vertical."""
    h, w = x.shape[-2:]
    if out_w != w:
        x = _pil_box_pass(x, pil_box_coefficients(w, out_w), -1)
    if out_h != h:
        x = _pil_box_pass(x, pil_box_coefficients(h, out_h), -2)
    return x


def _pixelate_fused(x: torch.Tensor, keys, p: float, pset: str) -> torch.Tensor:
    h, w = x.shape[-2:]
    return kd.pixelate(x, int(h * p), int(w * p), box_back=pset == "cifar10")


@register("pixelate", chunk=1 << 24, fused=_pixelate_fused)
def pixelate(x: torch.Tensor, p: float, pset: str) -> torch.Tensor:
    """Pillow's BOX reduction, then NEAREST (imagecorruptions) or BOX (the CIFAR generator) back. Here, on the CPU
    Pillow itself does it, images in threads, except for the NEAREST path on small images; elsewhere the tensor
    reproduction of its fixed-point arithmetic. ``corrupt`` on the CPU runs the numba kernel
    (``digital_kernels.pixelate``: the same integer arithmetic, several times faster than Pillow)."""
    h, w = x.shape[-2:]
    sh, sw = int(h * p), int(w * p)
    cifar = pset == "cifar10"
    if x.device.type == "cpu" and (cifar or h * w > 64 * 64):
        from PIL import Image

        back = Image.BOX if cifar else Image.NEAREST
        return pillow_map(lambda im: im.resize((sw, sh), Image.BOX).resize((w, h), back), x)
    small = pil_resize_box(x, sh, sw)
    if cifar:
        return pil_resize_box(small, h, w)
    iy = torch.as_tensor(pil_nearest_index(small.shape[-2], h), device=x.device)
    ix = torch.as_tensor(pil_nearest_index(small.shape[-1], w), device=x.device)
    return small.index_select(-2, iy).index_select(-1, ix)


def pillow_map(fn, x: torch.Tensor) -> torch.Tensor:
    """``fn`` (a PIL RGB image to another) over a uint8 (N, 3, H, W) batch, images in threads (Pillow and libjpeg
    release the GIL), as many as torch's intra-op threads. Pillow interleaves the channel planes (``merge``):
    several times faster than a strided tensor copy."""
    from PIL import Image

    src = x.cpu().numpy()
    out = np.empty_like(src)

    def one(i: int) -> None:
        out[i] = np.asarray(fn(Image.merge("RGB", [Image.fromarray(plane) for plane in src[i]]))).transpose(2, 0, 1)

    workers = max(1, min(len(src), torch.get_num_threads()))
    if workers == 1:
        for i in range(len(src)):
            one(i)
    else:
        list(pool(workers).map(one, range(len(src))))
    return torch.from_numpy(out).to(x.device)


# ---------------------------------------------------------------------------------------------------------
# JPEG: libjpeg through torchvision (Pillow where torchvision lacks it), at the reference's qualities


def _jpeg_one(im, quality: int):
    from PIL import Image

    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=int(quality))
    buf.seek(0)
    return Image.open(buf)


@register("jpeg_compression", chunk=1 << 24)
def jpeg_compression(x: torch.Tensor, p: int, pset: str) -> torch.Tensor:
    """Pillow's codec (libjpeg, 4:2:0, no optimization) at the reference's qualities, through torchvision's
    bindings of the same library: the same bytes and pixels as Pillow, decoded several times faster, and
    both calls release the GIL, so the batch goes in as many parts as torch has threads. Pillow, images in
    turn, where torchvision lacks them."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29 points to torchcodec
            from torchvision.io import decode_jpeg, encode_jpeg
    except ImportError:
        return pillow_map(lambda a: _jpeg_one(a, p), x)

    src = x.cpu().contiguous()
    out = torch.empty_like(src)

    def run(lo: int, hi: int) -> None:
        if not kernels.HAVE_NUMBA:
            out[lo:hi] = torch.stack(decode_jpeg(encode_jpeg(list(src[lo:hi]), quality=int(p))))
            return
        # interleave and de-interleave by numba loops: torch's strided uint8 copies cost as much as the codec
        # here (torchvision's encoder transposes CHW input itself)
        hwc = np.empty((hi - lo, *src.shape[2:], src.shape[1]), dtype=np.uint8)
        kd.to_hwc(src[lo:hi].numpy(), hwc)
        views = list(torch.from_numpy(hwc).permute(0, 3, 1, 2))  # CHW views of HWC memory: no copy
        dec = decode_jpeg(encode_jpeg(views, quality=int(p)))
        kd.to_chw(np.stack([d.permute(1, 2, 0).numpy() for d in dec]), out[lo:hi].numpy())

    # parts of at least ~1 ms of codec work: below that, the per-image calls contend for the GIL
    kernels.run_split(run, len(src), align=1, min_part=max(1, -(-25_000 // src[0].numel())))
    return out.to(x.device)
