"""Reading an uploaded image from a request: the content type, the size, and the toolkit's decoder, with every
problem a 4xx and a message that says what to send instead."""

from __future__ import annotations

import io
from dataclasses import dataclass

import torch
from fastapi import HTTPException, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from ..data.decode import ImageError
from .models import decode_upload

__all__ = ["Upload", "read_upload", "UPLOAD_BODY"]

INLINE_DECODE_BYTES = 16 * 1024  # files this small with at most INLINE_DECODE_PIXELS are decoded on the event loop
INLINE_DECODE_PIXELS = 128 * 128


def _small(data: bytes) -> bool:
    """A file small in bytes whose header says it is small in pixels (a CIFAR-sized PNG decodes in ~0.1 ms)."""
    if len(data) > INLINE_DECODE_BYTES:
        return False
    try:
        from PIL import Image

        w, h = Image.open(io.BytesIO(data)).size  # the header only
        return w * h <= INLINE_DECODE_PIXELS
    except Exception:  # noqa: BLE001 - not readable: the worker-thread path reports why
        return False

# how the upload endpoints document their body in the OpenAPI schema (they parse it themselves)
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["file"],
                           "properties": {"file": {"type": "string", "format": "binary",
                                                   "description": "the image (PNG, JPEG, WebP, BMP, GIF, TIFF...)"},
                                          "model": {"type": "string", "description": "model spec (default: all / "
                                                                                     "the first)"}}},
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@dataclass
class Upload:
    image: torch.Tensor  # (3, H, W) uint8 as decoded
    fields: dict[str, str]  # query parameters and form fields (form fields win)
    name: str


def _bad(status: int, msg: str) -> HTTPException:
    return HTTPException(status_code=status, detail=msg)


async def read_upload(request: Request, *, max_pixels: int) -> Upload:
    """The image of a request: a multipart form with the image as field ``file`` (or ``image``), or the raw image
    bytes with an ``image/*`` (or ``application/octet-stream``) Content-Type. Decoded by
    :func:`imgclass.data.decode.decode_image`: decompression bombs (413), non-images, truncated and corrupt files
    (400) and wrong content types (415) are refused with the reason."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    fields = dict(request.query_params)
    if ctype == "multipart/form-data":
        form = await request.form(max_files=2, max_fields=50)
        try:
            upload = form.get("file") or form.get("image")
            for k, v in form.multi_items():
                if isinstance(v, str):
                    fields[k] = v
            if not isinstance(upload, UploadFile):
                raise _bad(400, "no image in the form: send it as the multipart field 'file'")
            part = (upload.content_type or "").split(";")[0].strip().lower()
            if part and not (part.startswith("image/") or part == "application/octet-stream"):
                raise _bad(415, f"wrong content type {part!r} for the uploaded file: send an image (image/png, "
                                "image/jpeg, image/webp ...)")
            data = await upload.read()
            name = upload.filename or "upload"
        finally:
            await form.close()
    elif ctype.startswith("image/") or ctype == "application/octet-stream":
        data = await request.body()
        name = "upload"
    else:
        shown = repr(ctype) if ctype else "none"
        raise _bad(415, f"wrong content type {shown}: send multipart/form-data with the image as field 'file', or "
                        "the image bytes with Content-Type image/png, image/jpeg ...")
    try:  # a small image decodes faster than a hop to a worker thread; a large one must not block the event loop
        image = decode_upload(data, name, max_pixels=max_pixels) if _small(data) else \
            await run_in_threadpool(decode_upload, data, name, max_pixels=max_pixels)
    except ImageError as e:
        status = 413 if e.reason.startswith("decompression bomb") else 400
        raise _bad(status, f"{name}: {e.reason}") from None
    return Upload(image, fields, name)
