"""Perturbation methods: occlusion (Captum), RISE and extremal perturbation (written here).

Captum has occlusion. It has neither RISE (Petsiuk et al. 2018) nor the extremal/meaningful perturbation
of Fong & Vedaldi, and TorchRay, the reference for the latter, is unmaintained; both are written here
from the papers. Random draws (RISE masks) come from a seeded generator, once per call and shared by
every image, so a map does not depend on the batch it was computed in.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from captum.attr import Occlusion

from ..errors import UsageError
from ..models.classifier import Classifier
from .base import chunks, gaussian_blur, register_method, upsample


@register_method("occlusion", kind="perturbation", reduce="mean",
                 description="drop of the target logit when a sliding gray square covers each region "
                             "(Zeiler & Fergus 2014; Captum)")
def occlusion(classifier: Classifier, x: torch.Tensor, targets: torch.Tensor, *, internal_batch_size: int,
              window: int | None = None, stride: int | None = None, baseline: float = 0.5) -> torch.Tensor:
    c, h, w = x.shape[1:]
    k = window or max(1, min(h, w) // 8)
    st = stride or max(1, k // 2)
    if k > min(h, w) or k < 1 or st < 1:
        raise UsageError(f"occlusion window {k} / stride {st} do not fit a {h}x{w} image")
    occ = Occlusion(classifier)
    out = []
    for i in range(len(x)):  # one image per call: Captum's perturbations_per_eval is then the forward batch
        out.append(occ.attribute(x[i:i + 1], sliding_window_shapes=(c, k, k), strides=(c, st, st),
                                 baselines=float(baseline), target=targets[i:i + 1],
                                 perturbations_per_eval=internal_batch_size).detach())
    return torch.cat(out)


class RiseMasks:
    """The N random masks of RISE: s x s binary grids (keep probability p), upsampled bilinearly to
    (s + 1) cells and cropped at a random offset within one cell. Grids and offsets are drawn once from
    the seed; masks are built chunk by chunk, so chunking does not change them."""

    def __init__(self, n: int, size: tuple[int, int], *, cells: int = 7, p: float = 0.5, seed: int = 0):
        if n < 1 or cells < 1 or not 0 < p <= 1:
            raise UsageError(f"RISE needs n_masks >= 1, cells >= 1 and 0 < p <= 1, got {n}, {cells}, {p}")
        g = torch.Generator().manual_seed(seed)
        self.n, self.size, self.cells, self.p = n, size, cells, p
        self.grids = (torch.rand(n, 1, cells, cells, generator=g) < p).float()
        self.cell = (math.ceil(size[0] / cells), math.ceil(size[1] / cells))
        self.offsets = torch.stack([torch.randint(0, self.cell[0], (n,), generator=g),
                                    torch.randint(0, self.cell[1], (n,), generator=g)], 1)

    def __call__(self, s: slice, device: torch.device) -> torch.Tensor:
        (h, w), (ch, cw) = self.size, self.cell
        up = F.interpolate(self.grids[s].to(device), size=((self.cells + 1) * ch, (self.cells + 1) * cw),
                           mode="bilinear", align_corners=False)
        off = self.offsets[s]
        return torch.stack([up[j, 0, dy:dy + h, dx:dx + w] for j, (dy, dx) in enumerate(off.tolist())])


@register_method("rise", kind="perturbation",
                 description="RISE: average of random smooth masks weighted by the target probability of the "
                             "masked image (Petsiuk et al. 2018)")
def rise(classifier: Classifier, x: torch.Tensor, targets: torch.Tensor, *, internal_batch_size: int,
         n_masks: int = 4000, cells: int = 7, p: float = 0.5, seed: int = 0) -> torch.Tensor:
    masks = RiseMasks(n_masks, tuple(x.shape[-2:]), cells=cells, p=p, seed=seed)
    out = torch.zeros(len(x), *x.shape[-2:], device=x.device, dtype=x.dtype)
    with torch.no_grad():
        for s in chunks(n_masks, internal_batch_size):
            m = masks(s, x.device).to(x.dtype)
            for i in range(len(x)):
                prob = torch.softmax(classifier(x[i:i + 1] * m[:, None]).to(x.dtype), 1)[:, targets[i]]
                out[i] += (prob[:, None, None] * m).sum(0)
    return out / (n_masks * p)


def _area_template(n: int, area: float, device: torch.device) -> torch.Tensor:
    t = torch.zeros(n, device=device)
    t[n - int(round(area * n)):] = 1.0
    return t


@register_method("extremal", kind="perturbation",
                 description="extremal perturbation: the smooth mask of a given area that best preserves "
                             "(or deletes) the target logit when the rest is blurred (Fong, Patrick & "
                             "Vedaldi 2019, after Fong & Vedaldi 2017's meaningful perturbation)")
def extremal(classifier: Classifier, x: torch.Tensor, targets: torch.Tensor, *, internal_batch_size: int,
             area: float = 0.1, variant: str = "preserve", iterations: int = 300, step: int = 7,
             smooth: float = 1.0, blur_sigma: float | None = None, lr: float = 0.05,
             area_weight: tuple[float, float] = (10.0, 1000.0)) -> torch.Tensor:
    """Adam on a mask of ``ceil(H / step)`` cells (smoothed by ``smooth`` cells, upsampled bilinearly);
    the area constraint is Fong et al.'s rank penalty ``||sort(m) - r_a||^2`` whose weight grows
    geometrically over the iterations. The perturbation blends the image with its Gaussian blur
    (``blur_sigma`` pixels, default H / 22). ``variant``: 'preserve', 'delete' or 'dual' (both)."""
    if variant not in {"preserve", "delete", "dual"}:
        raise UsageError(f"variant must be 'preserve', 'delete' or 'dual', got {variant!r}")
    if not 0 < area < 1:
        raise UsageError(f"area must lie in (0, 1), got {area}")
    h, w = x.shape[-2:]
    mh, mw = math.ceil(h / step), math.ceil(w / step)
    sigma = blur_sigma if blur_sigma is not None else max(h, w) / 22.0
    template = _area_template(mh * mw, area, x.device).to(x.dtype)
    lam0, lam1 = area_weight
    growth = (lam1 / lam0) ** (1.0 / max(1, iterations - 1))
    out = []
    for s in chunks(len(x), internal_batch_size):
        xs, ts = x[s], targets[s]
        blurred = gaussian_blur(xs, sigma).detach()
        param = torch.full((len(xs), 1, mh, mw), 0.5, device=x.device, dtype=x.dtype, requires_grad=True)
        opt = torch.optim.Adam([param], lr=lr)
        lam = lam0
        for _ in range(iterations):
            small = gaussian_blur(param.clamp(0, 1), smooth) if smooth > 0 else param.clamp(0, 1)
            m = upsample(small[:, 0], (h, w))[:, None]
            loss = torch.zeros((), device=x.device)
            if variant in {"preserve", "dual"}:
                logit = classifier(m * xs + (1 - m) * blurred).gather(1, ts[:, None])
                loss = loss - logit.sum()
            if variant in {"delete", "dual"}:
                logit = classifier((1 - m) * xs + m * blurred).gather(1, ts[:, None])
                loss = loss + logit.sum()
            ranked = small.flatten(1).sort(1).values
            loss = loss + lam * (ranked - template).pow(2).mean(1).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward(inputs=[param])
            opt.step()
            lam *= growth
        with torch.no_grad():
            small = gaussian_blur(param.clamp(0, 1), smooth) if smooth > 0 else param.clamp(0, 1)
            out.append(upsample(small[:, 0], (h, w)))
    return torch.cat(out)
