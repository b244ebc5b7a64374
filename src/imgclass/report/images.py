"""Images in reports and results: arrays to PNG/JPEG bytes, base64 text and data URIs, and back."""

from __future__ import annotations

import base64
import io

import numpy as np

__all__ = ["encode_image", "image_base64", "data_uri", "decode_base64_image"]


def encode_image(img, *, fmt: str = "PNG", max_side: int | None = None, quality: int = 85) -> bytes:
    """An ``(H, W, 3)``/``(H, W)`` uint8 array or a PIL image as PNG or JPEG bytes, shrunk to ``max_side``."""
    from PIL import Image

    im = img if isinstance(img, Image.Image) else Image.fromarray(np.ascontiguousarray(img))
    if max_side is not None and max(im.size) > max_side:
        im = im.copy()
        im.thumbnail((max_side, max_side), Image.BICUBIC)
    buf = io.BytesIO()
    if fmt.upper() == "JPEG":
        im.convert("RGB").save(buf, format="JPEG", quality=quality)
    else:
        im.save(buf, format=fmt.upper())
    return buf.getvalue()


def image_base64(img, *, fmt: str = "PNG", max_side: int | None = None, quality: int = 85) -> str:
    """:func:`encode_image` as base64 text (how images travel inside results.json)."""
    return base64.b64encode(encode_image(img, fmt=fmt, max_side=max_side, quality=quality)).decode("ascii")


def data_uri(data: bytes | str, mime: str = "image/png") -> str:
    """``data:<mime>;base64,...`` of raw bytes or of base64 text already encoded."""
    text = data if isinstance(data, str) else base64.b64encode(data).decode("ascii")
    return f"data:{mime};base64,{text}"


def decode_base64_image(text: str) -> np.ndarray:
    """Base64 PNG/JPEG text back to a uint8 array."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))
