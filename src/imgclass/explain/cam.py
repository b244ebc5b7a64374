"""Class activation maps over any layer: Grad-CAM, Grad-CAM++, Score-CAM.

Written here rather than taken from Captum, which has Grad-CAM only (no Grad-CAM++ or Score-CAM) and no
notion of token layers. The layer defaults to ``Classifier.cam_layer`` for CNNs; for vision
transformers (timm's ``patch_embed`` + ``blocks`` models) it is the first norm of the last block, whose
tokens are reshaped to the patch grid after the class/register (prefix) tokens are dropped, the choice
pytorch-grad-cam documents for ViTs. Maps are ReLU'd, kept unnormalized, and upsampled bilinearly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError
from ..models.classifier import Classifier
from .base import chunks, find_module, register_method, upsample

__all__ = ["cam_layer", "LayerCapture", "tokens_to_grid"]


def _is_vit(model: nn.Module) -> bool:
    return hasattr(model, "patch_embed") and isinstance(getattr(model, "blocks", None), (nn.Sequential, nn.ModuleList))


def cam_layer(classifier: Classifier, layer: str | None = None) -> str:
    """The layer CAM methods use: ``layer`` if given (checked), else a sensible default for CNNs and ViTs."""
    if layer is not None:
        find_module(classifier, layer)
        return layer[6:] if layer.startswith("model.") and layer not in dict(classifier.model.named_modules()) \
            else layer
    m = classifier.model
    if _is_vit(m) and len(m.blocks):
        last = len(m.blocks) - 1
        return f"blocks.{last}.norm1" if hasattr(m.blocks[last], "norm1") else f"blocks.{last}"
    return classifier.cam_layer


def _prefix_and_grid(model: nn.Module, n_tokens: int) -> tuple[int, tuple[int, int]]:
    pe = getattr(model, "patch_embed", None)
    grid = tuple(getattr(pe, "grid_size", ()) or ())
    prefix = getattr(model, "num_prefix_tokens", None)
    if len(grid) == 2 and prefix is not None and n_tokens == prefix + grid[0] * grid[1]:
        return int(prefix), (int(grid[0]), int(grid[1]))
    for k in range(0, 9):  # unknown model: the fewest leading tokens that leave a square grid
        s = math.isqrt(max(0, n_tokens - k))
        if s > 0 and s * s == n_tokens - k:
            return k, (s, s)
    raise UsageError(f"cannot arrange {n_tokens} tokens on a square grid; give a layer with a spatial output")


def tokens_to_grid(t: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """``(N, T, C)`` tokens -> ``(N, C, h, w)`` on the patch grid (prefix tokens dropped); 4-D passes."""
    if t.dim() == 4:
        return t
    if t.dim() != 3:
        raise UsageError(f"CAM needs a layer with (N, C, H, W) or (N, tokens, C) output, got shape {tuple(t.shape)}")
    k, (h, w) = _prefix_and_grid(model, t.shape[1])
    return t[:, k:].reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)


class LayerCapture:
    """Context manager keeping a module's output on each forward (the output is passed on as a copy, so
    in-place operations after the layer cannot change what was captured)."""

    def __init__(self, module: nn.Module):
        self.module, self.output, self._h = module, None, None

    def __enter__(self) -> "LayerCapture":
        def hook(_m, _i, out):
            if isinstance(out, (tuple, list)):
                out = out[0]
            self.output = out
            return out.clone() if out.requires_grad else None

        self._h = self.module.register_forward_hook(hook)
        return self

    def __exit__(self, *exc) -> None:
        self._h.remove()


def _acts_and_grads(classifier: Classifier, x: torch.Tensor, targets: torch.Tensor, layer: str
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    mod = find_module(classifier, layer)
    x = x.detach().requires_grad_(True)  # a graph reaches the layer even when its parameters are frozen
    with LayerCapture(mod) as cap:
        logits = classifier(x)
    if cap.output is None:
        raise RuntimeError(f"layer {layer!r} was not used in the forward pass")
    score = logits.gather(1, targets[:, None]).sum()
    (g,) = torch.autograd.grad(score, cap.output)
    return tokens_to_grid(cap.output.detach(), classifier.model), tokens_to_grid(g, classifier.model)


def _finish(cam: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return upsample(torch.relu(cam), tuple(x.shape[-2:]))


@register_method("gradcam", kind="cam",
                 description="Grad-CAM: layer activations weighted by their spatially averaged gradients "
                             "(Selvaraju et al. 2017)")
def gradcam(classifier: Classifier, x: torch.Tensor, targets: torch.Tensor, *, internal_batch_size: int,
            layer: str | None = None) -> torch.Tensor:
    name = cam_layer(classifier, layer)
    out = []
    for s in chunks(len(x), internal_batch_size):
        a, g = _acts_and_grads(classifier, x[s], targets[s], name)
        w = g.mean((2, 3), keepdim=True)
        out.append(_finish((w * a).sum(1), x[s]))
    return torch.cat(out)


@register_method("gradcam++", kind="cam",
                 description="Grad-CAM++: positive gradients weighted per location by the closed-form alphas of "
                             "Chattopadhay et al. 2018 (eq. 19)")
def gradcam_pp(classifier: Classifier, x: torch.Tensor, targets: torch.Tensor, *, internal_batch_size: int,
               layer: str | None = None) -> torch.Tensor:
    name = cam_layer(classifier, layer)
    out = []
    for s in chunks(len(x), internal_batch_size):
        a, g = _acts_and_grads(classifier, x[s], targets[s], name)
        g2 = g * g
        g3 = g2 * g
        denom = 2 * g2 + a.sum((2, 3), keepdim=True) * g3 + 1e-6
        alpha = torch.where(g != 0, g2 / denom, torch.zeros_like(g))
        w = (alpha * torch.relu(g)).sum((2, 3), keepdim=True)
        out.append(_finish((w * a).sum(1), x[s]))
    return torch.cat(out)


@register_method("scorecam", kind="cam",
                 description="Score-CAM: each activation map, upsampled and scaled to [0, 1], masks the image; "
                             "the softmax over channels of the masked target logits weights the maps "
                             "(Wang et al. 2020)")
def scorecam(classifier: Classifier, x: torch.Tensor, targets: torch.Tensor, *, internal_batch_size: int,
             layer: str | None = None) -> torch.Tensor:
    name = cam_layer(classifier, layer)
    mod = find_module(classifier, name)
    hw = tuple(x.shape[-2:])
    out = []
    with torch.no_grad():
        for i in range(len(x)):
            with LayerCapture(mod) as cap:
                classifier(x[i:i + 1])
            a = tokens_to_grid(cap.output, classifier.model)[0]  # (C, h, w)
            scores = torch.empty(a.shape[0], device=x.device, dtype=x.dtype)
            for s in chunks(a.shape[0], internal_batch_size):
                # corner-aligned upsampling of the masks, as pytorch-grad-cam (the softmax over channels is
                # sensitive to the masks, and the paper does not fix the interpolation)
                m = F.interpolate(a[s][:, None], size=hw, mode="bilinear", align_corners=True)[:, 0]
                flat = m.flatten(1)
                lo, hi = flat.min(1).values[:, None, None], flat.max(1).values[:, None, None]
                m = (m - lo) / (hi - lo + 1e-8)
                scores[s] = classifier(x[i:i + 1] * m[:, None])[:, targets[i]].to(x.dtype)
            w = torch.softmax(scores, 0)
            out.append(_finish((w[:, None, None] * a).sum(0, keepdim=True), x[i:i + 1]))
    return torch.cat(out)
