"""Square attack (Andriushchenko et al. 2020): score-based black-box random search, Linf and L2.

Follows the authors' PyTorch version (the one in auto-attack): vertical-stripe (Linf) or
window-pattern (L2) initialisation, one square window per iteration whose side shrinks on the
``p`` schedule, margin loss, one model query per iteration and active sample. As in the authors'
original code, a Linf window is redrawn when it would leave the image unchanged (no wasted queries).
Samples leave the batch when fooled, and the active tensors are only re-gathered when that happens.
The window position is drawn per iteration and shared by the batch, as in the reference, from a stream
that depends on the seed alone; the signs are drawn per sample. So each sample's search is the same
whatever batch it runs in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import UsageError
from .base import Attack, register_attack
from .rng import SampleRandom

_SCHEDULE = ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128), (8000, 256))


def p_selection(p_init: float, it: int, n_queries: int) -> float:
    """Fraction of the image a square covers at iteration ``it`` (schedule rescaled to ``n_queries``)."""
    it = int(it / n_queries * 10000)
    for bound, div in _SCHEDULE:
        if it <= bound:
            return p_init / div
    return p_init / 512


def _corner(h: int, w: int, s: int, pos: torch.Generator) -> tuple[int, int]:
    """Top-left corner of an s x s window, uniform over the positions that fit."""
    return int(torch.randint(0, h - s, (1,), generator=pos)), int(torch.randint(0, w - s, (1,), generator=pos))


def _eta(s: int, pos: torch.Generator, device) -> torch.Tensor:
    """The L2 window pattern of the reference: two nested-rectangle blocks of opposite sign."""

    def rects(a: int, b: int) -> torch.Tensor:
        d = torch.zeros(a, b, device=device)
        xc, yc = a // 2 + 1, b // 2 + 1
        c0, c1 = xc - 1, yc - 1
        for k in range(max(xc, yc)):
            d[max(c0, 0):min(c0 + 2 * k + 1, a), max(0, c1):min(c1 + 2 * k + 1, b)] += 1.0 / (k + 1) ** 2
            c0 -= 1
            c1 -= 1
        return d / d.pow(2).sum().sqrt()

    d = torch.zeros(s, s, device=device)
    d[: s // 2] = rects(s // 2, s)
    d[s // 2:] = -rects(s - s // 2, s)
    d = d / d.pow(2).sum().sqrt()
    if torch.rand(1, generator=pos).item() > 0.5:
        d = d.t()
    return d


@register_attack("square")
@dataclass(kw_only=True)
class Square(Attack):
    """Score-based black box: needs only the logits; ``n_queries`` per restart and sample; the result
    carries the queries each sample used."""

    n_queries: int = 5000
    restarts: int = 1
    p_init: float = 0.8
    loss: str = "margin"

    threat = "black-box (scores)"

    def __post_init__(self):
        super().__post_init__()
        if self.loss not in ("margin", "ce"):
            raise UsageError(f"square loss must be 'margin' or 'ce', got {self.loss!r}")
        if self.n_queries < 1 or self.restarts < 1:
            raise UsageError("square needs n_queries >= 1 and restarts >= 1")

    def _scores(self, model, x, y, tgt):
        """(margin: > 0 while not fooled, loss to minimise) for images ``x``."""
        with torch.no_grad():
            logits = model(x).float()
        lab = y if tgt is None else tgt
        z = logits.gather(1, lab[:, None])[:, 0]
        other = logits.scatter(1, lab[:, None], float("-inf")).amax(1)
        m = z - other if tgt is None else other - z
        if self.loss == "ce":
            ce = F.cross_entropy(logits, lab, reduction="none")
            return m, (-ce if tgt is None else ce)
        return m, m

    def perturb(self, model, x, y, target, rng):
        adv = x.clone()
        queries = torch.zeros(len(x), device=x.device)
        todo = torch.arange(len(x), device=x.device)
        for _ in range(self.restarts):
            if len(todo) == 0:
                break
            a, q, ok = self._run(model, x[todo], y[todo], None if target is None else target[todo], rng.subset(todo))
            adv[todo] = torch.where(ok.view(-1, 1, 1, 1), a, adv[todo])
            queries[todo] += q
            todo = todo[~ok]
        return adv, queries

    def _run(self, model, x, y, tgt, rng: SampleRandom):
        n, c, h, w = x.shape
        dev = x.device
        eps = self.eps
        n_feat = c * h * w
        # window positions come from a CPU generator shared by the batch (no device synchronisation per iteration)
        pos = rng.shared()
        if self.norm == "linf":
            x_best = (x + eps * rng.sign(c, 1, w).to(x)).clamp(0, 1)
        else:
            x_best = (x + self._l2_init(x, rng, pos) * eps).clamp(0, 1)
        m_min, l_min = self._scores(model, x_best, y, tgt)
        queries = torch.ones(n, device=dev)
        out = x_best.clone()
        done = m_min <= 0
        act = (~done).nonzero().flatten()
        xa, xb, ya, ta, mm, lm = x[act], x_best[act], y[act], None if tgt is None else tgt[act], m_min[act], l_min[act]
        ra = rng.subset(act)
        for i in range(self.n_queries):
            if len(act) == 0:
                break
            p = p_selection(self.p_init, i, self.n_queries)
            if self.norm == "linf":
                s = min(max(int(round(math.sqrt(p * n_feat / c))), 1), h - 1, w - 1)
                vh, vw = _corner(h, w, s, pos)
                x_new = xb.clone()
                x_new[:, :, vh:vh + s, vw:vw + s] = self._linf_window(xa, xb, vh, vw, s, ra)
            else:
                x_new = self._l2_step(xa, xb, p, ra, pos)
            margin, loss = self._scores(model, x_new, ya, ta)
            queries[act] += 1
            improved = (loss < lm) | (margin <= 0)
            lm = torch.where(loss < lm, loss, lm)
            mm = torch.where(improved, margin, mm)
            xb = torch.where(improved.view(-1, 1, 1, 1), x_new, xb)
            hit = mm <= 0
            if hit.any():  # write the fooled ones back, keep searching with the others
                out[act[hit]] = xb[hit]
                done[act[hit]] = True
                keep = ~hit
                act, xa, xb, ya, mm, lm = act[keep], xa[keep], xb[keep], ya[keep], mm[keep], lm[keep]
                ra = ra.subset(keep)
                ta = None if ta is None else ta[keep]
        out[act] = xb
        return out, queries, done

    def _linf_window(self, xa, xb, vh, vw, s, rng: SampleRandom) -> torch.Tensor:
        """New values of the window: a vertex of the ball with one random sign per channel. Where that would
        leave the window as it is (a wasted query), another sign pattern is drawn uniformly among the others,
        as the authors' code resamples until the window changes."""
        n, c = xa.shape[:2]
        dev = xa.device
        base = xa[:, :, vh:vh + s, vw:vw + s]
        u = rng.uniform(c + 1, dtype=torch.float64)  # one draw: the signs and the pattern of a redraw
        sign = ((u[:, :c] < 0.5).to(xa.dtype) * 2 - 1).view(n, c, 1, 1)
        win = (base + self.eps * sign).clamp(0, 1)
        if c > 16:
            return win
        same = (win - xb[:, :, vh:vh + s, vw:vw + s]).abs().flatten(1).amax(1) < 1e-7
        # at most one sign pattern reproduces the current window, so flipping a random non-empty set of channels
        # draws uniformly among the patterns that change it
        code = 1 + torch.floor(u[:, c:] * (2 ** c - 1)).to(torch.int64)
        flip = 1 - 2 * ((code >> torch.arange(c, device=dev)) & 1).to(sign.dtype)
        sign = torch.where(same.view(-1, 1, 1, 1), sign * flip.view(n, c, 1, 1), sign)
        return (base + self.eps * sign).clamp(0, 1)

    # -- L2 ---------------------------------------------------------------------------------------
    def _l2_init(self, x, rng: SampleRandom, pos: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape
        delta = torch.zeros_like(x)
        s = h // 5
        sp = (h - s * 5) // 2
        vh = sp
        for _ in range(h // s):
            vw = sp
            for _ in range(w // s):
                delta[:, :, vh:vh + s, vw:vw + s] += (_eta(s, pos, x.device).view(1, 1, s, s)
                                                      * rng.sign(c, 1, 1).to(x))
                vw += s
            vh += s
        return delta / (delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-12)

    def _l2_step(self, xa, xb, p, rng: SampleRandom, pos: torch.Generator) -> torch.Tensor:
        n, c, h, w = xa.shape
        dev = xa.device
        eps = self.eps
        delta = xb - xa
        s = max(int(round(math.sqrt(p * c * h * w / c))), 3)
        if s % 2 == 0:
            s += 1
        s = min(s, h - 1, w - 1)
        vh, vw = _corner(h, w, s, pos)
        vh2, vw2 = _corner(h, w, s, pos)
        win1 = (slice(None), slice(None), slice(vh, vh + s), slice(vw, vw + s))
        win2 = (slice(None), slice(None), slice(vh2, vh2 + s), slice(vw2, vw2 + s))
        norm_win1 = delta[win1].pow(2).sum(dim=(-2, -1), keepdim=True).sqrt()
        mask = torch.zeros(1, 1, h, w, device=dev)
        mask[win1] = 1
        mask[win2] = 1
        norm_img = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        norm_windows = (delta * mask).flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        new = _eta(s, pos, dev).view(1, 1, s, s) * rng.sign(c, 1, 1).to(xa)
        new = new + delta[win1] / (1e-12 + norm_win1)
        budget = (torch.clamp(eps ** 2 - norm_img ** 2, min=0) / c + norm_windows ** 2).sqrt()
        new = new / (1e-12 + new.pow(2).sum(dim=(-2, -1), keepdim=True).sqrt()) * budget
        delta = delta.clone()
        delta[win2] = 0.0
        delta[win1] = new
        unit = delta / (delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-12)
        return (xa + unit * eps).clamp(0, 1)
