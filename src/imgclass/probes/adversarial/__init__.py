"""Probe ``adversarial``: robust accuracy per attack and epsilon, the per-sample worst case over an ensemble,
minimal-perturbation statistics, a universal patch, and gradient-masking checks.

Modules: ``params`` (parameters, epsilon checks, the ensemble rule), ``run`` (the plan, the clean pass and the
attacks over large batches), ``records`` (per-sample outcomes keyed by (attack, eps)), ``aggregate`` (numbers and
sanity checks), ``patch`` (the universal patch), ``render`` (summary and report), ``probe`` (the registered probe).

results.json (``probes.adversarial``): ``robust_accuracy[attack][eps]``, ``success_rate[attack][eps]``,
``ensemble[eps]`` (per-sample worst case over the ensemble's members, named by them), ``worst_case[eps]``
(over the ensemble and every bounded attack run), ``minimal[attack]`` (median size of minimal
perturbations), ``queries``, ``seconds``, ``warnings`` (failed gradient-masking checks), ``sanity_checks``
(``ran`` and ``skipped`` with the reason), ``attacked_model`` (folded copy or fallback), ``attack_batch_size``
and a gallery.
"""

from .params import DEFAULT_ATTACKS, ENSEMBLE, AdversarialParams, ensemble_name
from .probe import AdversarialProbe
from .records import Records

__all__ = ["AdversarialProbe", "AdversarialParams", "Records", "DEFAULT_ATTACKS", "ENSEMBLE", "ensemble_name"]
