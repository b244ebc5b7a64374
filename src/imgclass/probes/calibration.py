"""Probe ``calibration``: ECE (equal-width, equal-mass, classwise), MCE, NLL, Brier, temperature scaling."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UsageError
from .. import metrics
from .base import Metric, Probe, ProbeContext, ProbeResult, register_probe


def _scores(logits: torch.Tensor, labels: torch.Tensor, n_bins: int) -> dict:
    probs = torch.softmax(logits.double(), 1)
    return {
        "ece": metrics.ece(probs, labels, n_bins),
        "nll": metrics.nll(logits, labels),
        "brier": metrics.brier(probs, labels),
        "accuracy": metrics.topk_accuracy(logits, labels, 1),
    }


TEMPERATURE_BOUNDS = (0.05, 20.0)  # the search interval of T
MIN_FIT = 200  # fewer fit samples than this get a warning


class CalibrationResult(ProbeResult):
    probe = "calibration"
    metrics = (Metric("ece", "ECE", False), Metric("ece_adaptive", "ECE (equal-mass)", False),
               Metric("nll", "NLL", False), Metric("brier", "Brier", False),
               Metric("ece_after_scaling", "ECE after temperature scaling", False),
               Metric("temperature", "temperature", False))
    primary = "ece"

    n_bins: int
    n_evaluated: int
    ece: float | None
    ece_adaptive: float | None = None
    nll: float | None = None
    brier: float | None = None
    temperature: float | None = None

    def headline(self) -> dict[str, float | None]:
        out = super().headline()
        ts = self.get("temperature_scaling") or {}
        out["ece_after_scaling"] = (ts.get("after") or {}).get("ece") if self.temperature is not None else None
        return out

    def protocol(self, params: dict) -> dict:
        ts = self.get("temperature_scaling") or {}
        return {"ece": f"{self.n_bins} equal-width bins of top-1 confidence (torchmetrics, l1)",
                "n_bins": self.n_bins, "temperature_fit": ts.get("fit_on")}


@register_probe
class CalibrationProbe(Probe):
    name = "calibration"
    title = "Calibration"
    description = "ECE (15 bins, torchmetrics' definition), adaptive and classwise ECE, NLL, Brier, temperature scaling"

    Result = CalibrationResult

    @dataclass
    class Params:
        n_bins: int = 15
        # temperature scaling: fit on this dataset spec (same label space), or on a seeded held-out fraction
        fit_data: str | None = None
        holdout: float = 0.5

    def run(self, ctx: ProbeContext) -> dict:
        pr = ctx.predictions()
        nb = self.params.n_bins
        logits, labels = pr.logits.double(), pr.labels
        probs = torch.softmax(logits, 1)
        conf, pred = probs.max(1)
        bins = metrics.reliability_bins(conf, (pred == labels).double(), nb)
        res = {
            "n_bins": nb,
            "n_evaluated": int(len(labels)),
            "ece": metrics.ece(probs, labels, nb),
            "ece_adaptive": metrics.adaptive_ece(probs, labels, nb),
            "ece_classwise": metrics.classwise_ece(probs, labels, nb),
            "mce": metrics.max_calibration_error(probs, labels, nb),
            "nll": metrics.nll(logits, labels),
            "brier": metrics.brier(probs, labels),
            "mean_confidence": float(conf.mean()) if len(conf) else None,
            "accuracy": metrics.topk_accuracy(logits, labels, 1),
            "reliability": {k: v.tolist() for k, v in bins.items() if k != "lower"},
            "definitions": {
                "ece": "sum_b |acc_b - conf_b| * n_b / N over equal-width bins of top-1 confidence "
                       "(torchmetrics MulticlassCalibrationError, norm='l1')",
                "ece_adaptive": "same with equal-mass bins (samples sorted by confidence)",
                "ece_classwise": "mean over classes of the binned |freq(y=k) - p_k| (Kull et al. 2019)",
                "brier": "mean over samples of sum_k (p_k - 1[y=k])^2",
            },
        }
        res.update(self._temperature(ctx, logits, labels))
        soft = ctx.dataset.soft_labels
        if soft is not None and len(labels):
            res["human"] = {
                "source": ctx.dataset.soft_label_source,
                "cross_entropy": metrics.soft_cross_entropy(logits, soft[pr.indices]),
            }
        return res

    def _temperature(self, ctx: ProbeContext, logits: torch.Tensor, labels: torch.Tensor) -> dict:
        nb = self.params.n_bins
        if self.params.fit_data:
            from ..data import load_dataset

            fit_ds = load_dataset(self.params.fit_data)
            fp = ctx.engine.predict(fit_ds)
            fit_logits, fit_labels = fp.logits.double(), fp.labels
            eval_logits, eval_labels = logits, labels
            how = {"fit_on": self.params.fit_data, "evaluated_on": "the whole dataset"}
        else:
            n = len(labels)
            if not 0 < self.params.holdout < 1:
                raise UsageError(f"calibration holdout must lie in (0, 1), got {self.params.holdout}")
            perm = ctx.generator("calibration-holdout").permutation(n)
            n_fit = int(round(n * self.params.holdout))
            fit_idx, eval_idx = np.sort(perm[:n_fit]), np.sort(perm[n_fit:])
            if n_fit == 0 or len(eval_idx) == 0:
                return {"temperature": None, "warnings": [f"temperature scaling skipped: too few samples ({n}) to split "
                                                          "into fit and evaluation parts"],
                        "temperature_scaling": {"error": f"too few samples ({n}) to split"}}
            fit_logits, fit_labels = logits[fit_idx], labels[fit_idx]
            eval_logits, eval_labels = logits[eval_idx], labels[eval_idx]
            how = {"fit_on": f"seeded random {self.params.holdout:.0%} of the samples (seed {ctx.seed})",
                   "evaluated_on": "the other samples"}
        t = metrics.fit_temperature(fit_logits, fit_labels, bounds=TEMPERATURE_BOUNDS)
        before = _scores(eval_logits, eval_labels, nb)
        after = _scores(eval_logits / t, eval_labels, nb)
        n_fit = int(len(fit_labels))
        warnings = []
        lo, hi = TEMPERATURE_BOUNDS
        if abs(np.log(t) - np.log(hi)) < 0.01 or abs(np.log(t) - np.log(lo)) < 0.01:
            warnings.append(f"the temperature sits at its search bound ({t:.3g}; bounds {lo:g}..{hi:g}): the model's "
                            "confidences carry almost no information about correctness (an untrained or collapsed "
                            "model?), so the scaled probabilities are near uniform")
        if after["ece"] > before["ece"]:
            warnings.append(f"temperature scaling made ECE worse on the evaluation samples ({before['ece']:.4f} -> "
                            f"{after['ece']:.4f}; fit on {n_fit} samples): the fit set is too small or unlike the "
                            "evaluation set; give more data or fit_data=SPEC")
        elif n_fit < MIN_FIT:
            warnings.append(f"the temperature was fit on only {n_fit} samples (fewer than {MIN_FIT}): expect it to "
                            "move by more than the ECE differences it explains")
        return {"temperature": t, "warnings": warnings, "temperature_scaling": {
            **how, "n_fit": n_fit, "n_eval": int(len(eval_labels)), "bounds": list(TEMPERATURE_BOUNDS),
            "before": before, "after": after,
        }}

    def summary(self, r: dict) -> list[tuple[str, str]]:
        out = [("ECE", f"{r['ece']:.4f}"), ("NLL", f"{r['nll']:.4f}"), ("Brier", f"{r['brier']:.4f}")]
        if r.get("temperature") is not None:
            ts = r["temperature_scaling"]
            out += [("temperature", f"{r['temperature']:.3f}"),
                    ("ECE after T-scaling", f"{ts['before']['ece']:.4f} -> {ts['after']['ece']:.4f}")]
        return out

    def render(self, r: dict, sec) -> None:
        from . import plots

        for w in r.get("warnings", []):
            sec.warn(w)
        sec.kv([
            ("ECE (equal-width, %d bins)" % r["n_bins"], r["ece"]), ("ECE (equal-mass)", r["ece_adaptive"]),
            ("classwise ECE", r["ece_classwise"]), ("MCE", r["mce"]), ("NLL", r["nll"]), ("Brier", r["brier"]),
            ("mean confidence", r["mean_confidence"]), ("accuracy", r["accuracy"]),
        ])
        sec.figure(plots.reliability_diagram(r["reliability"], r["ece"]),
                   "Reliability diagram: accuracy per confidence bin (bars) against perfect calibration (diagonal); "
                   "the lower panel shows how many samples fall in each bin")
        ts = r.get("temperature_scaling", {})
        if r.get("temperature") is not None:
            sec.p(f"Temperature scaling: T = {r['temperature']:.4f}, fit on {ts['fit_on']} (n = {ts['n_fit']}), "
                  f"evaluated on {ts['evaluated_on']} (n = {ts['n_eval']}).")
            sec.table(["", "ECE", "NLL", "Brier", "accuracy"], [
                ("before", ts["before"]["ece"], ts["before"]["nll"], ts["before"]["brier"], ts["before"]["accuracy"]),
                ("after", ts["after"]["ece"], ts["after"]["nll"], ts["after"]["brier"], ts["after"]["accuracy"]),
            ])
        if "human" in r:
            sec.p(f"Cross-entropy against the human label distribution ({r['human']['source']}): "
                  f"{r['human']['cross_entropy']:.4f}")
