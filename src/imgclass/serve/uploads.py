"""Reading an uploaded image from a request: the content type, the size, and the toolkit's decoder, with every
problem a 4xx and a message that says what to send instead."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from fastapi import HTTPException, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from ..data.decode import ImageError
from .models import decode_upload

__all__ = ["Upload", "read_upload", "UPLOAD_BODY"]

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
    try:
        image = await run_in_threadpool(decode_upload, data, name, max_pixels=max_pixels)
    except ImageError as e:
        status = 413 if e.reason.startswith("decompression bomb") else 400
        raise _bad(status, f"{name}: {e.reason}") from None
    return Upload(image, fields, name)
