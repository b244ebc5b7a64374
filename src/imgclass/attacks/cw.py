"""Carlini & Wagner (2017) L2 attack: minimal perturbations by Adam in tanh space, binary search over c.

Minimises ``||x' - x||_2^2 + c * max(z_y - max_{j!=y} z_j, -kappa)`` (targeted: the target's margin)
over ``x' = (tanh(w) + 1) / 2``; per sample, ``c`` is halved towards the smallest value that still
succeeds, or multiplied by 10 until one does (the paper's search). Written here because the peers
(torchattacks) leave the binary search out. The authors and torchattacks stop the whole batch when its
summed loss stalls, which makes a sample's result depend on its batch; here ``abort_early=True`` stops
each sample when its own loss stalls (the authors' rule with their default batch of one), and by default
every sample takes every step (the strongest search, and the most work).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UsageError
from .base import Attack, margin, register_attack


@register_attack("cw")
@dataclass(kw_only=True)
class CarliniWagnerL2(Attack):
    """Minimal-L2 attack; the result's ``norm`` is the L2 size of the smallest adversarial found
    (``success`` False where none was)."""

    norm: str = "l2"
    steps: int = 100
    search_steps: int = 5
    initial_const: float = 1.0
    lr: float = 0.01
    kappa: float = 0.0
    abort_early: bool = False

    minimal = True
    norms = ("l2",)

    def __post_init__(self):
        super().__post_init__()
        if self.steps < 1 or self.search_steps < 1 or self.initial_const <= 0 or self.lr <= 0:
            raise UsageError("cw needs steps >= 1, search_steps >= 1, initial_const > 0 and lr > 0")

    def perturb(self, model, x, y, target, rng):
        n = len(x)
        dev = x.device
        # tanh space; the factor keeps pixels at exactly 0 or 1 movable
        w0 = torch.atanh((2 * x - 1) * (1 - 1e-6))
        lower = torch.zeros(n, device=dev)
        upper = torch.full((n,), 1e10, device=dev)
        c = torch.full((n,), float(self.initial_const), device=dev)
        best_l2 = torch.full((n,), float("inf"), device=dev)
        best = x.clone()

        def adversarial(logits: torch.Tensor) -> torch.Tensor:
            if target is None:
                return margin(logits, y) < -self.kappa if self.kappa > 0 else logits.argmax(1) != y
            return margin(logits, target) > self.kappa if self.kappa > 0 else logits.argmax(1) == target

        for _ in range(self.search_steps):
            w = w0.clone().requires_grad_(True)
            opt = torch.optim.Adam([w], lr=self.lr)
            succeeded = torch.zeros(n, dtype=torch.bool, device=dev)
            prev = torch.full((n,), float("inf"), device=dev)
            live = torch.ones(n, dtype=torch.bool, device=dev)  # still descending (abort_early stops a sample)
            for it in range(self.steps):
                with torch.enable_grad():
                    adv = (torch.tanh(w) + 1) / 2
                    l2 = (adv - x).pow(2).flatten(1).sum(1)
                    logits = model(adv)
                    f = margin(logits, y) if target is None else -margin(logits, target)
                    loss_vec = l2 + c * torch.clamp(f, min=-self.kappa)
                    loss = loss_vec.sum()
                    g, = torch.autograd.grad(loss, w)
                w.grad = g
                held = None if bool(live.all()) else w.detach().clone()
                opt.step()
                if held is not None:  # stopped samples keep their point
                    with torch.no_grad():
                        w.copy_(torch.where(live.view(-1, 1, 1, 1), w, held))
                with torch.no_grad():
                    ok = adversarial(logits.detach())
                    succeeded |= ok
                    better = ok & (l2.detach() < best_l2)
                    best_l2 = torch.where(better, l2.detach(), best_l2)
                    best = torch.where(better.view(-1, 1, 1, 1), adv.detach(), best)
                if self.abort_early and it % max(self.steps // 10, 1) == 0:
                    cur = loss_vec.detach()
                    live &= ~(cur > prev * 0.9999)
                    if not bool(live.any()):
                        break
                    prev = torch.where(live, cur, prev)
            upper = torch.where(succeeded, torch.minimum(upper, c), upper)
            lower = torch.where(succeeded, lower, torch.maximum(lower, c))
            c = torch.where(succeeded | (upper < 1e9), (lower + upper) / 2, c * 10)
        return best, None
