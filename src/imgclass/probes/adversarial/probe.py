"""The ``adversarial`` probe: ties the plan, the attack runs, the aggregation, the patch and the report together."""

from __future__ import annotations

import numpy as np

from ...models.fast import inference_copy
from ..base import CliFlag, Metric, Probe, ProbeContext, ProbeResult, register_probe
from . import render as _render
from .aggregate import aggregate, per_sample, worst_case_flags
from .params import AdversarialParams, parse_eps_list, parse_names
from .patch import patch_result
from .run import Aligned, make_attack, make_plan, run_attacks

__all__ = ["AdversarialProbe"]


def _attacked_model(clf, fast: bool):
    """The model the attacks see and what it is (``attacked_model`` in the results)."""
    if not fast:
        return clf, {"fast": False, "folded": False, "channels_last": False, "max_logit_diff": None,
                     "reason": "fast=false: the model as loaded"}
    copy = inference_copy(clf)
    info = getattr(copy, "fast_info", None)
    return copy, {"fast": True, **(info.to_dict() if info is not None else {})}


class AdversarialResult(ProbeResult):
    """``robust_accuracy@EPS``: the per-sample worst case over the ensemble and every bounded attack run at that
    epsilon; ``ATTACK@EPS`` each attack's own robust accuracy; the primary number is the largest epsilon's."""

    probe = "adversarial"
    metrics = (Metric("clean_accuracy", "clean accuracy"), Metric("robust_accuracy", "robust accuracy"),
               Metric("ensemble", "ensemble robust accuracy"))
    primary = "robust_accuracy"

    norm: str
    eps: dict[str, float]
    n_evaluated: int
    clean_accuracy: float | None
    robust_accuracy: dict[str, dict[str, float | None]]
    worst_case: dict[str, float | None] = {}
    ensemble_name: str | None = None

    def _largest(self) -> str | None:
        return max(self.eps, key=self.eps.get) if self.eps else None

    def headline(self) -> dict[str, float | None]:
        out = {"clean_accuracy": self.clean_accuracy}
        big = self._largest()
        out["robust_accuracy"] = self.worst_case.get(big) if big else None
        for k, v in self.worst_case.items():
            out[f"robust_accuracy@{k}"] = v
        for k, v in (self.get("ensemble") or {}).items():
            out[f"ensemble@{k}"] = v
        for a, per_eps in self.robust_accuracy.items():
            for k, v in per_eps.items():
                out[f"{a}@{k}"] = v
        return out

    def metric_info(self, key: str) -> Metric:
        name, _, part = key.partition("@")
        if part and name not in {m.key for m in self.metrics}:  # ATTACK@EPS
            return Metric(key, f"{name} robust accuracy @ {part}")
        return super().metric_info(key)

    def protocol(self, params: dict) -> dict:
        return {"norm": self.norm, "eps": list(self.eps), "primary_eps": self._largest(),
                "attacks": list(self.robust_accuracy), "ensemble": self.ensemble_name,
                "robust_accuracy": "per-sample worst case over the ensemble and every bounded attack run",
                "n_evaluated": self.n_evaluated, "samples_requested": params.get("samples")}


@register_probe
class AdversarialProbe(Probe):
    """Robust accuracy per attack and epsilon, the per-sample worst case over an ensemble, minimal perturbations, a
    universal patch and the gradient-masking checks that the attacks run allow.

    Which attacks run: ``--attacks`` names them and exactly those run. The ensemble (APGD-CE, APGD-T, Square by
    default) runs when neither ``--attacks`` nor ``ensemble`` was given, or when asked for with
    ``--set adversarial.ensemble=NAMES`` (``default`` for its default members; ``none`` turns it off). Attacks run on
    the correctly classified images of a seeded subset, ``attack_batch_size`` at a time, each sample's random draws
    keyed by (run seed, attack, eps, its dataset index): results do not depend on the batch size or the number of
    processes (up to the float rounding of the model's batched arithmetic).
    """

    name = "adversarial"
    title = "Adversarial robustness"
    description = ("robust accuracy per attack and epsilon (FGSM, PGD, APGD, Square, CW, HopSkipJump, patch), "
                   "per-sample worst case over an ensemble, gradient-masking checks")
    cli_flags = (
        CliFlag("--attacks", "attacks", "attacks by name, e.g. pgd,apgd-ce,square (fgsm, pgd, apgd-ce, apgd-dlr, "
                "apgd-t, cw, square, hsj, patch); exactly these run. Without --attacks the defaults and the ensemble "
                "(apgd-ce, apgd-t, square) run; with it the ensemble runs only if asked for "
                "(--set adversarial.ensemble=apgd-ce,square or =default)", parse_names),
        CliFlag("--eps", "eps", "epsilons in pixel units of [0, 1], e.g. 2/255,8/255 (Linf below 1, L2 at most the "
                "image diagonal)", parse_eps_list),
        CliFlag("--norm", "norm", "threat model of the attacks: linf or l2", lambda s: s.strip().lower()),
    )
    Params = AdversarialParams
    Result = AdversarialResult

    def run(self, ctx: ProbeContext) -> dict:
        p = self.params
        eng, clf, full = ctx.engine, ctx.classifier, ctx.dataset
        plan = make_plan(p, clf.config.input_size)  # before any work: bad budgets fail here
        n = min(int(p.samples), len(full))
        sub_idx = np.arange(len(full)) if n == len(full) else \
            np.sort(ctx.generator("adversarial-subset").choice(len(full), size=n, replace=False))
        ds = full.subset(sub_idx)
        attacked, attacked_info = _attacked_model(clf, p.fast)
        model = Aligned(attacked, eng.alignment(full)).eval()
        names = [a for a in p.attacks if a != "patch"]
        settings = {a: make_attack(p, a, plan.norm, plan.eps[plan.keys[-1]]).params()
                    for a in dict.fromkeys(names + list(plan.ensemble))}
        if "patch" in p.attacks:
            settings["patch"] = make_attack(p, "patch", plan.norm).params()
        for v in settings.values():  # eps comes from the list, seeds from (run seed, attack, eps, sample)
            v.pop("eps", None)
            v.pop("seed", None)
        out = run_attacks(ctx, model, ds, sub_idx, plan, p)
        res = aggregate(out.records, plan, p, randomized=out.randomized)
        res["gallery"] = out.gallery
        rec = out.records
        ctx.record_samples(self.name, sub_idx[np.asarray(out.indices, dtype=np.int64)], correct=rec.correct,
                           **{f"worst@{k}": w for k, w in worst_case_flags(rec, plan).items()},
                           **{f"robust@{a}@{k}": t for (a, k), t in rec.robust.items()})
        if p.per_sample:
            res["per_sample"] = per_sample(out.records, [ds.sample_id(int(i)) for i in out.indices], plan)
        res.update({"n_selected": int(n), "n_dataset": int(len(full)), "n_skipped": len(out.skipped),
                    "seconds_total": out.seconds, "attack_settings": settings, "attack_batch_size": out.batch_size,
                    "attacked_model": attacked_info, "class_names": list(full.classes.names)})
        if "patch" in p.attacks:
            res["patch"] = patch_result(ctx, p, ds)
        return res

    def summary(self, result: dict) -> list[tuple[str, str]]:
        return _render.summary(result)

    def render(self, result: dict, section) -> None:
        _render.render(result, section)
