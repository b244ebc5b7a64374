"""Adversarial training: PGD (Madry et al. 2018), TRADES (Zhang et al. 2019), AdvProp's auxiliary BN (Xie et al. 2020).

Adversarial examples come from :mod:`imgclass.attacks` (PGD) or, for TRADES' KL objective, from the
same projected sign-gradient steps; they are generated with the model in eval mode (batch-norm running
statistics untouched, as in the TRADES reference code). Their random starts are drawn per image from (seed, epoch,
sample index), so an image's adversarial example does not depend on the batch around it: N processes of batch B
attack exactly as one process of batch N*B does.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError
from ..attacks import SampleRandom, get_attack, project
from .losses import classification_loss, trades_kl

__all__ = ["AdversarialTraining", "DualBatchNorm2d", "convert_dual_bn", "aux_bn", "main_bn_state_dict"]


class DualBatchNorm2d(nn.Module):
    """Two batch norms, ``main`` for clean and ``aux`` for adversarial images (AdvProp)."""

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        self.main = bn
        self.aux = copy.deepcopy(bn)
        self.route = "main"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.aux(x) if self.route == "aux" else self.main(x)


def convert_dual_bn(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d in ``model`` (in place) by a DualBatchNorm2d."""
    for name, child in model.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(model, name, DualBatchNorm2d(child))
        else:
            convert_dual_bn(child)
    return model


@contextmanager
def aux_bn(model: nn.Module, enabled: bool = True):
    """Route all DualBatchNorm2d layers of ``model`` through their auxiliary BN inside the block."""
    duals = [m for m in model.modules() if isinstance(m, DualBatchNorm2d)] if enabled else []
    for m in duals:
        m.route = "aux"
    try:
        yield
    finally:
        for m in duals:
            m.route = "main"


def main_bn_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each dual BN's main half under the original names, the auxiliary half left out."""
    duals = [name + "." if name else "" for name, m in model.named_modules() if isinstance(m, DualBatchNorm2d)]
    out = {}
    for k, v in model.state_dict().items():
        prefix = next((p for p in duals if k.startswith(p + "aux.") or k.startswith(p + "main.")), None)
        if prefix is None:
            out[k] = v
        elif k.startswith(prefix + "main."):
            out[prefix + k[len(prefix) + 5:]] = v
    return out


@dataclass
class AdversarialTraining:
    mode: str  # 'pgd' | 'trades'
    eps: float
    steps: int
    step_size: float
    beta: float = 6.0
    advprop: bool = False
    seed: int = 0

    @classmethod
    def from_config(cls, cfg) -> "AdversarialTraining":
        if cfg.adv not in {"pgd", "trades"}:
            raise UsageError(f"adv must be 'pgd' or 'trades', got {cfg.adv!r}")
        if cfg.mixup > 0 or cfg.cutmix > 0:
            raise UsageError("adversarial training with mixup/cutmix is not supported; set mixup=0 and cutmix=0")
        if cfg.advprop and cfg.adv != "pgd":
            raise UsageError("advprop pairs clean and PGD examples: use adv=pgd with advprop")
        step = cfg.adv_step_size if cfg.adv_step_size is not None else 2.5 * cfg.adv_eps / cfg.adv_steps
        return cls(cfg.adv, float(cfg.adv_eps), int(cfg.adv_steps), float(step), float(cfg.trades_beta),
                   bool(cfg.advprop), int(cfg.seed))

    def _generate(self, clf: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int,
                  keys: torch.Tensor | None) -> torch.Tensor:
        was_training = clf.training
        clf.eval()
        try:
            with aux_bn(clf, self.advprop):
                if self.mode == "pgd":
                    attack = get_attack("pgd", eps=self.eps, steps=self.steps, step_size=self.step_size,
                                        early_stop=False, seed=seed)
                    return attack(clf, x, y, keys=keys).adv
                return self._trades_points(clf, x, seed, keys)
        finally:
            clf.train(was_training)

    def _trades_points(self, clf: nn.Module, x: torch.Tensor, seed: int, keys: torch.Tensor | None) -> torch.Tensor:
        """TRADES' inner maximisation of KL(f(x) || f(x')) by projected sign-gradient ascent."""
        rng = SampleRandom(keys, seed) if keys is not None else SampleRandom.for_batch(len(x), seed, x.device)
        with torch.no_grad():
            clean = clf(x).float().log_softmax(1)
        start = rng.normal(*x.shape[1:]).to(device=x.device, dtype=x.dtype)
        adv = (x + 0.001 * start).clamp(0, 1)
        for _ in range(self.steps):
            adv = adv.detach().requires_grad_(True)
            with torch.enable_grad():
                kl = F.kl_div(clf(adv).float().log_softmax(1), clean, reduction="sum", log_target=True)
                g, = torch.autograd.grad(kl, adv)
            adv = project(x, adv.detach() + self.step_size * g.sign(), self.eps, "linf")
        return adv.detach()

    def loss(self, model: nn.Module, clf: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int,
             label_smoothing: float = 0.0, keys: torch.Tensor | None = None) -> torch.Tensor:
        """The training loss of one batch; ``model`` is what to train through (DDP or the classifier). ``keys`` (one
        per image, from the sample and the epoch) make each image's random start its own, whatever the batch."""
        x_adv = self._generate(clf, x, y, seed, keys)
        if self.mode == "pgd":
            if self.advprop:  # clean images through the main BN, adversarial ones through the auxiliary BN
                clean = classification_loss(model(x), y, label_smoothing=label_smoothing)
                with aux_bn(clf):
                    return clean + classification_loss(model(x_adv), y, label_smoothing=label_smoothing)
            return classification_loss(model(x_adv), y, label_smoothing=label_smoothing)
        clean_logits = model(x)  # two passes, as the TRADES reference code does
        adv_logits = model(x_adv)
        return classification_loss(clean_logits, y, label_smoothing=label_smoothing) + \
            self.beta * trades_kl(adv_logits, clean_logits)
