"""Decode any image file to an RGB uint8 array, or raise ImageError with a precise reason."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from ..errors import ImgclassError

__all__ = ["ImageError", "decode_image", "to_rgb_array", "IMAGE_EXTENSIONS", "DEFAULT_MAX_PIXELS"]

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm"}
)
# Pillow's own bomb threshold; anything larger is refused, not decoded.
DEFAULT_MAX_PIXELS = 89_478_485

# Never silently accept truncated files (Pillow's default, asserted here in case a caller changed it).
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageError(ImgclassError):
    """A file that is not a usable image; ``path`` and ``reason`` go into the skipped list."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def decode_image(data: bytes, path: str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes to an ``(H, W, 3)`` uint8 RGB array."""
    if len(data) == 0:
        raise ImageError(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise ImageError(path, f"decompression bomb: {w}x{h} = {w * h} pixels exceeds the limit {max_pixels}")
            img.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(path, f"decompression bomb: {e}") from None
    except UnidentifiedImageError:
        raise ImageError(path, "not an image (format not recognised)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        msg = str(e) or type(e).__name__
        if "truncated" in msg.lower():
            raise ImageError(path, f"truncated image ({msg})") from None
        raise ImageError(path, f"corrupt image ({msg})") from None
    try:
        return to_rgb_array(img)
    except (OSError, ValueError) as e:
        raise ImageError(path, f"cannot convert to RGB ({e})") from None


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """Any Pillow mode to ``(H, W, 3)`` uint8 RGB.

    Transparent images are composited on white; 16-bit and 32-bit grayscale are scaled to 8 bits
    (Pillow's own ``convert`` would clip them); float images are taken as [0, 1] or [0, 255].
    """
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8).copy()
    if mode.startswith("I;16") or mode in {"I", "F"}:
        a = np.asarray(img).astype(np.float64)
        if mode == "F":
            hi = 1.0 if np.nanmax(a, initial=0) <= 1.0 else 255.0
        elif mode.startswith("I;16"):
            hi = 65535.0
        else:  # 32-bit integer: Pillow uses it for 16-bit PNG/TIFF grayscale
            hi = 65535.0 if a.max(initial=0) > 255 else 255.0
        g = np.clip(np.rint(np.nan_to_num(a) * (255.0 / hi)), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    has_alpha = mode in {"RGBA", "LA", "La", "RGBa", "PA"} or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(bg, rgba).convert("RGB"), dtype=np.uint8).copy()
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
