"""Running the attacks: the plan (epsilons, attacks, the large budget), the clean pass, and the attacks over
large batches of the correctly classified samples, each sample's draws keyed by its dataset index."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ...attacks import (ATTACKS, AttackResult, check_budget, default_eps, derive_seed, get_attack, large_eps, parse_eps,
                        sample_keys)
from ...attacks.protocol import WHITE_BOX, eps_key
from ...errors import ImgclassError
from ...report.images import image_base64
from .params import AdversarialParams, check_eps
from .records import ChunkOutcome, Records

__all__ = ["Aligned", "Plan", "make_plan", "make_attack", "default_attack_batch_size", "run_attacks"]


class Aligned(nn.Module):
    """The classifier with its logits mapped to the dataset's classes (differentiable)."""

    def __init__(self, clf: nn.Module, alignment):
        super().__init__()
        self.clf, self.alignment = clf, alignment

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.alignment.apply(self.clf(x).float())


@dataclass
class Plan:
    """What runs: epsilons (keys as written, ascending), attacks by kind, the large budget or why it is skipped."""

    norm: str
    keys: list[str]
    eps: dict[str, float]
    bounded: list[str]
    minimal: list[str]
    ensemble: tuple[str, ...]
    large: tuple[str, float] | None
    large_skip: str | None
    gallery_attack: str | None


def make_plan(p: AdversarialParams, input_size: tuple[int, int, int]) -> Plan:
    """The plan for a model's input size; L2 budgets are checked against the image's diagonal here."""
    norm = p.norm
    texts = list(p.eps) if p.eps else list(default_eps(input_size, norm))
    eps = {}
    for e in texts:
        v = check_eps(e, norm)
        if norm == "l2":
            check_budget(v, "l2", text=str(e), input_size=input_size, what="adversarial: eps")
        eps[eps_key(e, v)] = v
    keys = sorted(eps, key=eps.get)
    names = [a for a in p.attacks if a != "patch"]
    bounded = [a for a in names if not ATTACKS[a].minimal]
    minimal = [a for a in names if ATTACKS[a].minimal]
    large, skip = None, None
    if p.sanity_checks:
        text = p.large_eps if p.large_eps is not None else large_eps(input_size, norm, above=eps[keys[-1]])
        value = check_budget(parse_eps(text), norm, text=str(text), input_size=input_size,
                             what="adversarial: large_eps")
        if value <= eps[keys[-1]]:
            skip = (f"the large budget {text} is not above the largest tested eps {keys[-1]}, so it would prove "
                    "nothing")
        else:
            large = (str(text), value)
    else:
        skip = "sanity_checks=false"
    gal = bounded[0] if bounded else (minimal[0] if minimal else None)
    return Plan(norm, keys, eps, bounded, minimal, tuple(p.ensemble), large, skip, gal)


def make_attack(p: AdversarialParams, name: str, norm: str, eps: float | None = None, **over):
    cls = ATTACKS[name]
    kw: dict = {"norm": norm if norm in cls.norms else cls.norms[0], "eot_samples": p.eot_samples}
    if cls.threat == "patch":
        kw["size"] = p.patch_size
    elif not cls.minimal:
        kw["eps"] = eps
    kw.update(p.attack_params.get(name, {}))
    kw.update(over)
    return get_attack(name, **kw)


def default_attack_batch_size(device: torch.device, engine_batch: int, input_size: tuple[int, int, int]) -> int:
    """The engine's batch on the CPU; on CUDA at least 1024 images of up to 64 px a side, 256 larger ones."""
    if device.type != "cuda":
        return int(engine_batch)
    return max(int(engine_batch), 1024 if max(input_size[1:]) <= 64 else 256)


def to_u8(x: torch.Tensor) -> np.ndarray:
    return (x.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)


class _Attacker:
    """Runs every planned attack on one batch of correctly classified samples."""

    def __init__(self, p: AdversarialParams, plan: Plan, model: nn.Module, seed: int):
        self.p, self.plan, self.model, self.seed = p, plan, model, seed
        self.gallery: list[dict] = []

    def _call(self, att, x, y, index, salt, out: ChunkOutcome, time_key) -> AttackResult:
        seed = derive_seed(self.seed, *salt)
        t0 = time.perf_counter()
        res = att(self.model, x, y, seed=seed, keys=sample_keys(seed, index, x.device))
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        out.seconds[time_key] = out.seconds.get(time_key, 0.0) + time.perf_counter() - t0
        return res

    def __call__(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, first: bool) -> ChunkOutcome:
        p, plan = self.p, self.plan
        out = ChunkOutcome()
        for k in plan.keys:
            robust = {}
            for name in plan.bounded:
                res = self._call(make_attack(p, name, plan.norm, plan.eps[k]), x, y, index, (name, k), out, (name, k))
                robust[name] = ~res.success
                out.robust[(name, k)] = robust[name]
                if res.queries is not None:
                    out.queries[(name, k)] = res.queries.float()
                if first and name == plan.gallery_attack and k == plan.keys[-1]:
                    self._stash(x, res, y, name, k)
            if plan.ensemble:  # white-box members first; members not run above attack only the samples standing
                ens = torch.ones(len(y), dtype=torch.bool, device=y.device)
                white = [m for m in plan.ensemble if ATTACKS[m].threat == WHITE_BOX]
                for group in (white, [m for m in plan.ensemble if m not in white]):
                    for m in group:
                        if m in robust:
                            ens &= robust[m]
                    for m in group:
                        if m not in robust:
                            todo = ens.nonzero().flatten()
                            res = self._call(make_attack(p, m, plan.norm, plan.eps[k]), x[todo], y[todo], index[todo],
                                             ("ens", m, k), out, (f"ensemble:{m}", k))
                            ens[todo[res.success]] = False
                    if group is white:
                        out.ensemble_white[k] = ens.clone()
                out.ensemble[k] = ens
        for name in plan.minimal:
            res = self._call(make_attack(p, name, plan.norm), x, y, index, (name,), out, (name, "all"))
            out.distance[name] = torch.where(res.success, res.norm, torch.full_like(res.norm, float("inf")))
            if res.queries is not None:
                out.queries[(name, "all")] = res.queries.float()
            if first and name == plan.gallery_attack:
                self._stash(x, res, y, name, "minimal")
        if plan.large is not None:  # from the clean image, margin loss: only the gradients can help
            att = make_attack(p, "pgd", plan.norm, plan.large[1], random_start=False, loss="margin", restarts=1,
                              step_size=None)
            out.large = ~self._call(att, x, y, index, ("large",), out, ("_large", "all")).success
        return out

    def _stash(self, xc, res, yc, name, k) -> None:
        """Keep the first batch's examples for the gallery, the successful ones first."""
        n_max = self.p.gallery
        if self.gallery or n_max <= 0 or len(xc) == 0:
            return
        pick = torch.argsort((~res.success).to(torch.int8), stable=True)[:n_max]
        adv = res.adv[pick]
        with torch.no_grad():
            ap = self.model(adv).argmax(1)
        for j, i in enumerate(pick.tolist()):
            delta = (adv[j] - xc[i]).float()
            amp = 0.5 / max(float(delta.abs().max()), 1e-12)
            self.gallery.append({
                "attack": name, "eps": k, "label": int(yc[i]), "adv_pred": int(ap[j]), "amplification": amp,
                "clean_png": image_base64(to_u8(xc[i]), max_side=128),
                "adv_png": image_base64(to_u8(adv[j]), max_side=128),
                "delta_png": image_base64(to_u8(0.5 + delta * amp), max_side=128),
            })


@dataclass
class RunOutput:
    records: Records
    indices: np.ndarray  # positions in the selected subset of the evaluated samples
    skipped: list
    seconds: float
    randomized: bool
    gallery: list[dict]
    batch_size: int  # images per attack call (the smallest used, after any out-of-memory split)


def run_attacks(ctx, model: nn.Module, ds, index_of: np.ndarray, plan: Plan, p: AdversarialParams) -> RunOutput:
    """The clean pass over ``ds`` (the selected subset; ``index_of`` maps its positions to the dataset's), then
    every attack over batches of ``attack_batch_size`` correctly classified samples. Under torchrun each process
    takes every N-th batch. A batch that runs out of memory is split in two: results do not depend on the batch."""
    eng = ctx.engine
    state = {"checked": False, "randomized": False}

    def clean(b):
        x = eng.to_float(b.images)
        with torch.no_grad():
            logits = model(x)
            if not state["checked"]:  # a randomized model answers differently twice
                state["checked"] = True
                state["randomized"] = not torch.allclose(logits, model(x), rtol=1e-4, atol=1e-5)
        return {"label": b.labels, "clean_pred": logits.argmax(1)}

    names = plan.bounded + plan.minimal
    t0 = time.perf_counter()
    mr = eng.map(ds, clean, desc="adversarial: clean pass")
    rec = Records(mr.outputs.get("label", torch.empty(0, dtype=torch.long)),
                  mr.outputs.get("clean_pred", torch.empty(0, dtype=torch.long)))
    pos = rec.correct.nonzero().flatten()
    size = int(p.attack_batch_size
               or default_attack_batch_size(eng.device, eng.batch_size, ctx.classifier.config.input_size))
    todo = [pos[s:s + size] for s in range(0, len(pos), size)][eng.dist.rank::eng.dist.world_size]
    attacker = _Attacker(p, plan, model, ctx.seed)
    used = size
    first = eng.dist.rank == 0
    desc = f"adversarial ({', '.join(names + (['ensemble'] if plan.ensemble else [])) or 'checks'})"
    while todo:
        chunk = todo.pop(0)
        local = mr.indices[chunk.numpy()]
        loaded = eng.map(ds.subset(local), lambda b: {"x": b.images, "y": b.labels}, grad=True, shard=False,
                         desc=f"{desc}: {len(chunk)} images")
        if len(loaded.indices) != len(chunk):
            raise ImgclassError("adversarial: images read in the clean pass could not be read again")
        x = eng.to_float(loaded.outputs["x"].to(eng.device))
        y = loaded.outputs["y"].to(eng.device)
        index = torch.as_tensor(index_of[local], dtype=torch.int64)
        try:
            part = attacker(x, y, index, first)
        except torch.OutOfMemoryError:
            if len(chunk) == 1:
                raise
            del x, y
            if eng.device.type == "cuda":
                torch.cuda.empty_cache()
            half = (len(chunk) + 1) // 2
            todo[:0] = [chunk[:half], chunk[half:]]
            used = min(used, half)
            continue
        first = False
        rec.put(chunk, part)
    if eng.dist.enabled:
        from ...distributed import all_gather_objects

        parts = all_gather_objects((rec, attacker.gallery, used), eng.dist)
        rec = Records.merge([r for r, _, _ in parts])
        gallery = next((g for _, g, _ in parts if g), [])
        used = min(u for _, _, u in parts)
    else:
        gallery = attacker.gallery
    if p.sanity_checks and plan.large is not None and rec.large is None:
        rec.large = torch.zeros(len(rec), dtype=torch.bool)  # no sample was classified correctly
    return RunOutput(rec, mr.indices, mr.skipped, time.perf_counter() - t0, state["randomized"], gallery, used)

