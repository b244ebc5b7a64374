"""Probe ``adaptation``: test-time adaptation on corrupted data, online, batch by batch.

Methods (each on its own copy of the model; the caller's model is never modified):

- ``norm``: normalization statistics of the test batch instead of the training ones (Schneider et al. 2020);
- ``tent``: entropy minimisation of the normalization layers' affine parameters (Wang et al., ICLR 2021);
- ``pl``: self-learning with hard pseudo-labels, and ``rpl``: robust pseudo-labels with the generalized
  cross-entropy (Rusak et al., "If your data distribution shifts, use self-learning").

Every method sees the same seeded, shuffled stream of corrupted images; a batch is predicted in the forward
pass that also drives its update (the online protocol of TENT). ``source`` is the unadapted model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UsageError
from .base import CliFlag, Metric, Probe, ProbeContext, ProbeResult, register_probe

METHODS = ("norm", "tent", "pl", "rpl")
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def prepare(model: nn.Module, method: str) -> list[nn.Parameter]:
    """Configure a model copy for ``method``; return the parameters to optimise (none for ``norm``).

    The model stays in eval mode (dropout, stochastic depth off) except its batch-norm layers, which use
    the statistics of each test batch.
    """
    model.eval()
    model.requires_grad_(False)
    params: list[nn.Parameter] = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train()
            m.track_running_stats = False
            m.running_mean = None
            m.running_var = None
        if isinstance(m, _NORMS) and method != "norm":
            for p in (m.weight, m.bias):
                if p is not None:
                    p.requires_grad_(True)
                    params.append(p)
    return params


def adaptation_loss(logits: torch.Tensor, method: str, *, q: float = 0.8) -> torch.Tensor:
    if method == "tent":
        return -(logits.softmax(1) * logits.log_softmax(1)).sum(1).mean()
    pseudo = logits.argmax(1).detach()
    if method == "pl":
        return nn.functional.cross_entropy(logits, pseudo)
    if method == "rpl":  # generalized cross-entropy (Zhang & Sabuncu 2018) on the hard pseudo-labels
        p = logits.softmax(1).gather(1, pseudo[:, None]).squeeze(1)
        return ((1 - p.clamp_min(1e-8) ** q) / q).mean()
    raise ValueError(f"no loss for method {method!r}")


class AdaptationResult(ProbeResult):
    """``accuracy@CORRUPTION@METHOD`` (``source``: the unadapted model)."""

    probe = "adaptation"
    metrics = (Metric("accuracy", "accuracy"),)

    accuracy: dict[str, dict[str, float | None]]
    severity: int
    n_evaluated: int

    def headline(self) -> dict[str, float | None]:
        return {f"accuracy@{c}@{m}": v for c, per in self.accuracy.items() for m, v in per.items()}

    def protocol(self, params: dict) -> dict:
        return {"severity": self.severity, "corruption_params": self.get("corruption_params"),
                "optimizer": self.get("optimizer"), "protocol": self.get("protocol")}

@register_probe
class AdaptationProbe(Probe):
    name = "adaptation"
    title = "Test-time adaptation"
    description = "TENT, BN adaptation and self-learning (pseudo-labels) on corrupted data: accuracy before/after"
    cli_flags = (
        CliFlag("--tta-methods", "methods", f"adaptation methods ({', '.join(METHODS)})", _names),
        CliFlag("--adapt-corruptions", "corruptions", "corruptions to adapt to ('none' = clean data)", _names),
    )

    Result = AdaptationResult

    @dataclass
    class Params:
        methods: tuple[str, ...] = ("norm", "tent", "rpl")
        corruptions: tuple[str, ...] = ("gaussian_noise",)
        severity: int = 5
        corruption_params: str | None = None  # 'imagenet' | 'cifar10'; default by input size
        optimizer: str | None = None  # default: Adam for <= 64 px inputs (TENT's CIFAR), else SGD momentum 0.9
        lr: float | None = None  # default: 1e-3 (Adam) / 2.5e-4 x batch/64 (SGD), as in TENT
        steps: int = 1  # updates per batch
        gce_q: float = 0.8
        shuffle: bool = True

    def run(self, ctx: ProbeContext) -> dict:
        p = self.params
        bad = set(p.methods) - set(METHODS)
        if bad:
            raise UsageError(f"unknown adaptation method(s) {sorted(bad)}; known: {', '.join(METHODS)}")
        eng, ds = ctx.engine, ctx.dataset
        size = ctx.classifier.config.input_size[1]
        cparams = p.corruption_params or ("cifar10" if size <= 64 else "imagenet")
        opt_name = p.optimizer or ("adam" if size <= 64 else "sgd")
        lr = p.lr if p.lr is not None else (1e-3 if opt_name == "adam" else 2.5e-4 * eng.batch_size / 64)
        order = ctx.generator("adaptation-stream").permutation(len(ds)) if p.shuffle else range(len(ds))
        stream = ds.subset(order)
        al = eng.alignment(ds)
        results, notes = {}, []
        for corruption in p.corruptions:
            models, opts = {}, {}
            for m in p.methods:
                model = copy.deepcopy(eng.classifier)
                params = prepare(model, m)
                if m != "norm" and not params:
                    notes.append(f"{m}: the model has no normalization layers with affine parameters; skipped")
                    continue
                models[m] = model
                if params:
                    opts[m] = (torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999)) if opt_name == "adam"
                               else torch.optim.SGD(params, lr=lr, momentum=0.9))

            def fn(b, corruption=corruption, models=models, opts=opts):
                x = self._shifted(eng, stream, b, corruption, p.severity, cparams, ctx.seed)
                out = {"labels": b.labels}
                with torch.no_grad():
                    out["source"] = al.apply(eng.logits(x)).argmax(1)
                for m, model in models.items():
                    for step in range(max(1, p.steps) if m in opts else 1):
                        logits = model(x)
                        if step == 0:
                            out[m] = al.apply(logits.detach()).argmax(1)
                        if m in opts:
                            loss = adaptation_loss(logits, m, q=p.gce_q)
                            opts[m].zero_grad(set_to_none=True)
                            loss.backward()
                            opts[m].step()
                return out

            res = eng.map(stream, fn, grad=True, shard=False, desc=f"adapting to {corruption}").outputs
            y = res["labels"]
            results[corruption] = {k: float((v == y).double().mean()) for k, v in res.items() if k != "labels"}
        return {
            "accuracy": results,
            "severity": p.severity,
            "corruption_params": cparams,
            "optimizer": {"name": opt_name, "lr": lr, "steps_per_batch": p.steps, "batch_size": eng.batch_size},
            "protocol": "online: one pass over a seeded shuffled stream; each batch is predicted by the forward "
                        "pass that drives its update; batch-norm layers use test-batch statistics; each "
                        "corruption starts again from the source model",
            "n_evaluated": int(len(res["labels"])) if p.corruptions else 0,
            "notes": notes,
        }

    @staticmethod
    def _shifted(eng, stream, b, corruption: str, severity: int, cparams: str, seed: int) -> torch.Tensor:
        """The batch as float pixels, corrupted (the draw depends on each image's id, not the stream order)."""
        if corruption == "none":
            return eng.to_float(b.images)
        from ..corruptions import corrupt

        ids = [stream.sample_id(int(i)) for i in b.indices]
        return eng.to_float(corrupt(b.images, corruption, severity, seed=seed, sample_ids=ids, params=cparams))

    def summary(self, r: dict) -> list[tuple[str, str]]:
        out = []
        for c, accs in r["accuracy"].items():
            rest = ", ".join(f"{m} {a:.3f}" for m, a in accs.items() if m != "source")
            out.append((f"{c} (sev {r['severity']})", f"source {accs['source']:.3f} -> {rest}"))
        return out

    def render(self, r: dict, sec) -> None:
        import matplotlib.pyplot as plt
        import numpy as np

        sec.p(r["protocol"] + f". Optimizer {r['optimizer']['name']}, lr {r['optimizer']['lr']:g}, "
              f"{r['optimizer']['steps_per_batch']} step(s) per batch of {r['optimizer']['batch_size']}; "
              f"corruptions at severity {r['severity']} ({r['corruption_params']} parameters).")
        for n in r["notes"]:
            sec.warn(n)
        corrs = list(r["accuracy"])
        methods = list(next(iter(r["accuracy"].values())).keys()) if corrs else []
        sec.table(["corruption"] + methods, [[c] + [r["accuracy"][c][m] for m in methods] for c in corrs])
        if corrs:
            fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(corrs) * len(methods) / 3), 3.2))
            w = 0.8 / len(methods)
            xs = np.arange(len(corrs))
            for k, m in enumerate(methods):
                ax.bar(xs + k * w - 0.4 + w / 2, [r["accuracy"][c][m] for c in corrs], w, label=m)
            ax.set_xticks(xs)
            ax.set_xticklabels(corrs, rotation=20)
            ax.set_ylim(0, 1)
            ax.set_ylabel("online accuracy")
            ax.legend(fontsize=8)
            sec.figure(fig, "Accuracy before (source) and after test-time adaptation")
