"""Reading image files for explanations (the model's eval resize/crop applied) and drawing map overlays."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from ..errors import UsageError
from ..data.decode import IMAGE_EXTENSIONS, decode_image
from ..data.transforms import EvalTransform
from ..models.classifier import ModelConfig

__all__ = ["image_files", "load_images", "normalize_map", "overlay", "save_png"]


def image_files(folder: str | os.PathLike) -> list[Path]:
    """Image files below ``folder`` (recursive, hidden files skipped), sorted."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder of images")
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
             and not any(part.startswith(".") for part in p.relative_to(root).parts)]
    if not files:
        raise UsageError(f"{root}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return sorted(files)


def load_images(paths: Iterable[str | os.PathLike], config: ModelConfig) -> torch.Tensor:
    """Decode image files and apply the model's eval resize/crop: ``(N, 3, H, W)`` uint8.

    A file that cannot be read raises :class:`imgclass.data.decode.ImageError` naming it and the reason.
    """
    tf = EvalTransform.for_model(config)
    out = []
    for p in paths:
        p = Path(p)
        arr = decode_image(p.read_bytes(), str(p))
        out.append(tf(torch.from_numpy(arr).permute(2, 0, 1)))
    if not out:
        return torch.empty(0, 3, *config.input_size[1:], dtype=torch.uint8)
    return torch.stack(out).contiguous()


def normalize_map(m: np.ndarray | torch.Tensor, *, percentile: float = 99.5) -> np.ndarray:
    """A map scaled to [0, 1] for display: signed maps by their magnitude, clipped at a high percentile."""
    a = m.detach().float().cpu().numpy() if torch.is_tensor(m) else np.asarray(m, dtype=np.float32)
    if a.min() < 0:
        a = np.abs(a)
    a = a - a.min()
    hi = np.percentile(a, percentile)
    if hi <= 0:
        hi = a.max()
    return np.clip(a / hi, 0, 1) if hi > 0 else np.zeros_like(a)


def overlay(image: np.ndarray | torch.Tensor, m: np.ndarray | torch.Tensor, *, cmap: str = "jet",
            alpha: float = 0.5) -> np.ndarray:
    """The image (``(H, W, 3)``/``(3, H, W)`` uint8, or float in [0, 1]) blended with a colormap of the map:
    ``(H, W, 3)`` uint8."""
    from matplotlib import colormaps

    img = image.detach().cpu().numpy() if torch.is_tensor(image) else np.asarray(image)
    if img.ndim == 3 and img.shape[0] == 3 and img.shape[-1] != 3:
        img = img.transpose(1, 2, 0)
    img = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
    heat = colormaps[cmap](normalize_map(m))[..., :3].astype(np.float32)
    if heat.shape[:2] != img.shape[:2]:
        raise ValueError(f"map {heat.shape[:2]} and image {img.shape[:2]} differ in size")
    return np.clip(np.rint(((1 - alpha) * img + alpha * heat) * 255), 0, 255).astype(np.uint8)


def save_png(arr: np.ndarray, path: str | os.PathLike) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path
