"""HopSkipJump (Chen, Jordan & Wainwright 2020): decision-based black box, minimal L2 or Linf perturbation.

Uses only the predicted label. From a misclassified starting point (uniform noise, then a binary
search towards the clean image) it repeats: binary search to the decision boundary, estimate the
boundary's normal from the signs of ``num_evals`` random probes, step along it with a geometrically
shrinking step size. Vectorised over the batch (each sample has its own search state, probe count,
query budget and random draws, so its result does not depend on the batch); written after the paper
and the reference implementation's constants (theta, delta, the sqrt(t) growth of the probe count),
since no maintained PyTorch peer exists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import UsageError
from .base import Attack, register_attack
from .rng import SampleRandom


@register_attack("hsj")
@dataclass(kw_only=True)
class HopSkipJump(Attack):
    """Minimal-perturbation decision-based attack; ``max_queries`` per sample bounds the work (the
    result carries the queries used and ``norm``, the distance reached)."""

    norm: str = "l2"
    max_queries: int = 1000
    init_evals: int = 100
    max_evals: int = 10000
    gamma: float = 1.0
    init_tries: int = 100
    chunk: int = 4096  # images per model call while probing

    threat = "black-box (decisions)"
    minimal = True
    supports_target = False

    def __post_init__(self):
        super().__post_init__()
        if self.max_queries < 1 or self.init_evals < 1 or self.init_tries < 1 or self.chunk < 1:
            raise UsageError("hsj needs max_queries, init_evals, init_tries and chunk >= 1")

    # -- model access ------------------------------------------------------------------------------
    def _adv(self, model, imgs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = []
        with torch.no_grad():
            for s in range(0, len(imgs), self.chunk):
                out.append(model(imgs[s:s + self.chunk]).argmax(1) != y[s:s + self.chunk])
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool, device=imgs.device)

    def _dist(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        d = (a - x).flatten(1)
        return d.norm(dim=1) if self.norm == "l2" else d.abs().amax(1)

    @staticmethod
    def _blend(x, a, alpha, norm):
        al = alpha.view(-1, 1, 1, 1)
        if norm == "l2":
            return (1 - al) * x + al * a
        return torch.min(torch.max(a, x - al), x + al)

    # -- the pieces ----------------------------------------------------------------------------------
    def _bsearch(self, model, x, a, y, q, norm, theta):
        """Move ``a`` (adversarial) towards ``x`` to the boundary; count a query per probe and sample."""
        if norm == "l2":
            hi = torch.ones(len(x), device=x.device)
            thr = torch.full_like(hi, theta)
        else:
            hi = self._dist(x, a)
            thr = torch.clamp(hi * theta, max=theta)
        lo = torch.zeros_like(hi)
        while True:
            todo = ((hi - lo) / thr > 1).nonzero().flatten()
            if len(todo) == 0:
                break
            mid = (hi[todo] + lo[todo]) / 2
            ok = self._adv(model, self._blend(x[todo], a[todo], mid, norm), y[todo])
            q[todo] += 1
            hi[todo] = torch.where(ok, mid, hi[todo])
            lo[todo] = torch.where(ok, lo[todo], mid)
        return self._blend(x, a, hi, norm)

    def _grad(self, model, xb, y, delta, k: torch.Tensor, rng: SampleRandom):
        """Boundary normal at ``xb`` from ``k[i]`` random probes for sample i (sums kept, not the probes)."""
        n = len(xb)
        numel = xb[0].numel()
        s_fr = torch.zeros_like(xb)
        s_r = torch.zeros_like(xb)
        s_f = torch.zeros(n, device=xb.device)
        k_max = int(k.max())
        per = max(1, self.chunk // max(n, 1))
        stream = rng.stream()  # probe j of sample i: elements j * numel ... of this draw, however it is chunked
        done = 0
        while done < k_max:
            m = min(per, k_max - done)
            if self.norm == "l2":
                rv = rng.normal(m, *xb.shape[1:], stream=stream, start=done * numel)
            else:
                rv = rng.uniform(m, *xb.shape[1:], low=-1.0, high=1.0, stream=stream, start=done * numel)
            rv = rv.to(xb).transpose(0, 1)  # (m, n, C, H, W)
            rv = rv / rv.flatten(2).norm(dim=2).view(m, n, 1, 1, 1)
            d4 = delta.view(1, n, 1, 1, 1)
            probe = (xb.unsqueeze(0) + d4 * rv).clamp(0, 1)
            rv = (probe - xb.unsqueeze(0)) / d4
            use = (done + torch.arange(m, device=xb.device))[:, None] < k[None, :]  # (m, n)
            f = torch.zeros(m, n, device=xb.device)
            f[use] = self._adv(model, probe[use], y.expand(m, n)[use]).float() * 2 - 1
            rv = rv * use.view(m, n, 1, 1, 1)
            s_fr += (f.view(m, n, 1, 1, 1) * rv).sum(0)
            s_r += rv.sum(0)
            s_f += f.sum(0)
            done += m
        kf = k.to(xb.dtype)
        mean_f = s_f / kf
        g = s_fr / kf.view(-1, 1, 1, 1) - mean_f.view(-1, 1, 1, 1) * s_r / kf.view(-1, 1, 1, 1)
        same = mean_f.abs() == 1  # every probe on one side: move along (or against) the mean direction
        g = torch.where(same.view(-1, 1, 1, 1), mean_f.view(-1, 1, 1, 1) * s_r / kf.view(-1, 1, 1, 1), g)
        if self.norm == "l2":
            return g / (g.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-12)
        return g.sign()

    def perturb(self, model, x, y, target, rng):
        n = len(x)
        d = x[0].numel()
        theta = self.gamma / (d * math.sqrt(d)) if self.norm == "l2" else self.gamma / d ** 2
        q = torch.zeros(n, device=x.device)
        adv = x.clone()
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        init = rng.stream()  # try t of a sample: elements t * d ... of one draw, however many tries the others need
        for t in range(self.init_tries):  # a misclassified starting point: uniform noise
            todo = (~found).nonzero().flatten()
            if len(todo) == 0:
                break
            noise = rng.subset(todo).uniform(*x.shape[1:], stream=init, start=t * d).to(x)
            ok = self._adv(model, noise, y[todo])
            q[todo] += 1
            adv[todo[ok]] = noise[ok]
            found[todo[ok]] = True
        act = found.nonzero().flatten()
        if len(act) == 0:
            return x.clone(), q
        qa = q[act]
        xa, ya, rng_a = x[act], y[act], rng.subset(act)
        a = self._bsearch(model, xa, adv[act], ya, qa, "l2", theta)
        dist = self._dist(xa, a)
        it = 0
        while True:
            it += 1
            live = (qa < self.max_queries).nonzero().flatten()
            if len(live) == 0:
                break
            xl, al, yl, ql = xa[live], a[live], ya[live], qa[live]
            if it == 1:
                delta = torch.full((len(live),), 0.1, device=x.device)
            else:
                delta = (math.sqrt(d) if self.norm == "l2" else d) * theta * dist[live]
                delta = delta.clamp(min=1e-12)
            left = (self.max_queries - ql).to(torch.int64)  # each sample's own budget
            k = left.clamp(max=min(int(self.init_evals * math.sqrt(it)), self.max_evals)).clamp(min=1)
            upd = self._grad(model, al, yl, delta, k, rng_a.subset(live))
            ql += k
            step = self._dist(xl, al) / math.sqrt(it)
            moved = al.clone()
            searching = torch.ones(len(live), dtype=torch.bool, device=x.device)
            for _ in range(25):  # geometric step-size search
                idx = searching.nonzero().flatten()
                if len(idx) == 0:
                    break
                cand = (al[idx] + step[idx].view(-1, 1, 1, 1) * upd[idx]).clamp(0, 1)
                ok = self._adv(model, cand, yl[idx])
                ql[idx] += 1
                moved[idx[ok]] = cand[ok]
                searching[idx[ok]] = False
                step[idx[~ok]] /= 2
            al = self._bsearch(model, xl, moved, yl, ql, self.norm, theta)
            dl = self._dist(xl, al)
            better = dl <= dist[live]  # never give back ground (noise in the estimate)
            a[live] = torch.where(better.view(-1, 1, 1, 1), al, a[live])
            dist[live] = torch.where(better, dl, dist[live])
            qa[live] = ql
        adv[act] = a
        q[act] = qa
        return adv, q
