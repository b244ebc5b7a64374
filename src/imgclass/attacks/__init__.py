"""Adversarial attacks in pixel space, batched, on any device, seeded, registered by name.

``get_attack("pgd", eps=8/255)(classifier, x, y)`` returns an :class:`AttackResult`. Names:
``fgsm``, ``pgd``, ``apgd-ce``, ``apgd-dlr``, ``apgd-t`` (white box), ``cw`` (minimal L2, white box),
``square`` (score-based black box), ``hsj`` (decision-based black box, minimal), ``patch``
(universal adversarial patch).
"""

from .base import (ATTACKS, NORMS, Attack, AttackResult, check_budget, derive_seed, dlr_loss, dlr_loss_targeted,
                   format_eps, get_attack, margin, parse_eps, perturbation_norm, project, register_attack)
from .rng import SampleRandom, sample_keys
from .gradient import FGSM, PGD
from .apgd import APGDCE, APGDDLR, APGDT
from .cw import CarliniWagnerL2
from .square import Square
from .decision import HopSkipJump
from .patch import UniversalPatch, place
from .protocol import default_eps, large_eps, run_sanity_checks, sanity_checks

__all__ = [
    "ATTACKS", "NORMS", "Attack", "AttackResult", "get_attack", "register_attack", "parse_eps", "format_eps",
    "derive_seed", "check_budget", "SampleRandom", "sample_keys",
    "perturbation_norm", "project", "margin", "dlr_loss", "dlr_loss_targeted",
    "FGSM", "PGD", "APGDCE", "APGDDLR", "APGDT", "CarliniWagnerL2", "Square", "HopSkipJump", "UniversalPatch",
    "place", "default_eps", "large_eps", "sanity_checks", "run_sanity_checks",
]
