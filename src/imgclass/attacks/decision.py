"""HopSkipJump (Chen, Jordan & Wainwright 2020): decision-based black box, minimal L2 or Linf perturbation.

Uses only the predicted label. From a misclassified starting point (uniform noise, then a binary
search towards the clean image) it repeats: binary search to the decision boundary, estimate the
boundary's normal from the signs of ``num_evals`` random probes, step along it with a geometrically
shrinking step size. Vectorised over the batch (each sample has its own search state and query
count); written after the paper and the reference implementation's constants (theta, delta, the
sqrt(t) growth of the probe count), since no maintained PyTorch peer exists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import UsageError
from .base import Attack, register_attack


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

    def _grad(self, model, xb, y, delta, k, gen):
        """Boundary normal at ``xb`` from ``k`` random probes per sample (sums kept, not the probes)."""
        n = len(xb)
        s_fr = torch.zeros_like(xb)
        s_r = torch.zeros_like(xb)
        s_f = torch.zeros(n, device=xb.device)
        per = max(1, self.chunk // max(n, 1))
        done = 0
        while done < k:
            m = min(per, k - done)
            shape = (m, *xb.shape)
            if self.norm == "l2":
                rv = torch.randn(shape, generator=gen, device=xb.device)
            else:
                rv = torch.rand(shape, generator=gen, device=xb.device) * 2 - 1
            rv = rv / rv.flatten(2).norm(dim=2).view(m, n, 1, 1, 1)
            d4 = delta.view(1, n, 1, 1, 1)
            probe = (xb.unsqueeze(0) + d4 * rv).clamp(0, 1)
            rv = (probe - xb.unsqueeze(0)) / d4
            f = self._adv(model, probe.flatten(0, 1), y.repeat(m)).view(m, n).float() * 2 - 1
            s_fr += (f.view(m, n, 1, 1, 1) * rv).sum(0)
            s_r += rv.sum(0)
            s_f += f.sum(0)
            done += m
        mean_f = s_f / k
        g = s_fr / k - mean_f.view(-1, 1, 1, 1) * s_r / k
        same = mean_f.abs() == 1  # every probe on one side: move along (or against) the mean direction
        g = torch.where(same.view(-1, 1, 1, 1), mean_f.view(-1, 1, 1, 1) * s_r / k, g)
        if self.norm == "l2":
            return g / (g.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-12)
        return g.sign()

    def perturb(self, model, x, y, target, gen):
        n = len(x)
        d = x[0].numel()
        theta = self.gamma / (d * math.sqrt(d)) if self.norm == "l2" else self.gamma / d ** 2
        q = torch.zeros(n, device=x.device)
        adv = x.clone()
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        for _ in range(self.init_tries):  # a misclassified starting point: uniform noise
            todo = (~found).nonzero().flatten()
            if len(todo) == 0:
                break
            noise = torch.rand((len(todo), *x.shape[1:]), generator=gen, device=x.device)
            ok = self._adv(model, noise, y[todo])
            q[todo] += 1
            adv[todo[ok]] = noise[ok]
            found[todo[ok]] = True
        act = found.nonzero().flatten()
        if len(act) == 0:
            return x.clone(), q
        qa = q[act]
        xa, ya = x[act], y[act]
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
            left = int(self.max_queries - ql.min())
            k = max(1, min(int(self.init_evals * math.sqrt(it)), self.max_evals, left))
            upd = self._grad(model, al, yl, delta, k, gen)
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
