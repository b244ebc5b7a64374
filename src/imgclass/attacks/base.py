"""The attack protocol: one call shape, seeding, losses, projections and a registry by name.

Every attack works in pixel space: ``x`` is float ``(N, C, H, W)`` in [0, 1] and ``model(x)`` returns
logits (a :class:`~imgclass.models.classifier.Classifier` normalizes inside), so epsilons are pixel
units. ``attack(model, x, y)`` returns an :class:`AttackResult` whose ``success`` comes from one final
forward pass on the adversarial images. Attacks never change the model's mode or its parameters'
gradients; gradients are taken in float32 with ``torch.autograd.grad`` on the input only.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import zlib
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F

from ..errors import ParameterError, UsageError
from ..registry import Registry
from .rng import SampleRandom, sample_keys

__all__ = [
    "Attack", "AttackResult", "ATTACKS", "register_attack", "get_attack", "NORMS",
    "parse_eps", "format_eps", "perturbation_norm", "margin", "dlr_loss", "dlr_loss_targeted",
    "project", "derive_seed", "check_budget", "SampleRandom", "sample_keys",
]

NORMS = ("linf", "l2")
ATTACKS: Registry[type["Attack"]] = Registry("attack")

Model = Callable[[torch.Tensor], torch.Tensor]


def register_attack(name: str):
    """Class decorator: make an attack available by ``name`` (``get_attack(name, ...)``)."""

    def deco(cls: type["Attack"]) -> type["Attack"]:
        cls.name = name
        ATTACKS[name] = cls
        return cls

    return deco


def get_attack(name: str, **params: Any) -> "Attack":
    """Instantiate a registered attack; unknown names and parameters raise errors that list the known ones."""
    cls = ATTACKS[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(params) - fields
    if unknown:
        raise ParameterError(f"attack {name!r} has no parameter(s) {', '.join(sorted(unknown))}; "
                        f"parameters: {', '.join(sorted(fields))}")
    return cls(**params)


def parse_eps(text: str | float | int) -> float:
    """``"8/255"`` -> 0.03137..., ``"0.5"`` -> 0.5 (epsilons are pixel units of [0, 1])."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        s = str(text).strip()
        num, sep, den = s.partition("/")
        try:
            value = float(num) / float(den) if sep else float(num)
        except (ValueError, ZeroDivisionError):
            raise UsageError(f"cannot read epsilon {text!r}: expected a number or a fraction like '8/255'") from None
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"epsilon must be a finite number >= 0, got {text!r}")
    return value


def check_budget(value: float, norm: str, *, text: str | float | None = None,
                 input_size: tuple[int, ...] | None = None, what: str = "eps") -> float:
    """``value`` if it can mean what it says for ``norm`` on [0, 1] pixels, else a :class:`UsageError` that says how to
    write it: a Linf budget above 1 is more than the whole pixel range (``8`` is almost always ``8/255``), an L2
    budget above the image's diagonal ``sqrt(C*H*W)`` (known from ``input_size``) is larger than any distance
    between two images. 0 is allowed (the clean point)."""
    shown = str(text).strip() if text is not None else f"{value:g}"
    plain = "/" not in shown
    if norm == "linf" and value > 1:
        hint = f"; did you mean {shown}/255?" if plain else "; epsilons are pixel units of [0, 1], e.g. 8/255"
        raise UsageError(f"{what} {shown} is more than the whole [0, 1] pixel range (Linf){hint}")
    if norm == "l2" and input_size is not None:
        diag = math.sqrt(math.prod(int(d) for d in input_size))
        if value > diag:
            hint = f"; did you mean {shown}/255 ({value / 255:.3g})?" if plain else ""
            raise UsageError(f"{what} {shown} is larger than any L2 distance between two images of size "
                             f"{'x'.join(str(int(d)) for d in input_size)} in [0, 1] (the diagonal sqrt(C*H*W) = "
                             f"{diag:.3g}){hint}")
    return value


def format_eps(value: float) -> str:
    """The key an epsilon gets in results: ``k/255`` when it is a whole number of grey levels."""
    k = value * 255
    if abs(k - round(k)) < 1e-9 and round(k) > 0:
        return f"{int(round(k))}/255"
    return f"{value:g}"


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed that depends only on ``parts`` (run seed, attack name, batch start...)."""
    h = 0
    for p in parts:
        h = zlib.crc32(repr(p).encode(), h)
    return (h * 0x9E3779B97F4A7C15 + len(parts)) % (2**63 - 1)


# -- losses (per sample; larger is better for the attacker unless stated) -----------------------------

def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``z_y - max_{j != y} z_j``: positive while the prediction is ``y``."""
    z_y = logits.gather(1, y[:, None])[:, 0]
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return z_y - other


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference-of-logits-ratio loss (Croce & Hein 2020), invariant to shifting and scaling logits."""
    srt = logits.sort(dim=1).values
    z_y = logits.gather(1, y[:, None])[:, 0]
    top_is_y = logits.argmax(1) == y
    other = torch.where(top_is_y, srt[:, -2], srt[:, -1])
    return -(z_y - other) / (srt[:, -1] - srt[:, -3] + 1e-12)


def dlr_loss_targeted(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR loss (Croce & Hein 2020)."""
    srt = logits.sort(dim=1).values
    z_y = logits.gather(1, y[:, None])[:, 0]
    z_t = logits.gather(1, target[:, None])[:, 0]
    return -(z_y - z_t) / (srt[:, -1] - 0.5 * (srt[:, -3] + srt[:, -4]) + 1e-12)


# -- geometry ------------------------------------------------------------------------------------

def perturbation_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample size of ``delta`` in ``norm`` ('linf' or 'l2')."""
    flat = delta.flatten(1)
    if norm == "linf":
        return flat.abs().amax(1)
    if norm == "l2":
        return flat.norm(p=2, dim=1)
    raise UsageError(f"unknown norm {norm!r}; known: {', '.join(NORMS)}")


def _view(t: torch.Tensor) -> torch.Tensor:
    return t.view(-1, 1, 1, 1)


def project(x: torch.Tensor, adv: torch.Tensor, eps: float | torch.Tensor, norm: str) -> torch.Tensor:
    """Project ``adv`` onto the ``eps`` ball around ``x`` and the [0, 1] box (box last, as the peers do)."""
    delta = adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps) if not torch.is_tensor(eps) else torch.max(torch.min(delta, eps), -eps)
    else:
        n = delta.flatten(1).norm(p=2, dim=1)
        e = eps if torch.is_tensor(eps) else torch.full_like(n, eps)
        delta = delta * _view(torch.minimum(e.flatten() / n, torch.ones_like(n)))
    return (x + delta).clamp(0, 1)


# -- the protocol --------------------------------------------------------------------------------

@dataclass
class AttackResult:
    """Adversarial images and what it took to find them (all per sample, first dimension N)."""

    adv: torch.Tensor  # (N, C, H, W) in [0, 1]
    success: torch.Tensor  # (N,) bool: the model's prediction on ``adv`` is wrong (or the target)
    norm: torch.Tensor  # (N,) size of adv - x in the attack's norm
    queries: torch.Tensor | None = None  # (N,) model calls per sample (black-box attacks)


@dataclass(kw_only=True)
class Attack(abc.ABC):
    """Base class. Subclasses are keyword-only dataclasses (their fields are the parameters) that
    implement ``perturb(model, x, y, target, rng) -> (adv, queries or None)``, drawing random numbers per
    sample from ``rng`` (a :class:`~imgclass.attacks.rng.SampleRandom`), so that a sample's result does not
    depend on the other samples of the batch.

    ``eps`` bounds the perturbation in ``norm`` (ignored by minimal-perturbation attacks), ``seed``
    seeds every random draw, ``eot_samples`` averages gradients over that many forward passes
    (expectation over transformation, for randomized models).
    """

    eps: float | None = None
    norm: str = "linf"
    seed: int = 0
    eot_samples: int = 1

    name: ClassVar[str] = ""
    threat: ClassVar[str] = "white-box"  # 'white-box' | 'black-box (scores)' | 'black-box (decisions)' | 'patch'
    minimal: ClassVar[bool] = False  # finds minimal perturbations; robustness at eps = norm > eps
    norms: ClassVar[tuple[str, ...]] = NORMS
    supports_target: ClassVar[bool] = True

    def __post_init__(self):
        if self.norm not in self.norms:
            raise UsageError(f"attack {self.name!r} supports norm(s) {', '.join(self.norms)}, not {self.norm!r}")
        if not self.minimal and self.threat != "patch":
            if self.eps is None:
                raise UsageError(f"attack {self.name!r} needs eps (e.g. 8/255)")
            text = self.eps
            self.eps = check_budget(parse_eps(self.eps), self.norm, text=text if isinstance(text, str) else None)
        if self.eot_samples < 1:
            raise UsageError(f"eot_samples must be >= 1, got {self.eot_samples}")

    def params(self) -> dict:
        """The attack's parameters (for results.json)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def __call__(self, model: Model, x: torch.Tensor, y: torch.Tensor, *, target: torch.Tensor | None = None,
                 seed: int | None = None, keys: torch.Tensor | None = None) -> AttackResult:
        """Attack ``model`` at clean images ``x`` (float in [0, 1]) with labels ``y``; with ``target``,
        try to make the model predict those classes instead. ``keys`` (int64, one per sample, e.g.
        :func:`~imgclass.attacks.rng.sample_keys` of the dataset indices) make each sample's random draws its
        own, so the result does not depend on the batch; without them the keys come from the seed and the
        position in the batch."""
        _check_inputs(x, y, target, self)
        if len(x) == 0:
            return AttackResult(x.clone(), torch.zeros(0, dtype=torch.bool, device=x.device),
                                torch.zeros(0, device=x.device))
        if self.norm == "l2" and self.eps is not None:
            check_budget(self.eps, "l2", input_size=tuple(x.shape[1:]))
        s = int(self.seed if seed is None else seed)
        if keys is None:
            rng = SampleRandom.for_batch(len(x), s, x.device)
        else:
            if keys.shape != (len(x),):
                raise UsageError(f"attack {self.name!r}: keys must have shape ({len(x)},), got {tuple(keys.shape)}")
            rng = SampleRandom(keys.to(x.device), s)
        x = x.detach().float()
        adv, queries = self.perturb(model, x, y, target, rng)
        adv = adv.detach()
        with torch.no_grad():
            pred = model(adv).argmax(1)
        success = pred != y if target is None else pred == target
        return AttackResult(adv, success, perturbation_norm(adv - x, self.norm), queries)

    @abc.abstractmethod
    def perturb(self, model: Model, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
                rng: SampleRandom) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The attack itself: adversarial images and, for black-box attacks, queries per sample."""

    # helpers shared by the gradient attacks
    def loss_grad(self, model: Model, x: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor], *,
                  reduce: str = "sum") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample loss, gradient of its sum (or mean) w.r.t. ``x`` and logits, averaged over
        ``eot_samples`` forward/backward passes."""
        grad = None
        loss_acc = None
        for _ in range(self.eot_samples):
            xr = x.detach().requires_grad_(True)
            with torch.enable_grad():
                logits = model(xr)
                loss = loss_fn(logits)
                total = loss.mean() if reduce == "mean" else loss.sum()
                g, = torch.autograd.grad(total, xr)
            grad = g if grad is None else grad + g
            loss_acc = loss.detach() if loss_acc is None else loss_acc + loss.detach()
        if self.eot_samples > 1:
            grad = grad / self.eot_samples
            loss_acc = loss_acc / self.eot_samples
        return loss_acc, grad, logits.detach()


def _check_inputs(x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, attack: Attack) -> None:
    if not torch.is_tensor(x) or x.dim() != 4 or not x.is_floating_point():
        raise UsageError(f"attack {attack.name!r}: expected float images (N, C, H, W) in [0, 1], got "
                         f"{getattr(x, 'dtype', type(x))} {tuple(getattr(x, 'shape', ()))}")
    if len(x) and (float(x.min()) < -1e-6 or float(x.max()) > 1 + 1e-6):
        raise UsageError(f"attack {attack.name!r}: pixels must lie in [0, 1], got [{float(x.min()):.3f}, "
                         f"{float(x.max()):.3f}] (the Classifier normalizes inside; pass unnormalized pixels)")
    if not torch.is_tensor(y) or y.shape != (len(x),) or y.dtype != torch.long:
        raise UsageError(f"attack {attack.name!r}: labels must be int64 of shape ({len(x)},), got "
                         f"{getattr(y, 'dtype', type(y))} {tuple(getattr(y, 'shape', ()))}")
    if target is not None:
        if not attack.supports_target:
            raise UsageError(f"attack {attack.name!r} is untargeted; it takes no target")
        if not torch.is_tensor(target) or target.shape != y.shape or target.dtype != torch.long:
            raise UsageError(f"attack {attack.name!r}: target must be int64 of shape ({len(x)},)")


def ce_loss(y: torch.Tensor, target: torch.Tensor | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Cross-entropy to increase (untargeted) or, with a target, minus the cross-entropy to the target."""
    if target is None:
        return lambda z: F.cross_entropy(z, y, reduction="none")
    return lambda z: -F.cross_entropy(z, target, reduction="none")


def margin_loss(y: torch.Tensor, target: torch.Tensor | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Minus the margin of the true class (untargeted) or the margin of the target (targeted)."""
    if target is None:
        return lambda z: -margin(z, y)
    return lambda z: margin(z, target)


LOSSES: dict[str, Callable] = {"ce": ce_loss, "margin": margin_loss,
                               "dlr": lambda y, t: (lambda z: dlr_loss(z, y)) if t is None
                               else (lambda z: dlr_loss_targeted(z, y, t))}


def fooled(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    pred = logits.argmax(1)
    return pred != y if target is None else pred == target
