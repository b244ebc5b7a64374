"""Universal adversarial patch (Brown et al. 2017): one square patch, trained on some images, pasted at
random positions on others.

The patch is trained by signed-gradient steps on the loss averaged over random placements
(expectation over location); untargeted it raises the loss of the true class, with ``target_class``
it pushes every image towards that class. ``fit`` trains it on batches of one split, calling the
attack evaluates it on another (a new random position per image).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F

from ..errors import UsageError
from .base import Attack, register_attack
from .rng import SampleRandom


def place(x: torch.Tensor, patch: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Paste ``patch`` (C, s, s) on each image of ``x`` with its top-left corner at (rows[i], cols[i])."""
    n, c, h, w = x.shape
    s = patch.shape[-1]
    ar = torch.arange(s, device=x.device)
    r = (rows[:, None] + ar)[:, :, None]  # (N, s, 1)
    k = (cols[:, None] + ar)[:, None, :]  # (N, 1, s)
    i = torch.arange(n, device=x.device)[:, None, None]
    mask = torch.zeros(n, h, w, device=x.device, dtype=x.dtype)
    mask[i, r, k] = 1
    vals = patch.permute(1, 2, 0).unsqueeze(0).expand(n, s, s, c)  # (N, s, s, C)
    canvas = torch.zeros(n, h, w, c, device=x.device, dtype=x.dtype).index_put((i, r, k), vals)
    return x * (1 - mask[:, None]) + canvas.permute(0, 3, 1, 2)


@register_attack("patch")
@dataclass(kw_only=True)
class UniversalPatch(Attack):
    """A universal square patch covering ``size`` of the image area; ``fit`` before attacking."""

    size: float = 0.1
    target_class: int | None = None
    epochs: int = 5
    step_size: float = 1 / 255
    patch: torch.Tensor | None = None

    threat = "patch"
    supports_target = False

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.size < 1:
            raise UsageError(f"patch size is a fraction of the image area in (0, 1), got {self.size}")
        if self.epochs < 1 or self.step_size <= 0:
            raise UsageError("patch needs epochs >= 1 and step_size > 0")

    def params(self) -> dict:
        return {k: v for k, v in super().params().items() if k != "patch"}

    def side(self, h: int, w: int) -> int:
        """Side in pixels of the square patch on an h x w image."""
        return max(1, min(h, w, int(round(math.sqrt(self.size * h * w)))))

    def corners(self, n: int, h: int, w: int, gen: torch.Generator | SampleRandom,
                device) -> tuple[torch.Tensor, torch.Tensor]:
        """Random top-left corners: per sample from a :class:`SampleRandom` (evaluation), or from a generator
        (training)."""
        s = self.side(h, w)
        if isinstance(gen, SampleRandom):
            return gen.randint(0, h - s + 1).to(device), gen.randint(0, w - s + 1).to(device)
        rows = torch.randint(0, h - s + 1, (n,), generator=gen, device=device)
        cols = torch.randint(0, w - s + 1, (n,), generator=gen, device=device)
        return rows, cols

    def init(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """A uniformly random patch for images like ``x`` (also the occlusion baseline)."""
        s = self.side(*x.shape[-2:])
        return torch.rand((x.shape[1], s, s), generator=gen, device=x.device)

    def fit_step(self, model, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> float:
        """One signed-gradient step on a batch (random placements); returns the batch loss."""
        if self.patch is None:
            self.patch = self.init(x, gen)
        rows, cols = self.corners(len(x), *x.shape[-2:], gen, x.device)
        p = self.patch.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(place(x.detach(), p, rows, cols))
            if self.target_class is None:
                loss = F.cross_entropy(logits, y)  # ascend
            else:
                loss = -F.cross_entropy(logits, torch.full_like(y, self.target_class))
            g, = torch.autograd.grad(loss, p)
        self.patch = (p.detach() + self.step_size * g.sign()).clamp(0, 1)
        return float(loss.detach())

    def fit(self, model, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *, seed: int | None = None) -> torch.Tensor:
        """Train the patch for ``epochs`` passes over ``batches`` (a re-iterable of (images, labels))."""
        gen = None
        for _ in range(self.epochs):
            for x, y in batches:
                if gen is None:
                    gen = torch.Generator(device=x.device).manual_seed(int(self.seed if seed is None else seed))
                self.fit_step(model, x, y, gen)
        if self.patch is None:
            raise UsageError("patch: no training images")
        return self.patch

    def perturb(self, model, x, y, target, rng):
        if self.patch is None:
            raise UsageError("the patch is not trained: call fit(model, batches) first, or pass patch=")
        s = self.side(*x.shape[-2:])
        if self.patch.shape != (x.shape[1], s, s):
            raise UsageError(f"patch of shape {tuple(self.patch.shape)} does not fit images {tuple(x.shape[1:])} "
                             f"at size {self.size}")
        rows, cols = self.corners(len(x), *x.shape[-2:], rng, x.device)
        with torch.no_grad():
            return place(x, self.patch.to(x), rows, cols), None
