"""FGSM (Goodfellow et al. 2015) and PGD with random start and restarts (Madry et al. 2018), Linf and L2.

The update arithmetic follows torchattacks' FGSM/PGD/PGDL2 operation for operation (gradient of the
batch-mean loss, sign or L2-normalised step, clamp to the ball, then to [0, 1]), so with the same
starting noise the adversarial images are the same. Unlike the peers, PGD by default stops working on
a sample as soon as an iterate fools the model and keeps that iterate (``early_stop``), which makes it
faster and never weaker; ``early_stop=False`` runs every step and returns the last iterate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UsageError
from .base import LOSSES, Attack, fooled, register_attack
from .rng import SampleRandom


def _l2_unit(g: torch.Tensor, eps_div: float) -> torch.Tensor:
    n = torch.norm(g.reshape(len(g), -1), p=2, dim=1) + eps_div
    return g / n.view(-1, 1, 1, 1)


def _step(x: torch.Tensor, adv: torch.Tensor, grad: torch.Tensor, alpha: float, eps: float, norm: str) -> torch.Tensor:
    """One ascent step and projection, in torchattacks' exact order of operations."""
    if norm == "linf":
        adv = adv + alpha * grad.sign()
        delta = torch.clamp(adv - x, min=-eps, max=eps)
        return torch.clamp(x + delta, min=0, max=1)
    adv = adv + alpha * _l2_unit(grad, 1e-10)
    delta = adv - x
    n = torch.norm(delta.reshape(len(x), -1), p=2, dim=1)
    factor = torch.min(eps / n, torch.ones_like(n))
    return torch.clamp(x + delta * factor.view(-1, 1, 1, 1), min=0, max=1)


def random_start(x: torch.Tensor, eps: float, norm: str, rng: SampleRandom) -> torch.Tensor:
    """A uniform point of the Linf ball, or a point of the L2 ball at a uniform radius (as torchattacks)."""
    if norm == "linf":
        noise = rng.uniform(*x.shape[1:], low=-eps, high=eps).to(x)
        return torch.clamp(x + noise, 0, 1)
    d = rng.normal(*x.shape[1:]).to(x)
    n = d.reshape(len(x), -1).norm(p=2, dim=1).view(-1, 1, 1, 1)
    r = rng.uniform(1, 1, 1).to(x)
    return torch.clamp(x + d * r / n * eps, 0, 1)


@register_attack("fgsm")
@dataclass(kw_only=True)
class FGSM(Attack):
    """Fast gradient sign method: one step of size ``eps`` along the sign (Linf) or the unit
    direction (L2, "fast gradient method") of the loss gradient."""

    loss: str = "ce"

    def __post_init__(self):
        super().__post_init__()
        if self.loss not in LOSSES:
            raise UsageError(f"unknown loss {self.loss!r}; known: {', '.join(LOSSES)}")

    def perturb(self, model, x, y, target, rng):
        _, grad, _ = self.loss_grad(model, x, LOSSES[self.loss](y, target), reduce="mean")
        if self.norm == "linf":
            return torch.clamp(x + self.eps * grad.sign(), 0, 1), None
        return torch.clamp(x + self.eps * _l2_unit(grad, 1e-10), 0, 1), None


@register_attack("pgd")
@dataclass(kw_only=True)
class PGD(Attack):
    """Projected gradient descent: ``steps`` steps of size ``step_size`` (default 2.5 * eps / steps,
    Madry et al.) from a random point of the ball, best of ``restarts`` runs."""

    steps: int = 20
    step_size: float | None = None
    random_start: bool = True
    restarts: int = 1
    loss: str = "ce"
    early_stop: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.loss not in LOSSES:
            raise UsageError(f"unknown loss {self.loss!r}; known: {', '.join(LOSSES)}")
        if self.steps < 1 or self.restarts < 1:
            raise UsageError(f"pgd needs steps >= 1 and restarts >= 1, got {self.steps} and {self.restarts}")

    @property
    def alpha(self) -> float:
        return self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps

    def __call__(self, model, x, y, *, target=None, seed=None, keys=None, start: torch.Tensor | None = None):
        """As :meth:`Attack.__call__`; ``start`` gives the first restart's starting images
        (e.g. to reproduce another library's random start)."""
        self._start = start
        try:
            return super().__call__(model, x, y, target=target, seed=seed, keys=keys)
        finally:
            self._start = None

    def perturb(self, model, x, y, target, rng):
        best = x.clone()
        todo = torch.arange(len(x), device=x.device)
        start = getattr(self, "_start", None)
        for r in range(self.restarts):
            if r == 0 and start is not None:
                init = start.detach().to(x)[todo]
            elif self.random_start:
                init = random_start(x[todo], self.eps, self.norm, rng.subset(todo))
            else:
                init = x[todo].clone()
            last = r == self.restarts - 1  # the last run's verdict comes from the final forward pass of __call__
            adv, done = self._run(model, x[todo], y[todo], None if target is None else target[todo], init,
                                  verdict=not last)
            best[todo] = adv
            todo = todo[~done]
            if len(todo) == 0:
                break
        return best, None

    def _run(self, model, x, y, target, adv, verdict: bool = True):
        """One PGD run; returns the adversarial images and which samples are fooled (without ``verdict``, only
        the early-stopped ones are known)."""
        out = adv.clone()
        done = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        act = torch.arange(len(x), device=x.device)
        xa, ya, ta = x, y, target
        for _ in range(self.steps):
            loss_fn = LOSSES[self.loss](ya, ta)
            _, grad, logits = self.loss_grad(model, adv, loss_fn, reduce="mean")
            if self.early_stop:
                hit = fooled(logits, ya, ta)
                if hit.any():  # keep the fooling iterate and stop working on it
                    out[act[hit]] = adv[hit]
                    done[act[hit]] = True
                    keep = ~hit
                    act, xa, ya, adv, grad = act[keep], xa[keep], ya[keep], adv[keep], grad[keep]
                    ta = None if ta is None else ta[keep]
                    if len(act) == 0:
                        return out, done
            adv = _step(xa, adv.detach(), grad, self.alpha, self.eps, self.norm).detach()
        out[act] = adv
        if verdict:
            with torch.no_grad():
                done[act] = fooled(model(adv), ya, ta)
        return out, done
