"""The evaluation resize/crop a model needs, applied to uint8 images (timm's eval transform)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..errors import UsageError

__all__ = ["EvalTransform"]

_PIL_INTERP = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


@dataclass(frozen=True)
class EvalTransform:
    """Resize the short side to ``floor(size / crop_pct)``, then centre-crop ``size``.

    Same arithmetic as timm's ``transforms_factory`` eval path (``crop_mode='center'``), with Pillow
    resampling so numbers match the pipelines published results were measured with. An image that
    already has the target size and ``crop_pct == 1`` is returned untouched (no resampling).
    """

    size: tuple[int, int]
    crop_pct: float = 1.0
    interpolation: str = "bilinear"

    def __post_init__(self):
        if self.interpolation not in _PIL_INTERP:
            raise UsageError(f"interpolation must be one of {', '.join(_PIL_INTERP)}, got {self.interpolation!r}")

    @classmethod
    def for_model(cls, config) -> "EvalTransform":
        return cls((config.input_size[1], config.input_size[2]), config.crop_pct, config.interpolation)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        th, tw = self.size
        _, h, w = img.shape
        if (h, w) == (th, tw) and self.crop_pct == 1.0:
            return img
        if th == tw:
            scale = math.floor(th / self.crop_pct)
            if w <= h:
                nw, nh = scale, int(scale * h / w)
            else:
                nh, nw = scale, int(scale * w / h)
        else:
            nh, nw = (math.floor(th / self.crop_pct), math.floor(tw / self.crop_pct))
        if (nh, nw) != (h, w):
            pil = Image.fromarray(np.ascontiguousarray(img.permute(1, 2, 0).numpy()))
            pil = pil.resize((nw, nh), _PIL_INTERP[self.interpolation])
            img = torch.from_numpy(np.array(pil)).permute(2, 0, 1)
        top = int(round((nh - th) / 2.0))
        left = int(round((nw - tw) / 2.0))
        if top < 0 or left < 0:
            raise ValueError(f"cannot crop {th}x{tw} from a {nh}x{nw} image")
        return img[:, top:top + th, left:left + tw]

    def to_dict(self) -> dict:
        return {"size": list(self.size), "crop_pct": self.crop_pct, "interpolation": self.interpolation,
                "resize": "short side to floor(size / crop_pct), then centre crop"}
