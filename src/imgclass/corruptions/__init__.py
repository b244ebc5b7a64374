"""Common corruptions (Hendrycks & Dietterich, ICLR 2019) as batched torch functions on uint8 images.

``corrupt(images, name, severity, seed=..., sample_ids=...)`` takes a uint8 (N, 3, H, W) batch on any
device and returns the corrupted batch, uint8, same shape and device. Two parameter sets: ``imagenet``
(the ``imagecorruptions`` 1.1.2 package, any image size) and ``cifar10`` (Hendrycks' CIFAR-10-C
generator, 32x32). Outputs follow the reference operation by operation, including its truncation to
uint8. Each image's random draw comes from its own key, made from (seed, corruption, severity, sample id)
only: batch size, batch order and the number of processes change nothing. The draws come from a counter-based
stream of that key (``stream.words`` / ``uniforms``), bit for bit the same on every device (the normals of snow
and spatter go through the device's log and cosine, which may differ in the last bit).
On the CPU most corruptions run as numba kernels (each family's ``*_kernels`` module beside its tensor code, all
switched and split by ``kernels``) that the tests hold equal to the tensor code; the rest in pieces that fit the
cache (each corruption says how large), several times faster than whole multi-megabyte batches.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..errors import ParameterError, UsageError
from . import blur, digital, noise, weather  # noqa: F401  (they fill the registry)
from .base import REGISTRY, keys
from . import kernels
from .params import PARAM_SETS, TABLES, get_params

CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
    "speckle_noise", "gaussian_blur", "spatter", "saturate",
)
COMMON: tuple[str, ...] = CORRUPTIONS[:15]  # the 15 ImageNet-C corruptions behind mCE
EXTRA: tuple[str, ...] = CORRUPTIONS[15:]  # the 4 held-out ones
RANDOM: tuple[str, ...] = tuple(n for n in CORRUPTIONS if REGISTRY[n].draw is not None)
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

__all__ = ["CORRUPTIONS", "COMMON", "EXTRA", "RANDOM", "SEVERITIES", "PARAM_SETS", "corrupt", "draw", "apply",
           "get_params"]


def _check(images: torch.Tensor, name: str) -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        raise ParameterError(f"corrupt expects a uint8 torch.Tensor, got "
                        f"{type(images).__name__}{'' if not isinstance(images, torch.Tensor) else ' ' + str(images.dtype)}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise UsageError(f"corrupt expects images of shape (N, 3, H, W), got {tuple(images.shape)}")
    if min(images.shape[-2:]) < 8:
        raise UsageError(f"images must be at least 8x8 pixels, got {tuple(images.shape[-2:])}")
    REGISTRY[name]  # an unknown name: UnknownNameError with the close matches and the list


def draw(images: torch.Tensor, name: str, severity: int, *, seed: int, sample_ids: Sequence[str | int],
         params: str = "imagenet") -> dict:
    """The random variables of a corruption for each image (empty for the deterministic ones)."""
    _check(images, name)
    p = get_params(name, severity, params)
    if len(sample_ids) != len(images):
        raise UsageError(f"{len(sample_ids)} sample ids for {len(images)} images")
    c = REGISTRY[name]
    if c.draw is None:
        return {}
    return c.draw(keys(seed, name, severity, sample_ids).to(images.device), images, p, params)


def apply(images: torch.Tensor, name: str, severity: int, draws: dict, *, params: str = "imagenet") -> torch.Tensor:
    """Corrupt with given random variables (as ``draw`` makes them)."""
    _check(images, name)
    p = get_params(name, severity, params)
    return REGISTRY[name].apply(images.contiguous(), p, params, **draws)


def corrupt(images: torch.Tensor, name: str, severity: int, *, seed: int, sample_ids: Sequence[str | int],
            params: str = "imagenet") -> torch.Tensor:
    """Corrupt a uint8 (N, 3, H, W) batch; uint8 out, same shape and device.

    ``params``: ``"imagenet"`` (imagecorruptions 1.1.2) or ``"cifar10"`` (the CIFAR-10-C generator).
    """
    if isinstance(images, torch.Tensor) and images.dim() == 4 and len(images) == 0:
        get_params(name, severity, params)
        _check(torch.zeros((1, 3, 8, 8), dtype=torch.uint8), name)
        return images.clone()
    _check(images, name)
    if len(sample_ids) != len(images):
        raise UsageError(f"{len(sample_ids)} sample ids for {len(images)} images")
    c = REGISTRY[name]
    if c.fused is not None and kernels.HAVE_NUMBA and images.device.type == "cpu":
        p = get_params(name, severity, params)
        k = keys(seed, name, severity, sample_ids) if c.draw is not None else None  # hashing costs at 32 px
        out = c.fused(images.contiguous(), k, p, params)
        if out is not None:  # None: no kernel for this parameter set
            return out
    step = len(images)
    if images.device.type == "cpu":
        step = max(1, REGISTRY[name].chunk // max(1, images[0].numel()))
    with torch.no_grad():
        if step >= len(images):
            d = draw(images, name, severity, seed=seed, sample_ids=sample_ids, params=params)
            return apply(images, name, severity, d, params=params)
        out = torch.empty_like(images)
        for i in range(0, len(images), step):  # each image's draw is its own: pieces change nothing
            part, ids = images[i:i + step], list(sample_ids[i:i + step])
            out[i:i + step] = apply(part, name, severity,
                                    draw(part, name, severity, seed=seed, sample_ids=ids, params=params), params=params)
        return out
