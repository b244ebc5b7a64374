"""Auto-PGD (Croce & Hein 2020): step-size-free PGD with momentum, CE or DLR loss, and its targeted
DLR variant (APGD-T), Linf and L2.

Written after the authors' reference (auto-attack's ``autopgd_base.py``): step size 2*eps halved at
checkpoints when fewer than rho of the steps since the last checkpoint raised the loss, or when
neither the step size nor the best loss changed; momentum 0.75; restart from the best point. Samples
leave the batch as soon as an iterate fools the model (the iterate is kept), which changes nothing
for the others and saves most of the work on weak models.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import UsageError
from .base import Attack, dlr_loss, dlr_loss_targeted, register_attack
from .rng import SampleRandom


def _checkpoint_lengths(n_iter: int) -> tuple[int, int, int]:
    return max(int(0.22 * n_iter), 1), max(int(0.06 * n_iter), 1), max(int(0.03 * n_iter), 1)


def _l2n(t: torch.Tensor) -> torch.Tensor:
    return (t ** 2).sum(dim=(1, 2, 3), keepdim=True).sqrt()


def _proj(x: torch.Tensor, z: torch.Tensor, eps: float, norm: str, plus: float = 0.0) -> torch.Tensor:
    if norm == "linf":
        return torch.clamp(torch.min(torch.max(z, x - eps), x + eps), 0.0, 1.0)
    d = z - x
    n = _l2n(d)
    return torch.clamp(x + d / (n + 1e-12) * torch.clamp(n + plus, max=eps), 0.0, 1.0)


@dataclass(kw_only=True)
class _APGD(Attack):
    steps: int = 100
    restarts: int = 1
    rho: float = 0.75

    loss: str = "ce"

    def __post_init__(self):
        super().__post_init__()
        if self.steps < 1 or self.restarts < 1:
            raise UsageError(f"{self.name} needs steps >= 1 and restarts >= 1")

    def _init(self, x: torch.Tensor, rng: SampleRandom) -> torch.Tensor:
        if self.norm == "linf":
            t = 2 * rng.uniform(*x.shape[1:]).to(x) - 1
            return (x + self.eps * t / t.reshape(len(t), -1).abs().amax(1).view(-1, 1, 1, 1)).clamp(0, 1)
        t = rng.normal(*x.shape[1:]).to(x)
        return (x + self.eps * t / (_l2n(t) + 1e-12)).clamp(0, 1)

    def _loss_fn(self, y: torch.Tensor, tgt: torch.Tensor | None):
        if tgt is not None:
            return lambda z: dlr_loss_targeted(z, y, tgt)
        if self.loss == "dlr":
            return lambda z: dlr_loss(z, y)
        return lambda z: F.cross_entropy(z, y, reduction="none")

    def run_once(self, model, x: torch.Tensor, y: torch.Tensor, tgt: torch.Tensor | None,
                 rng: SampleRandom) -> tuple[torch.Tensor, torch.Tensor]:
        """One APGD run on all of ``x``; returns (adversarial or best-loss images, fooled mask)."""
        n = len(x)
        dev = x.device
        n2, n_min, size_decr = _checkpoint_lengths(self.steps)
        eps = self.eps
        x_adv = self._init(x, rng)
        out = x_adv.clone()
        done = torch.zeros(n, dtype=torch.bool, device=dev)
        loss_steps = torch.zeros(self.steps, n, device=dev)

        act = torch.arange(n, device=dev)
        xa, ya, ta = x, y, tgt
        loss, grad, logits = self.loss_grad(model, x_adv, self._loss_fn(ya, ta))
        x_best, grad_best, loss_best = x_adv.clone(), grad.clone(), loss.clone()
        step = torch.full((n, 1, 1, 1), 2.0 * eps, device=dev)
        x_old = x_adv.clone()
        k, counter = n2, 0
        loss_best_last = loss_best.clone()
        reduced_last = torch.ones(n, dtype=torch.bool, device=dev)

        def drop(hit):
            nonlocal act, xa, ya, ta, x_adv, x_old, x_best, grad, grad_best, loss_best, step, loss_best_last
            nonlocal reduced_last
            out[act[hit]] = x_adv[hit]
            done[act[hit]] = True
            keep = ~hit
            act, xa, ya, x_adv, x_old, x_best = act[keep], xa[keep], ya[keep], x_adv[keep], x_old[keep], x_best[keep]
            grad, grad_best, loss_best, step = grad[keep], grad_best[keep], loss_best[keep], step[keep]
            loss_best_last, reduced_last = loss_best_last[keep], reduced_last[keep]
            ta = None if ta is None else ta[keep]

        hit = logits.argmax(1) != ya
        if hit.any():
            drop(hit)
        for i in range(self.steps):
            if len(act) == 0:
                break
            with torch.no_grad():
                grad2 = x_adv - x_old
                x_old = x_adv
                a = 0.75 if i > 0 else 1.0
                if self.norm == "linf":
                    z = _proj(xa, x_adv + step * grad.sign(), eps, "linf")
                    x_new = _proj(xa, x_adv + (z - x_adv) * a + grad2 * (1 - a), eps, "linf")
                else:
                    z = _proj(xa, x_adv + step * grad / (_l2n(grad) + 1e-12), eps, "l2")
                    x_new = _proj(xa, x_adv + (z - x_adv) * a + grad2 * (1 - a), eps, "l2", plus=1e-12)
            x_adv = x_new
            loss, grad, logits = self.loss_grad(model, x_adv, self._loss_fn(ya, ta))
            loss_steps[i, act] = loss
            better = loss > loss_best
            x_best = torch.where(better.view(-1, 1, 1, 1), x_adv, x_best)
            grad_best = torch.where(better.view(-1, 1, 1, 1), grad, grad_best)
            loss_best = torch.where(better, loss, loss_best)
            hit = logits.argmax(1) != ya
            if hit.any():  # keep the fooling iterate, stop working on the sample
                drop(hit)
                if len(act) == 0:
                    break
            counter += 1
            if counter == k:
                # how many of the last k steps raised the loss (the step before the first compares with 0)
                if i >= k:
                    ups = (loss_steps[i - k + 1:i + 1, act] > loss_steps[i - k:i, act]).sum(0)
                else:
                    prev = torch.cat([torch.zeros(1, len(act), device=dev), loss_steps[:i, act]])
                    ups = (loss_steps[:i + 1, act] > prev).sum(0)
                red = (ups <= k * self.rho) | (~reduced_last & (loss_best_last >= loss_best))
                reduced_last = red
                loss_best_last = loss_best.clone()
                if red.any():
                    r4 = red.view(-1, 1, 1, 1)
                    step = torch.where(r4, step / 2.0, step)
                    x_adv = torch.where(r4, x_best, x_adv)
                    grad = torch.where(r4, grad_best, grad)
                counter = 0
                k = max(k - size_decr, n_min)
        if len(act):
            out[act] = x_best
        return out, done


@register_attack("apgd-ce")
@dataclass(kw_only=True)
class APGDCE(_APGD):
    """APGD with the cross-entropy loss."""

    loss: str = "ce"

    def perturb(self, model, x, y, target, rng):
        if target is not None:
            raise UsageError("apgd-ce is untargeted; use apgd-t for targeted APGD")
        return _restarts(self, model, x, y, rng)[0], None


@register_attack("apgd-dlr")
@dataclass(kw_only=True)
class APGDDLR(_APGD):
    """APGD with the DLR loss (needs at least 3 classes)."""

    loss: str = "dlr"

    def perturb(self, model, x, y, target, rng):
        if target is not None:
            raise UsageError("apgd-dlr is untargeted; use apgd-t for targeted APGD")
        with torch.no_grad():
            n_cls = model(x[:1]).shape[1]
        if n_cls < 3:
            raise UsageError(f"apgd-dlr needs at least 3 classes, the model has {n_cls}")
        return _restarts(self, model, x, y, rng)[0], None


def _restarts(att: _APGD, model, x, y, rng: SampleRandom, tgt=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Best images over the restarts and which samples were misclassified (by the forward pass that found them)."""
    best = x.clone()
    fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    todo = torch.arange(len(x), device=x.device)
    for _ in range(att.restarts):
        adv, done = att.run_once(model, x[todo], y[todo], None if tgt is None else tgt[todo], rng.subset(todo))
        best[todo] = adv
        fooled[todo[done]] = True
        todo = todo[~done]
        if len(todo) == 0:
            break
    return best, fooled


@register_attack("apgd-t")
@dataclass(kw_only=True)
class APGDT(_APGD):
    """Targeted APGD with the targeted DLR loss, tried against the ``targets`` most likely wrong
    classes in turn (on the samples not yet fooled); success is any misclassification."""

    loss: str = "dlr-targeted"
    targets: int = 9
    supports_target = False

    def perturb(self, model, x, y, target, rng):
        with torch.no_grad():
            order = model(x).sort(dim=1, descending=True).indices
        n_cls = order.shape[1]
        if n_cls < 4:
            raise UsageError(f"apgd-t needs at least 4 classes, the model has {n_cls}")
        best = x.clone()
        todo = torch.arange(len(x), device=x.device)
        for t in range(1, min(self.targets, n_cls - 1) + 1):
            if len(todo) == 0:
                break
            tgt = order[todo, t]
            adv, fooled = _restarts(self, model, x[todo], y[todo], rng.subset(todo), tgt)
            best[todo] = adv
            todo = todo[~fooled]
        return best, None

