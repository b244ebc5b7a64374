"""The probe's parameters: attack names, epsilons checked against the threat model, and the ensemble rule."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...attacks import ATTACKS, check_budget, parse_eps
from ...errors import UsageError, unknown_name

__all__ = ["AdversarialParams", "DEFAULT_ATTACKS", "ENSEMBLE", "parse_names", "parse_eps_list", "ensemble_name"]


class _Default(tuple):
    """A default left as it is (not given by the user); equal to the plain tuple of the same names."""


DEFAULT_ATTACKS = _Default(("fgsm", "pgd", "apgd-ce", "apgd-t", "square", "cw"))
ENSEMBLE = _Default(("apgd-ce", "apgd-t", "square"))
_PRETTY = {"apgd-ce": "APGD-CE", "apgd-t": "APGD-T", "apgd-dlr": "APGD-DLR", "square": "Square", "pgd": "PGD",
           "fgsm": "FGSM", "cw": "CW", "hsj": "HopSkipJump"}


def parse_names(value) -> tuple[str, ...]:
    """``"pgd, Square"`` or ``["pgd", "square"]`` -> ``("pgd", "square")``; None, "none" or "" -> ``()``."""
    if value is None or value is False:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    out = tuple(str(v).strip().lower() for v in items if str(v).strip())
    return () if out == ("none",) else out


def parse_eps_list(value) -> tuple:
    """``"2/255,8/255"`` or a sequence of strings and numbers; every value must read as an epsilon."""
    if isinstance(value, str):
        items = value.split(",")
    else:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
    out = tuple(str(v).strip() if isinstance(v, str) else v for v in items if str(v).strip())
    for e in out:
        parse_eps(e)  # fail early on a bad value
    return out


def ensemble_name(members: tuple[str, ...]) -> str:
    return f"ensemble ({', '.join(_PRETTY.get(m, m) for m in members)})"


def check_eps(text, norm: str, *, what: str = "eps") -> float:
    """An epsilon as the user wrote it, read and checked for the threat model before any model loads. Beyond
    :func:`~imgclass.attacks.check_budget`, a Linf budget of exactly 1 is refused too: it allows any image, and
    ``--eps 1`` almost always means 1/255."""
    value = parse_eps(text)
    shown = text.strip() if isinstance(text, str) else f"{value:g}"
    if norm == "linf" and value == 1:
        raise UsageError(f"adversarial: {what} {shown} is the whole [0, 1] pixel range, which allows any image (Linf)"
                         + ("; did you mean 1/255?" if "/" not in shown else ""))
    return check_budget(value, norm, text=shown, what=f"adversarial: {what}")


@dataclass
class AdversarialParams:
    """Parameters of the ``adversarial`` probe (``--set adversarial.NAME=VALUE``).

    The ensemble rule: ``ensemble`` runs when it is given (``--set adversarial.ensemble=apgd-ce,square``, or
    ``=default`` for its default members), or when neither it nor ``attacks`` was given; naming attacks
    (``--attacks pgd``) runs exactly those. ``ensemble=none`` turns it off.
    """

    attacks: tuple[str, ...] = DEFAULT_ATTACKS
    eps: tuple[str, ...] | None = None  # default by input resolution and norm
    norm: str = "linf"
    samples: int = 1000  # seeded subset
    ensemble: tuple[str, ...] = ENSEMBLE  # runs by the rule above; none for no ensemble
    attack_params: dict = field(default_factory=dict)  # e.g. {"pgd": {"steps": 50}, "square": {"n_queries": 1000}}
    attack_batch_size: int | None = None  # images per attack call; default: the engine's batch (CPU), more on CUDA
    eot_samples: int = 1  # gradients averaged over this many passes (randomized models)
    sanity_checks: bool = True
    large_eps: str | None = None  # default: Linf 64/255, L2 0.1 * sqrt(dims), above every tested eps
    tolerance: float = 0.02  # differences below this (and below 3 samples) raise no flag
    per_sample: bool = False  # also return per-sample ids and robust flags
    patch_size: float = 0.1  # fraction of the image area (attack "patch")
    patch_train: str | None = None  # data spec to train the patch on; default: a seeded half of the samples
    gallery: int = 6
    fast: bool = True  # attack a frozen copy with batch norm folded, channels-last (same function up to rounding)

    def __post_init__(self):  # strings from the API or --set: "pgd,square", "2/255,8/255"
        attacks_given = not isinstance(self.attacks, _Default)
        ensemble_given = not isinstance(self.ensemble, _Default)
        self.attacks = parse_names(self.attacks)
        if isinstance(self.ensemble, str) and self.ensemble.strip().lower() == "default":
            self.ensemble = tuple(ENSEMBLE)
        elif ensemble_given or not attacks_given:
            self.ensemble = parse_names(self.ensemble)
        else:
            self.ensemble = ()  # attacks named, ensemble left at its default: only the named attacks run
        self.norm = str(self.norm).strip().lower()
        if self.norm not in ("linf", "l2"):
            raise UsageError(f"adversarial: norm must be 'linf' or 'l2', got {self.norm!r}")
        for n in self.attacks + self.ensemble:
            if n not in ATTACKS:
                raise unknown_name("attack", n, ATTACKS)
        for n in self.ensemble:
            if ATTACKS[n].minimal or ATTACKS[n].threat == "patch":
                raise UsageError(f"adversarial: ensemble members must be epsilon-bounded attacks, not {n!r}")
        if not self.attacks and not self.ensemble:
            raise UsageError("adversarial: no attack to run (attacks and ensemble are both empty)")
        stray = set(self.attack_params) - set(ATTACKS)
        if stray:
            raise unknown_name("attack", sorted(stray)[0], ATTACKS, extra=" (in attack_params)")
        if int(self.samples) < 1:
            raise UsageError(f"adversarial: samples must be at least 1, got {self.samples}")
        if self.attack_batch_size is not None and int(self.attack_batch_size) < 1:
            raise UsageError(f"adversarial: attack_batch_size must be at least 1, got {self.attack_batch_size}")
        tested = []
        if self.eps is not None:
            self.eps = parse_eps_list(self.eps)
            if not self.eps:
                raise UsageError("adversarial: no epsilon given")
            tested = [check_eps(e, self.norm) for e in self.eps]
        if self.large_eps is not None:
            big = check_eps(self.large_eps, self.norm, what="large_eps")
            if tested and big <= max(tested):
                raise UsageError(f"adversarial: large_eps {self.large_eps} must be above the largest tested eps "
                                 f"({max(tested):.4g}), or the large-budget check proves nothing")
