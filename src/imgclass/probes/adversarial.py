"""Probe ``adversarial``: robust accuracy per attack and epsilon, the per-sample worst case over an
ensemble, minimal-perturbation statistics, a universal patch, and gradient-masking checks.

Protocol: a seeded subset of ``samples`` images; every attack runs only on the images the model
classifies correctly, and clean errors count as non-robust, so robust accuracy <= clean accuracy.
Attacks run in float32 (``--amp`` does not apply to them) with seeds derived from (run seed, attack,
epsilon, first index of the batch), so results do not depend on how batches are spread over processes.

results.json (``probes.adversarial``): ``robust_accuracy[attack][eps]``, ``success_rate[attack][eps]``,
``ensemble[eps]`` (per-sample worst case over the ensemble's members, named by them), ``worst_case[eps]``
(over the ensemble and every bounded attack run), ``minimal[attack]`` (median size of minimal
perturbations), ``queries``, ``seconds``, ``warnings`` (failed gradient-masking checks) and a gallery.
"""

from __future__ import annotations

import base64
import io
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..errors import UnknownNameError, UsageError
from ..attacks import ATTACKS, default_eps, derive_seed, get_attack, large_eps, parse_eps, sanity_checks
from ..attacks.protocol import WHITE_BOX, eps_key
from ..models.fast import inference_copy
from .base import CliFlag, Probe, ProbeContext, register_probe

DEFAULT_ATTACKS = ("fgsm", "pgd", "apgd-ce", "apgd-t", "square", "cw")
ENSEMBLE = ("apgd-ce", "apgd-t", "square")


def _names(value) -> tuple[str, ...]:
    """``"pgd, Square"`` or ``["pgd", "square"]`` -> ``("pgd", "square")``."""
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(str(v).strip().lower() for v in items if str(v).strip())


def _eps_list(value) -> tuple:
    """``"2/255,8/255"`` or a sequence of strings and numbers; every value is checked."""
    out = tuple(str(v).strip() if isinstance(v, str) else v
                for v in (value.split(",") if isinstance(value, str) else value) if str(v).strip())
    for e in out:
        parse_eps(e)  # fail early on a bad value
    return out


class _Aligned(nn.Module):
    """The classifier with its logits mapped to the dataset's classes (differentiable)."""

    def __init__(self, clf: nn.Module, alignment):
        super().__init__()
        self.clf, self.alignment = clf, alignment

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.alignment.apply(self.clf(x).float())


def _png(img: np.ndarray, max_side: int = 128) -> str:
    from PIL import Image

    im = Image.fromarray(img)
    if max(im.size) > max_side:
        im.thumbnail((max_side, max_side), Image.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _median(t: torch.Tensor) -> float | None:
    """The median (mean of the middle two for an even count); None when empty or infinite."""
    if len(t) == 0:
        return None
    m = float(np.median(t.double().cpu().numpy()))
    return m if np.isfinite(m) else None


def _to_u8(x: torch.Tensor) -> np.ndarray:
    return (x.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)


def ensemble_name(members: tuple[str, ...]) -> str:
    pretty = {"apgd-ce": "APGD-CE", "apgd-t": "APGD-T", "apgd-dlr": "APGD-DLR", "square": "Square", "pgd": "PGD",
              "fgsm": "FGSM", "cw": "CW", "hsj": "HopSkipJump"}
    return f"ensemble ({', '.join(pretty.get(m, m) for m in members)})"


@register_probe
class AdversarialProbe(Probe):
    name = "adversarial"
    title = "Adversarial robustness"
    description = ("robust accuracy per attack and epsilon (FGSM, PGD, APGD, Square, CW, HopSkipJump, patch), "
                   "per-sample worst case over an ensemble, gradient-masking checks")
    cli_flags = (
        CliFlag("--attacks", "attacks", "attacks by name, e.g. pgd,apgd-ce,square (fgsm, pgd, apgd-ce, apgd-dlr, "
                "apgd-t, cw, square, hsj, patch)", _names),
        CliFlag("--eps", "eps", "epsilons in pixel units of [0, 1], e.g. 2/255,8/255", _eps_list),
        CliFlag("--norm", "norm", "threat model of the attacks: linf or l2", lambda s: s.strip().lower()),
    )

    @dataclass
    class Params:
        attacks: tuple[str, ...] = DEFAULT_ATTACKS
        eps: tuple[str, ...] | None = None  # default by input resolution and norm
        norm: str = "linf"
        samples: int = 1000  # seeded subset
        ensemble: tuple[str, ...] = ENSEMBLE  # () for none
        attack_params: dict = field(default_factory=dict)  # e.g. {"pgd": {"steps": 50}, "square": {"n_queries": 1000}}
        eot_samples: int = 1  # gradients averaged over this many passes (randomized models)
        sanity_checks: bool = True
        large_eps: str | None = None  # default: Linf 64/255, L2 0.1 * sqrt(dims)
        tolerance: float = 0.02  # differences below this (and below 3 samples) raise no flag
        per_sample: bool = False  # also return per-sample ids and robust flags
        patch_size: float = 0.1  # fraction of the image area (attack "patch")
        patch_train: str | None = None  # data spec to train the patch on; default: a seeded half of the samples
        gallery: int = 6
        fast: bool = True  # attack a frozen copy with batch norm folded, channels-last (same function up to rounding)

        def __post_init__(self):  # strings from the API or --set: "pgd,square", "2/255,8/255"
            self.attacks = _names(self.attacks)
            self.ensemble = _names(self.ensemble)
            self.norm = str(self.norm).strip().lower()
            if self.eps is not None:
                self.eps = _eps_list(self.eps)
            if self.norm not in ("linf", "l2"):
                raise UsageError(f"adversarial: norm must be 'linf' or 'l2', got {self.norm!r}")
            for n in self.attacks + self.ensemble:
                if n not in ATTACKS:
                    raise UnknownNameError(f"unknown attack {n!r}; known attacks: {', '.join(sorted(ATTACKS))}")
            for n in self.ensemble:
                if ATTACKS[n].minimal or ATTACKS[n].threat == "patch":
                    raise UsageError(f"ensemble members must be epsilon-bounded attacks, not {n!r}")
            stray = set(self.attack_params) - set(ATTACKS)
            if stray:
                raise UnknownNameError(f"attack_params for unknown attack(s) {', '.join(sorted(stray))}")

    # -- setup ------------------------------------------------------------------------------------------
    def _check(self, clf) -> tuple[list[str], dict[str, float], str]:
        p = self.params
        norm = p.norm
        eps_text = list(p.eps) if p.eps else list(default_eps(clf.config.input_size, norm))
        eps = {eps_key(e, parse_eps(e)): parse_eps(e) for e in eps_text}
        if not eps:
            raise UsageError("adversarial: no epsilon given")
        keys = sorted(eps, key=eps.get)
        return keys, eps, norm

    def _make(self, name: str, norm: str, eps: float | None = None, **over):
        cls = ATTACKS[name]
        kw: dict = {"norm": norm if norm in cls.norms else cls.norms[0], "eot_samples": self.params.eot_samples}
        if cls.threat == "patch":
            kw["size"] = self.params.patch_size
        elif not cls.minimal:
            kw["eps"] = eps
        kw.update(self.params.attack_params.get(name, {}))
        kw.update(over)
        return get_attack(name, **kw)

    # -- run ----------------------------------------------------------------------------------------
    def run(self, ctx: ProbeContext) -> dict:
        p = self.params
        eng, clf, full = ctx.engine, ctx.classifier, ctx.dataset
        keys, eps, norm = self._check(clf)
        n = min(int(p.samples), len(full))
        sub_idx = np.arange(len(full)) if n == len(full) else \
            np.sort(ctx.generator("adversarial-subset").choice(len(full), size=n, replace=False))
        ds = full.subset(sub_idx)
        model = _Aligned(inference_copy(clf) if p.fast else clf, eng.alignment(full)).eval()
        names = [a for a in p.attacks if a != "patch"]
        bounded = [a for a in names if not ATTACKS[a].minimal]
        minimal = [a for a in names if ATTACKS[a].minimal]
        gal_attack = bounded[0] if bounded else (minimal[0] if minimal else None)
        big = p.large_eps or large_eps(clf.config.input_size, norm)
        settings = {a: self._make(a, norm, eps[keys[-1]]).params() for a in dict.fromkeys(names + list(p.ensemble))}
        if "patch" in p.attacks:
            settings["patch"] = self._make("patch", norm).params()
        for v in settings.values():  # eps comes from the list, seeds from (run seed, attack, eps, batch)
            v.pop("eps", None)
            v.pop("seed", None)
        state: dict = {"gallery": [], "randomized": False, "checked": False}

        def run_attack(att, x, y, salt, idx0):
            t0 = time.perf_counter()
            res = att(model, x, y, seed=derive_seed(ctx.seed, *salt, idx0))
            if x.is_cuda:
                torch.cuda.synchronize(x.device)
            return res, time.perf_counter() - t0

        def fn(b):
            x, y = eng.to_float(b.images), b.labels
            nb, idx0, dev = len(y), int(b.indices[0]), y.device
            with torch.no_grad():
                logits = model(x)
                if not state["checked"]:  # a randomized model answers differently twice
                    state["checked"] = True
                    state["randomized"] = not torch.allclose(logits, model(x), rtol=1e-4, atol=1e-5)
            pred = logits.argmax(1)
            ok = pred == y
            ci = ok.nonzero().flatten()
            xc, yc = x[ci], y[ci]
            out = {"label": y, "clean_pred": pred}

            def spread(v, fill):
                full_v = torch.full((nb,), fill, device=dev, dtype=v.dtype)
                full_v[ci] = v
                return full_v

            def per_sample_time(dt):
                return torch.full((nb,), dt / nb, device=dev, dtype=torch.float64)

            for k in keys:
                robust = {}
                for name in bounded:
                    res, dt = run_attack(self._make(name, norm, eps[k]), xc, yc, (name, k), idx0)
                    robust[name] = spread(~res.success, False)
                    out[f"robust/{name}/{k}"] = robust[name]
                    out[f"time/{name}/{k}"] = per_sample_time(dt)
                    if res.queries is not None:
                        out[f"queries/{name}/{k}"] = spread(res.queries.float(), float("nan"))
                    if name == gal_attack and k == keys[-1]:
                        self._stash(state, model, xc, res, yc, name, k, p.gallery)
                if p.ensemble:  # white-box members first; members not run above attack only the samples standing
                    ens = ok.clone()
                    white = [m for m in p.ensemble if ATTACKS[m].threat == WHITE_BOX]
                    for group in (white, [m for m in p.ensemble if m not in white]):
                        for m in group:
                            if m in robust:
                                ens &= robust[m]
                        for m in group:
                            if m not in robust:
                                todo = ens.nonzero().flatten()
                                res, dt = run_attack(self._make(m, norm, eps[k]), x[todo], y[todo], ("ens", m, k), idx0)
                                ens[todo[res.success]] = False
                                out[f"time/ensemble:{m}/{k}"] = per_sample_time(dt)
                        if group is white:
                            out[f"ensemble_white/{k}"] = ens.clone()
                    out[f"ensemble/{k}"] = ens
            for name in minimal:
                res, dt = run_attack(self._make(name, norm), xc, yc, (name,), idx0)
                d = torch.where(res.success, res.norm, torch.full_like(res.norm, float("inf")))
                out[f"dist/{name}"] = spread(d, 0.0)
                out[f"time/{name}/all"] = per_sample_time(dt)
                if res.queries is not None:
                    out[f"queries/{name}/all"] = spread(res.queries.float(), float("nan"))
                if gal_attack == name:
                    self._stash(state, model, xc, res, yc, name, "minimal", p.gallery)
            if p.sanity_checks:  # from the clean image, margin loss: only the gradients can help
                att = self._make("pgd", norm, parse_eps(big), random_start=False, loss="margin", restarts=1,
                                 step_size=None)
                res, _ = run_attack(att, xc, yc, ("large",), idx0)
                out["robust/_large"] = spread(~res.success, False)
            return out

        mr = eng.map(ds, fn, grad=True, desc=f"adversarial ({', '.join(names) or 'ensemble'})")
        res = self._aggregate(mr.outputs, keys, eps, norm, bounded, minimal, big, state)
        if p.per_sample:
            res["per_sample"] = self._per_sample(mr, ds, keys, bounded)
        res.update({"n_selected": int(n), "n_dataset": int(len(full)), "n_skipped": len(mr.skipped),
                    "seconds_total": mr.seconds, "attack_settings": settings,
                    "class_names": list(full.classes.names)})
        if "patch" in p.attacks:
            res["patch"] = self._patch(ctx, clf, ds)
        return res

    def _stash(self, state, model, xc, res, yc, name, k, n_max):
        """Keep the first batch's examples for the gallery, the successful ones first."""
        if state["gallery"] or n_max <= 0 or len(xc) == 0:
            return
        pick = torch.argsort((~res.success).to(torch.int8), stable=True)[:n_max]
        adv = res.adv[pick]
        with torch.no_grad():
            ap = model(adv).argmax(1)
        for j, i in enumerate(pick.tolist()):
            delta = (adv[j] - xc[i]).float()
            amp = 0.5 / max(float(delta.abs().max()), 1e-12)
            state["gallery"].append({
                "attack": name, "eps": k, "label": int(yc[i]), "adv_pred": int(ap[j]), "amplification": amp,
                "clean_png": _png(_to_u8(xc[i])), "adv_png": _png(_to_u8(adv[j])),
                "delta_png": _png(_to_u8(0.5 + delta * amp)),
            })

    def _aggregate(self, o, keys, eps, norm, bounded, minimal, big, state) -> dict:
        p = self.params
        y = o["label"]
        n = len(y)
        ok = o["clean_pred"] == y
        n_ok = int(ok.sum())
        ra, sr, qs, secs, per = {}, {}, {}, {}, {}

        def frac(t):
            return float(t.double().mean()) if len(t) else None

        def qstats(q, fooled):
            q = q[ok]
            f = fooled[ok]
            return {"mean": frac(q), "median_successful": _median(q[f]), "total": float(q.sum())}

        for a in bounded:
            ra[a], sr[a], secs[a], per[a] = {}, {}, {}, {}
            for k in keys:
                rob = o[f"robust/{a}/{k}"]
                per[a][k] = rob.numpy()
                ra[a][k] = frac(rob)
                sr[a][k] = (n_ok - int(rob.sum())) / n_ok if n_ok else None
                secs[a][k] = float(o[f"time/{a}/{k}"].sum())
                if f"queries/{a}/{k}" in o:
                    qs.setdefault(a, {})[k] = qstats(o[f"queries/{a}/{k}"], ~rob)
        ens = {k: frac(o[f"ensemble/{k}"]) for k in keys} if p.ensemble else {}
        ens_white = {k: frac(o[f"ensemble_white/{k}"]) for k in keys} if p.ensemble else {}
        black_only = {k: frac(o[f"ensemble_white/{k}"] & ~o[f"ensemble/{k}"]) for k in keys} if p.ensemble else {}
        worst = {}
        for k in keys if bounded or p.ensemble else ():  # per sample, over the ensemble and every bounded attack
            w = ok.clone()
            for t in [o[f"robust/{a}/{k}"] for a in bounded] + ([o[f"ensemble/{k}"]] if p.ensemble else []):
                w &= t
            worst[k] = frac(w)
        for key, v in o.items():
            if key.startswith("time/ensemble:"):
                m, k = key[len("time/ensemble:"):].split("/", 1)
                secs.setdefault(f"ensemble:{m}", {})[k] = float(v.sum())
        mins = {}
        for a in minimal:
            d = o[f"dist/{a}"]
            da = d[ok]
            used = norm if norm in ATTACKS[a].norms else ATTACKS[a].norms[0]
            fin = da[torch.isfinite(da)]
            mins[a] = {
                "norm": used, "median": _median(da), "median_successful": _median(fin),
                "success_rate": len(fin) / len(da) if len(da) else None,
                "distances": sorted(float(v) for v in da.tolist()),
            }
            secs[a] = {"all": float(o[f"time/{a}/all"].sum())}
            if f"queries/{a}/all" in o:
                qs[a] = {"all": qstats(o[f"queries/{a}/all"], torch.isfinite(d))}
            if used == norm:
                ra[a] = {k: frac(d > eps[k] + 1e-9) for k in keys}
                sr[a] = {k: float((da <= eps[k] + 1e-9).double().mean()) if n_ok else None for k in keys}
                per[a] = {k: (d > eps[k] + 1e-9).numpy() for k in keys}
        large = (big, frac(o["robust/_large"])) if "robust/_large" in o else None
        warnings = sanity_checks(robust_accuracy=ra, eps_values=eps, ensemble=ens or None, large=large,
                                 per_sample=per, tolerance=p.tolerance, n_samples=n,
                                 ensemble_black_only=black_only or None, randomized=state["randomized"],
                                 eot_samples=p.eot_samples) if p.sanity_checks else []
        return {
            "norm": norm, "eps": {k: eps[k] for k in keys}, "n_evaluated": n, "n_attacked": n_ok,
            "clean_accuracy": frac(ok), "robust_accuracy": ra, "success_rate": sr,
            "ensemble": ens, "ensemble_name": ensemble_name(tuple(p.ensemble)) if p.ensemble else None,
            "ensemble_white_box": ens_white, "ensemble_black_box_only": black_only, "worst_case": worst,
            "minimal": mins, "queries": qs, "seconds": secs, "warnings": warnings,
            "large_eps": {"eps": big, "accuracy": large[1]} if large else None,
            "randomized_model": state["randomized"], "gallery": state["gallery"],
            "protocol": ("seeded subset of the dataset; attacks run on the correctly classified images only and clean "
                         "errors count as non-robust; the ensemble is the per-sample worst case over its members "
                         "(white-box members first; members not run on their own attack only the samples still standing); "
                         "worst_case is the per-sample worst case over the ensemble and every bounded attack run; "
                         "minimal-perturbation "
                         "attacks count a sample robust at eps when the smallest adversarial found is larger; "
                         "attacks run in float32"),
        }

    @staticmethod
    def _per_sample(mr, ds, keys, bounded) -> dict:
        o = mr.outputs
        flags = lambda t: [bool(v) for v in t.tolist()]  # noqa: E731
        return {
            "ids": [ds.sample_id(int(i)) for i in mr.indices], "label": o["label"].tolist(),
            "clean_pred": o["clean_pred"].tolist(),
            "robust": {a: {k: flags(o[f"robust/{a}/{k}"]) for k in keys} for a in bounded},
            "ensemble": {k: flags(o[f"ensemble/{k}"]) for k in keys if f"ensemble/{k}" in o},
        }

    def _patch(self, ctx: ProbeContext, clf, ds) -> dict:
        p = self.params
        eng = ctx.engine
        if p.patch_train:
            from ..data import load_dataset

            train, ev = load_dataset(p.patch_train), ds
            how = f"trained on {p.patch_train}, evaluated on the selected samples"
        else:
            perm = ctx.generator("adversarial-patch").permutation(len(ds))
            half = len(ds) // 2
            train, ev = ds.subset(np.sort(perm[:half])), ds.subset(np.sort(perm[half:]))
            how = f"trained on a seeded half of the selected samples (seed {ctx.seed}), evaluated on the other half"
        m_train = _Aligned(clf, eng.alignment(train)).eval()
        m_eval = _Aligned(clf, eng.alignment(ev)).eval()
        att = self._make("patch", p.norm)
        gen = torch.Generator(device=eng.device).manual_seed(derive_seed(ctx.seed, "patch-fit"))
        losses = []
        for e in range(att.epochs):  # every process trains the same patch on every batch
            eng.map(train, lambda b: (losses.append(att.fit_step(m_train, eng.to_float(b.images), b.labels, gen)),
                                      {})[1], grad=True, shard=False, desc=f"patch epoch {e + 1}/{att.epochs}")
        c, h, w = clf.config.input_size
        rnd = get_attack("patch", size=att.size, patch=torch.rand((c, att.side(h, w), att.side(h, w)), generator=gen,
                                                                  device=eng.device))

        def fe(b):
            x, y = eng.to_float(b.images), b.labels
            seed = derive_seed(ctx.seed, "patch", int(b.indices[0]))  # same placements for both patches
            return {"label": y, "clean": m_eval(x).argmax(1), "patched": m_eval(att(m_eval, x, y, seed=seed).adv).argmax(1),
                    "random": m_eval(rnd(m_eval, x, y, seed=seed).adv).argmax(1)}

        o = eng.map(ev, fe, desc="patch evaluation").outputs
        y, ok = o["label"], o["clean"] == o["label"]
        res = {
            "how": how, "size": att.size, "side_px": att.side(h, w), "target_class": att.target_class,
            "epochs": att.epochs, "n_train": len(train), "n_eval": int(len(y)), "final_train_loss": losses[-1] if losses else None,
            "clean_accuracy": float(ok.double().mean()), "patched_accuracy": float((o["patched"] == y).double().mean()),
            "random_patch_accuracy": float((o["random"] == y).double().mean()),
            "success_rate": float((o["patched"][ok] != y[ok]).double().mean()) if ok.any() else None,
            "patch_png": _png(_to_u8(att.patch), max_side=256),
        }
        if att.target_class is not None:
            res["target_rate"] = float((o["patched"] == att.target_class).double().mean())
        return res

    # -- report -------------------------------------------------------------------------------------
    def summary(self, r: dict) -> list[tuple[str, str]]:
        out = [("clean accuracy", f"{r['clean_accuracy']:.4f}" if r.get("clean_accuracy") is not None else "-")]
        if r.get("ensemble"):
            out += [(f"{r['ensemble_name']} @ {k}", f"{v:.4f}") for k, v in r["ensemble"].items()]
        elif r.get("robust_accuracy"):
            a = next(iter(r["robust_accuracy"]))
            out += [(f"{a} @ {k}", f"{v:.4f}") for k, v in r["robust_accuracy"][a].items()]
        for a, m in r.get("minimal", {}).items():
            if m.get("median_successful") is not None:
                out.append((f"{a} median {m['norm'].upper()} of minimal perturbations", f"{m['median_successful']:.4f}"))
        if "patch" in r:
            out.append((f"patch ({r['patch']['size']:.0%} of the area) accuracy", f"{r['patch']['patched_accuracy']:.4f}"))
        w = r.get("warnings", [])
        out.append(("sanity checks", f"{len(w)} FAILED: SUSPECT" if w else "passed"))
        return out

    def render(self, r: dict, sec) -> None:
        import matplotlib.pyplot as plt

        w = r.get("warnings", [])
        if w:
            sec.warn(f"SUSPECT EVALUATION: {len(w)} sanity check(s) failed. The robust accuracies below probably "
                     "overestimate the model's robustness (gradient masking); do not report them as such.")
            for line in w:
                sec.warn(line)
        else:
            sec.p("Sanity checks passed: robust accuracy falls with epsilon, a large budget breaks the model, "
                  "no black-box attack beats the white-box ones, iterative attacks beat FGSM.")
        sec.p(f"{r['n_evaluated']} images ({r['n_selected']} selected of {r['n_dataset']}), threat model "
              f"{r['norm'].upper()}, clean accuracy {r['clean_accuracy']:.2%}. Protocol: {r['protocol']}.")
        keys = list(r["eps"])
        rows = [(a, ATTACKS[a].threat if a in ATTACKS else "", *[v.get(k) for k in keys])
                for a, v in r["robust_accuracy"].items()]
        if r.get("ensemble"):
            rows.append((r["ensemble_name"], "worst case per sample", *[r["ensemble"].get(k) for k in keys]))
        if r.get("worst_case"):
            rows.append(("every attack above", "worst case per sample", *[r["worst_case"].get(k) for k in keys]))
        sec.table(["attack", "threat", *[f"eps {k}" for k in keys]], rows)
        fig, ax = plt.subplots(figsize=(6.4, 3.8))
        xs = [0.0] + [r["eps"][k] for k in keys]
        scale = 255 if r["norm"] == "linf" else 1
        for a, v in r["robust_accuracy"].items():
            ax.plot([e * scale for e in xs], [r["clean_accuracy"]] + [v[k] for k in keys], "o-", ms=3, lw=1.2, label=a)
        for a, m in r.get("minimal", {}).items():
            if m["norm"] == r["norm"] and m["distances"]:
                d = np.array([np.inf if v is None else v for v in m["distances"]])
                grid = np.linspace(0, xs[-1], 200)
                acc = [(np.sum(d > g) + 0.0) / r["n_evaluated"] for g in grid]
                ax.plot(grid * scale, acc, "--", lw=1, label=f"{a} (minimal)")
        if r.get("ensemble"):
            ax.plot([e * scale for e in xs], [r["clean_accuracy"]] + [r["ensemble"][k] for k in keys], "k-", lw=2.4,
                    label=r["ensemble_name"])
        if r.get("worst_case") and r["worst_case"] != r.get("ensemble"):
            ax.plot([e * scale for e in xs], [r["clean_accuracy"]] + [r["worst_case"][k] for k in keys], "k:", lw=1.6,
                    label="worst case over every attack")
        ax.set_xlabel("epsilon (x/255)" if r["norm"] == "linf" else "epsilon (L2)")
        ax.set_ylabel("robust accuracy")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        sec.figure(fig, "Robust accuracy against epsilon per attack (eps 0: clean accuracy); the thick line is the "
                        "per-sample worst case over the ensemble")
        detail = []
        for a, v in r["success_rate"].items():
            for k in keys:
                q = r["queries"].get(a, {}).get(k) or r["queries"].get(a, {}).get("all") or {}
                t = r["seconds"].get(a, {}).get(k, r["seconds"].get(a, {}).get("all"))
                detail.append((a, k, v.get(k), q.get("mean"), q.get("median_successful"), t))
        sec.p("Attack success rate (among correctly classified images), queries per image (black-box attacks) and "
              "compute time (seconds, summed over processes)")
        sec.table(["attack", "eps", "success rate", "mean queries", "median queries (successful)", "seconds"], detail)
        if r.get("minimal"):
            sec.table(["minimal-perturbation attack", "norm", "median size (failures count as infinite)",
                       "median size (successful)", "success rate"],
                      [(a, m["norm"], m["median"], m["median_successful"], m["success_rate"])
                       for a, m in r["minimal"].items()])
        if r.get("ensemble_black_box_only"):
            sec.p("Images that resisted every white-box member of the ensemble but fell to a black-box one: " + ", ".join(
                f"{v:.2%} at eps {k}" for k, v in r["ensemble_black_box_only"].items()) + " (should be ~0).")
        if r.get("large_eps"):
            sec.p(f"Large-budget check: PGD (margin loss, no random start) at eps {r['large_eps']['eps']} leaves "
                  f"{r['large_eps']['accuracy']:.2%} accuracy.")
        if "patch" in r:
            self._render_patch(r["patch"], sec)
        if r.get("gallery"):
            self._render_gallery(r, sec)

    def _render_patch(self, pr: dict, sec) -> None:
        sec.p(f"Universal patch covering {pr['size']:.0%} of the image ({pr['side_px']} px square) at random positions, "
              f"{pr['how']}.")
        sec.table(["", "accuracy"], [("clean", pr["clean_accuracy"]), ("adversarial patch", pr["patched_accuracy"]),
                                     ("random patch of the same size (occlusion baseline)", pr["random_patch_accuracy"])])
        sec.image_png(base64.b64decode(pr["patch_png"]), "The trained patch", width=128)

    def _render_gallery(self, r: dict, sec) -> None:
        import matplotlib.pyplot as plt
        from PIL import Image

        g = r["gallery"]
        names = r.get("class_names") or []

        def nm(i):
            return names[i].split(",")[0] if i < len(names) else str(i)

        fig, axes = plt.subplots(len(g), 3, figsize=(6, 2.1 * len(g)), squeeze=False)
        for row, item in zip(axes, g):
            imgs = [Image.open(io.BytesIO(base64.b64decode(item[k]))) for k in ("clean_png", "delta_png", "adv_png")]
            titles = [f"clean: {nm(item['label'])} (predicted)", f"perturbation x{item['amplification']:.0f}",
                      f"adversarial: {nm(item['adv_pred'])}"]
            for ax, im, t in zip(row, imgs, titles):
                ax.imshow(im, interpolation="nearest")
                ax.set_title(t, fontsize=8, color="C3" if t.startswith("adversarial") and item["adv_pred"] != item["label"]
                             else "k")
                ax.axis("off")
        sec.figure(fig, f"Clean image (correctly classified), amplified perturbation (grey is zero) and adversarial "
                        f"image with the model's predictions ({g[0]['attack']}, eps {g[0]['eps']}; red: fooled)")
