"""The method registry, the one call shape ``explain(...)``, and helpers shared by the methods."""

from __future__ import annotations

import inspect
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ParameterError, UsageError
from ..models.classifier import Classifier
from ..registry import Registry

__all__ = ["Method", "METHODS", "register_method", "get_method", "explain", "resolve_targets", "reduce_channels",
           "REDUCTIONS", "model_device", "eval_mode", "chunks", "find_module", "upsample"]

REDUCTIONS = ("sum", "abs_sum", "max_abs", "mean", "l2")


@dataclass(frozen=True)
class Method:
    """A registered attribution method.

    ``fn(classifier, x, targets, *, internal_batch_size, **params)`` returns ``(N, H, W)`` maps, or, for
    methods with a ``reduce`` default, ``(N, C, H, W)`` per-channel attributions that :func:`explain`
    reduces over channels (``reduce=`` overrides the default).
    """

    name: str
    fn: Callable[..., torch.Tensor]
    kind: str  # 'gradient' | 'cam' | 'perturbation'
    description: str
    reduce: str | None = None  # per-channel methods: default channel reduction
    params: dict[str, Any] = field(default_factory=dict)  # keyword parameters and their defaults
    passthrough: bool = False  # takes further keyword parameters on behalf of another method

    def check_params(self, params: dict[str, Any]) -> None:
        if self.passthrough:
            return
        allowed = set(self.params) | ({"reduce"} if self.reduce else set())
        unknown = set(params) - allowed
        if unknown:
            raise ParameterError(f"method {self.name!r} has no parameter(s) {', '.join(sorted(unknown))}; "
                            f"its parameters: {', '.join(sorted(allowed)) or 'none'}")


METHODS: Registry[Method] = Registry("explanation method")


def register_method(name: str, *, kind: str, description: str, reduce: str | None = None):
    """Decorator adding an attribution function to :data:`METHODS` under ``name``."""
    if reduce is not None and reduce not in REDUCTIONS:
        raise UsageError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")

    def deco(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        sig = inspect.signature(fn)
        params = {p.name: p.default for p in sig.parameters.values()
                  if p.kind == p.KEYWORD_ONLY and p.name != "internal_batch_size"}
        passthrough = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
        METHODS[name] = Method(name, fn, kind, description, reduce, params, passthrough)
        return fn

    return deco


def get_method(name: str) -> Method:
    return METHODS[name]


def model_device(classifier: nn.Module) -> torch.device:
    p = next(classifier.parameters(), None)
    if p is not None:
        return p.device
    b = next(classifier.buffers(), None)
    return b.device if b is not None else torch.device("cpu")


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and autograd on (even inside ``torch.inference_mode``); the previous mode is restored."""
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            yield module
    finally:
        module.train(was_training)


def chunks(n: int, size: int) -> Iterator[slice]:
    size = max(1, int(size))
    for s in range(0, n, size):
        yield slice(s, min(n, s + size))


def reduce_channels(attr: torch.Tensor, how: str) -> torch.Tensor:
    """``(N, C, H, W)`` per-channel attributions -> ``(N, H, W)`` maps."""
    if how == "sum":
        return attr.sum(1)
    if how == "abs_sum":
        return attr.abs().sum(1)
    if how == "max_abs":  # Simonyan et al. 2014: max over colour channels of |gradient|
        return attr.abs().amax(1)
    if how == "mean":
        return attr.mean(1)
    if how == "l2":
        return attr.pow(2).sum(1).sqrt()
    raise UsageError(f"reduce must be one of {', '.join(REDUCTIONS)}, got {how!r}")


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(N, h, w)`` -> ``(N, H, W)`` by bilinear interpolation (half-pixel centres)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def find_module(classifier: Classifier, name: str) -> nn.Module:
    """A submodule of ``classifier.model`` by its dotted name, or an error listing similar names."""
    mods = dict(classifier.model.named_modules())
    if name in mods:
        return mods[name]
    if name.startswith("model.") and name[6:] in mods:
        return mods[name[6:]]
    tail = name.split(".")[-1]
    near = [n for n in mods if n and (tail in n.split(".") or n.endswith(name))][:10]
    raise UsageError(f"{classifier.source}: no layer named {name!r} in the model"
                     + (f"; similar: {', '.join(near)}" if near else "; see classifier.model.named_modules()"))


def _as_images(classifier: Classifier, images: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(images):
        raise ParameterError(f"images must be a float tensor (N, 3, H, W) of pixels in [0, 1], got {type(images).__name__}")
    if images.dim() == 3:
        images = images[None]
    c = classifier.config.input_size[0]
    if images.dim() != 4 or images.shape[1] != c:
        raise UsageError(f"images must have shape (N, {c}, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ParameterError(f"images must be float pixels in [0, 1], got {images.dtype} (divide uint8 images by 255)")
    if images.numel() and (images.min() < -1e-6 or images.max() > 1 + 1e-6):
        raise UsageError(f"images must be pixels in [0, 1] (the classifier normalizes inside), got values in "
                         f"[{images.min().item():.3g}, {images.max().item():.3g}]")
    dtype = torch.float64 if images.dtype == torch.float64 else torch.float32  # float64 for exact comparisons
    return images.detach().to(model_device(classifier), dtype).clone()


@torch.no_grad()
def predict(classifier: Classifier, x: torch.Tensor, *, batch_size: int) -> torch.Tensor:
    return torch.cat([classifier(x[s]).float() for s in chunks(len(x), batch_size)]) if len(x) else \
        torch.empty(0, classifier.num_classes, device=x.device)


def resolve_targets(classifier: Classifier, x: torch.Tensor, targets: Any, *, batch_size: int = 64) -> torch.Tensor:
    """Target class per image: None means the predicted class; an int or a class name applies to all."""
    n, k = len(x), classifier.num_classes
    if targets is None:
        return predict(classifier, x, batch_size=batch_size).argmax(1)
    if isinstance(targets, str):
        targets = class_index(classifier, targets)
    if isinstance(targets, int) or (torch.is_tensor(targets) and targets.dim() == 0):
        t = torch.full((n,), int(targets), dtype=torch.long)
    else:
        items = list(targets.tolist() if torch.is_tensor(targets) else targets)
        items = [class_index(classifier, v) if isinstance(v, str) else int(v) for v in items]
        if len(items) != n:
            raise UsageError(f"got {len(items)} targets for {n} images")
        t = torch.tensor(items, dtype=torch.long)
    if n and (t.min() < 0 or t.max() >= k):
        raise UsageError(f"targets must be class indices in [0, {k}), got {t.min().item()}..{t.max().item()}")
    return t.to(x.device)


def class_index(classifier: Classifier, name: str) -> int:
    """A class index from an index string, a class name (first comma part, case-insensitive) or a wnid."""
    s = name.strip()
    if s.lstrip("-").isdigit():
        return int(s)
    low = s.lower()
    for i, n in enumerate(classifier.class_names):
        if n.lower() == low or n.split(",")[0].strip().lower() == low:
            return i
    wn = classifier.wnids or []
    if s in wn:
        return wn.index(s)
    raise UsageError(f"{classifier.source}: no class named {name!r}")


def explain(
    classifier: Classifier | nn.Module,
    images: torch.Tensor,
    targets: int | str | Sequence[int | str] | torch.Tensor | None = None,
    *,
    method: str = "gradcam",
    internal_batch_size: int = 64,
    **params: Any,
) -> torch.Tensor:
    """Attribution maps ``(N, H, W)`` (float, at the input's resolution) of ``method`` for float pixels
    ``images`` ``(N, 3, H, W)`` in [0, 1]; ``targets`` default to the predicted classes.

    ``internal_batch_size`` bounds how many images (original, perturbed or interpolated) go through the
    model at once; it changes memory use, not results. ``params`` are the method's own
    (``imgclass.explain.METHODS[name].params`` lists them with their defaults).
    """
    if not isinstance(classifier, Classifier):  # a plain module: its contract as load_model assumes or was stated
        from ..models import load_model

        classifier = load_model(classifier)
    m = get_method(method)
    m.check_params(params)
    if int(internal_batch_size) < 1:
        raise UsageError(f"internal_batch_size must be >= 1, got {internal_batch_size}")
    x = _as_images(classifier, images)
    with eval_mode(classifier):
        t = resolve_targets(classifier, x, targets, batch_size=internal_batch_size)
        if len(x) == 0:
            return torch.empty(0, *x.shape[2:], device=images.device)
        reduce = params.pop("reduce", m.reduce)
        out = m.fn(classifier, x, t, internal_batch_size=int(internal_batch_size), **params)
        if m.reduce is not None:
            out = reduce_channels(out, reduce)
    out = out.detach().to(x.dtype)
    if out.shape != (x.shape[0], *x.shape[2:]):
        raise RuntimeError(f"method {method!r} returned maps of shape {tuple(out.shape)}, expected "
                           f"{(x.shape[0], *x.shape[2:])}")
    return out.to(images.device)


def channel_attributions(classifier: Classifier, x: torch.Tensor, targets: torch.Tensor, *, method: str,
                         internal_batch_size: int, **params: Any) -> torch.Tensor:
    """Per-channel ``(N, C, H, W)`` attributions of a per-channel method, or ``(N, 1, H, W)`` maps of others."""
    m = get_method(method)
    m.check_params(params)
    params.pop("reduce", None)
    out = m.fn(classifier, x, targets, internal_batch_size=internal_batch_size, **params)
    return out if m.reduce is not None else out[:, None]


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(N, C, H, W)`` with reflect padding (kernel radius 3 sigma)."""
    if sigma <= 0:
        return x
    r = max(1, int(math.ceil(3 * sigma)))
    r = min(r, x.shape[-1] - 1, x.shape[-2] - 1)
    k = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (k / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    y = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
