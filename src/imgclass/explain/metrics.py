"""How faithful are the maps: deletion and insertion AUC (Petsiuk et al. 2018), and the
model-randomization sanity check (Adebayo et al. 2018). Written here: Captum has neither
(its ``infidelity``/``sensitivity_max`` are other metrics)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import UsageError
from ..models.classifier import Classifier
from .base import chunks, eval_mode, explain, gaussian_blur, model_device, resolve_targets, upsample

__all__ = ["CurveResult", "perturbation_curve", "deletion_auc", "insertion_auc", "random_maps",
           "RandomizationResult", "randomization_check", "randomized_copy", "weight_layers", "spearman"]


@dataclass
class CurveResult:
    """Target probability after each step of the game, per image, and its normalized area."""

    mode: str
    fractions: torch.Tensor  # (S + 1,) fraction of pixels deleted / inserted
    curves: torch.Tensor  # (N, S + 1) softmax probability of the target class
    auc: torch.Tensor  # (N,) trapezoidal area under each curve, in [0, 1]

    @property
    def mean_auc(self) -> float:
        return float(self.auc.double().mean()) if len(self.auc) else float("nan")


def _pixel_order(m: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Rank of every pixel, most salient first; ties broken by a seeded random permutation (not raster order)."""
    flat = m.flatten().float().cpu()
    perm = torch.randperm(flat.numel(), generator=generator)
    order = perm[torch.sort(-flat[perm], stable=True).indices]
    pos = torch.empty_like(order)
    pos[order] = torch.arange(order.numel())
    return pos


def perturbation_curve(
    classifier: Classifier,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: Any = None,
    *,
    mode: str = "deletion",
    n_steps: int = 100,
    substrate: str | torch.Tensor | None = None,
    blur_sigma: float | None = None,
    batch_size: int = 64,
    seed: int | Sequence[int] = 0,
) -> CurveResult:
    """The deletion or insertion game: pixels are replaced (deletion) or revealed (insertion) in order of
    decreasing saliency in ``n_steps`` equal steps; the curve is the target's softmax probability.

    Substrates as in the RISE authors' code: deletion replaces pixels by 'mean', the model's normalization
    mean (their ``torch.zeros_like`` acts on normalized inputs, so a deleted pixel is the mean colour, and
    black only for a model without normalization); insertion starts from 'blur', a Gaussian blur of the
    image (sigma 5 px at 224 px as theirs, scaled to the image size; theirs truncates the kernel at 11 x 11
    px, this one at 3 sigma). 'zeros' (black), 'gray' or a tensor like the images choose another. AUC:
    trapezoid rule over the fraction axis (the authors' ``auc``). Ties in a map are ordered by a
    permutation drawn from ``seed`` (one seed per image makes each curve independent of the batch it is
    computed in).
    """
    if mode not in {"deletion", "insertion"}:
        raise UsageError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    if n_steps < 1:
        raise UsageError(f"n_steps must be >= 1, got {n_steps}")
    x = images.detach().to(model_device(classifier), torch.float32)
    if maps.shape != (x.shape[0], *x.shape[2:]):
        raise UsageError(f"maps must have shape {(x.shape[0], *x.shape[2:])} (one per image, at its size), "
                         f"got {tuple(maps.shape)}")
    h, w = x.shape[-2:]
    substrate = substrate if substrate is not None else ("mean" if mode == "deletion" else "blur")
    if torch.is_tensor(substrate):
        sub = substrate.to(x.device, x.dtype).expand_as(x)
    elif substrate == "mean":
        mean = torch.as_tensor(classifier.config.mean, dtype=x.dtype, device=x.device)
        sub = mean.view(1, -1, 1, 1).expand_as(x)
    elif substrate == "zeros":
        sub = torch.zeros_like(x)
    elif substrate == "gray":
        sub = torch.full_like(x, 0.5)
    elif substrate == "blur":
        sub = gaussian_blur(x, blur_sigma if blur_sigma is not None else 5.0 * max(h, w) / 224.0)
    else:
        raise UsageError(f"substrate must be 'mean', 'zeros', 'blur', 'gray' or a tensor, got {substrate!r}")
    counts = torch.round(torch.linspace(0, h * w, n_steps + 1)).long().to(x.device)
    seeds = [int(seed)] * len(x) if isinstance(seed, int) else [int(v) for v in seed]
    if len(seeds) != len(x):
        raise UsageError(f"got {len(seeds)} seeds for {len(x)} images")
    curves = torch.empty(len(x), n_steps + 1)
    with eval_mode(classifier), torch.no_grad():
        t = resolve_targets(classifier, x, targets, batch_size=batch_size)
        for i in range(len(x)):
            pos = _pixel_order(maps[i], torch.Generator().manual_seed(seeds[i])).to(x.device).view(1, 1, h, w)
            for s in chunks(n_steps + 1, batch_size):
                sel = pos < counts[s].view(-1, 1, 1, 1)  # (S, 1, H, W): pixels already deleted / inserted
                if mode == "deletion":
                    batch = torch.where(sel, sub[i:i + 1], x[i:i + 1])
                else:
                    batch = torch.where(sel, x[i:i + 1], sub[i:i + 1])
                curves[i, s] = torch.softmax(classifier(batch).float(), 1)[:, t[i]].cpu()
    fr = counts.cpu().double() / (h * w)
    auc = torch.trapezoid(curves.double(), fr, dim=1).float()
    return CurveResult(mode, fr.float(), curves, auc)


def deletion_auc(classifier: Classifier, images: torch.Tensor, maps: torch.Tensor, targets: Any = None,
                 **kw: Any) -> CurveResult:
    """Deletion game (lower AUC = more faithful): most salient pixels replaced first (by the normalization
    mean unless ``substrate=`` says otherwise)."""
    return perturbation_curve(classifier, images, maps, targets, mode="deletion", **kw)


def insertion_auc(classifier: Classifier, images: torch.Tensor, maps: torch.Tensor, targets: Any = None,
                  **kw: Any) -> CurveResult:
    """Insertion game (higher AUC = more faithful): most salient pixels revealed on a blurred image first."""
    return perturbation_curve(classifier, images, maps, targets, mode="insertion", **kw)


def random_maps(n: int, size: tuple[int, int], *, seed: int = 0, cells: int | None = None) -> torch.Tensor:
    """Uniform random maps, the baseline an explanation should beat: i.i.d. per pixel, or with ``cells``,
    i.i.d. on a cells x cells grid upsampled bilinearly (the spatial scale of a CAM)."""
    g = torch.Generator().manual_seed(seed)
    if cells is None:
        return torch.rand(n, *size, generator=g)
    return upsample(torch.rand(n, cells, cells, generator=g), size)


# ------------------------------------------------------------------------------ randomization check


def weight_layers(classifier: Classifier) -> list[str]:
    """Names of the modules with a weight matrix or kernel (dim >= 2), in forward execution order."""
    seen: list[str] = []
    hooks = []
    for name, mod in classifier.model.named_modules():
        wt = getattr(mod, "weight", None)
        if isinstance(wt, nn.Parameter) and wt.dim() >= 2:
            hooks.append(mod.register_forward_hook(lambda m, i, o, name=name: seen.append(name)))
    try:
        c, h, w = classifier.config.input_size
        with torch.no_grad():
            classifier.eval()(torch.full((1, c, h, w), 0.5, device=model_device(classifier)))
    finally:
        for hk in hooks:
            hk.remove()
    return list(dict.fromkeys(seen))


def _randomize(module: nn.Module, generator: torch.Generator) -> None:
    """Re-draw the module's own parameters from N(0, sigma^2), sigma the original parameter's std (scale kept)."""
    with torch.no_grad():
        for p in module.parameters(recurse=False):
            sd = float(p.detach().float().std()) if p.numel() > 1 else 0.0
            new = torch.randn(p.shape, generator=generator) * sd if sd > 0 else torch.zeros(p.shape)
            p.copy_(new.to(p.device, p.dtype))


def randomized_copy(classifier: Classifier, k: int, *, seed: int = 0) -> Classifier:
    """A copy of the classifier whose top ``k`` weight layers are re-drawn (from the logits down, in the
    order and with the draws of :func:`randomization_check`'s cascade)."""
    layers = weight_layers(classifier)
    rand = copy.deepcopy(classifier)
    mods = dict(rand.model.named_modules())
    g = torch.Generator().manual_seed(seed)
    for name in reversed(layers[max(0, len(layers) - k):]):
        _randomize(mods[name], g)
    return rand


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (average ranks for ties); 0 when either map is constant."""
    from scipy.stats import rankdata

    ra, rb = rankdata(np.ravel(a)), rankdata(np.ravel(b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / den) if den > 0 else 0.0


@dataclass
class RandomizationResult:
    """Spearman correlation (of |map|, and signed) between the maps of the trained model and of models
    whose top ``stages[k]`` weight layers were re-drawn (cascading, from the logits down)."""

    layers: list[str]  # weight layers, input to output
    stages: list[int]
    stage_layers: list[str]  # the deepest layer randomized at each stage
    spearman_abs: dict[str, list[list[float]]] = field(default_factory=dict)  # method -> stage -> per image
    spearman: dict[str, list[list[float]]] = field(default_factory=dict)

    def mean(self, method: str, *, absolute: bool = True) -> list[float]:
        rows = (self.spearman_abs if absolute else self.spearman)[method]
        return [float(np.mean(r)) for r in rows]

    def to_dict(self) -> dict:
        return {"layers": self.layers, "stages": self.stages, "stage_layers": self.stage_layers,
                "mean_spearman_abs": {m: self.mean(m) for m in self.spearman_abs},
                "mean_spearman": {m: self.mean(m, absolute=False) for m in self.spearman},
                "spearman_abs": self.spearman_abs, "spearman": self.spearman}


def default_stages(n_layers: int) -> list[int]:
    """1, 2, 4, 8 ... top layers, then all of them."""
    st, k = [], 1
    while k < n_layers:
        st.append(k)
        k *= 2
    return st + [n_layers]


def randomization_check(
    classifier: Classifier,
    images: torch.Tensor,
    targets: Any = None,
    *,
    methods: Sequence[str] = ("saliency", "ig", "gradcam", "guided_backprop"),
    stages: Sequence[int] | None = None,
    method_params: dict[str, dict] | None = None,
    internal_batch_size: int = 64,
    seed: int = 0,
    maps: dict[str, torch.Tensor] | None = None,
) -> RandomizationResult:
    """Cascading model-parameter randomization (Adebayo et al. 2018, 'Sanity checks for saliency maps').

    The targets stay those of the trained model. Methods whose maps barely change as the network is
    destroyed (high correlation) explain the input more than the model. ``maps`` reuses maps of the
    trained model already computed (keyed by method). The classifier itself is left untouched.
    """
    method_params = method_params or {}
    x = images.detach().to(model_device(classifier), torch.float32)
    with eval_mode(classifier):
        t = resolve_targets(classifier, x, targets, batch_size=internal_batch_size)
    layers = weight_layers(classifier)
    if not layers:
        raise UsageError(f"{classifier.source}: no layer with a weight matrix to randomize")
    stages = sorted({min(int(k), len(layers)) for k in (stages or default_stages(len(layers))) if int(k) >= 1})
    before = {m: (maps[m] if maps and m in maps else
                  explain(classifier, x, t, method=m, internal_batch_size=internal_batch_size,
                          **method_params.get(m, {}))).cpu().numpy() for m in methods}
    res = RandomizationResult(layers, stages, [layers[len(layers) - k] for k in stages],
                              {m: [] for m in methods}, {m: [] for m in methods})
    rand = copy.deepcopy(classifier)
    mods = dict(rand.model.named_modules())
    g = torch.Generator().manual_seed(seed)
    done = 0
    for k in stages:
        for name in reversed(layers[len(layers) - k:len(layers) - done]):
            _randomize(mods[name], g)
        done = k
        for m in methods:
            after = explain(rand, x, t, method=m, internal_batch_size=internal_batch_size,
                            **method_params.get(m, {})).cpu().numpy()
            res.spearman_abs[m].append([spearman(np.abs(a), np.abs(b)) for a, b in zip(before[m], after)])
            res.spearman[m].append([spearman(a, b) for a, b in zip(before[m], after)])
    return res
