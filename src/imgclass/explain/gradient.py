"""Gradient methods: saliency, input x gradient, guided backprop and deconvnet through Captum; integrated
gradients and SmoothGrad (over any method) written here, for the reasons given beside them.

These return per-channel attributions ``(N, C, H, W)``; :func:`imgclass.explain.explain` reduces them
over channels (each method's default ``reduce``: Simonyan et al.'s max of |gradient| for saliency, the
signed sum for input x gradient and integrated gradients, so that the map sums to the attribution).
"""

from __future__ import annotations

import warnings

import torch
from captum.attr import Deconvolution, GuidedBackprop, InputXGradient, Saliency
from captum.attr._utils.approximation_methods import SUPPORTED_METHODS, approximation_parameters
from torch import nn

from ..errors import UsageError
from ..models.classifier import Classifier
from .base import channel_attributions, chunks, gaussian_blur, get_method, reduce_channels, register_method

# Captum's guided backprop and deconvnet override the gradient of nn.ReLU modules only; ReLU6 (MobileNets,
# the TFLite rebuilds) is the same gate clipped above, so it gets the same rule here.
_RECTIFIERS = (nn.ReLU, nn.ReLU6)


def _register_rectifier_hooks(self, module: nn.Module) -> None:
    from captum.attr._core.guided_backprop_deconvnet import _register_backward_hook

    if isinstance(module, _RECTIFIERS):
        self.backward_hooks.extend(_register_backward_hook(module, self._backward_hook, self))


class _GuidedBackprop(GuidedBackprop):
    _register_hooks = _register_rectifier_hooks


class _Deconvolution(Deconvolution):
    _register_hooks = _register_rectifier_hooks


def _captum_quiet():
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU activations")
    warnings.filterwarnings("ignore", message=".*requires_grad.*")
    return ctx


def _per_chunk(attr_fn, x: torch.Tensor, targets: torch.Tensor, size: int) -> torch.Tensor:
    ctx = _captum_quiet()
    try:
        return torch.cat([attr_fn(x[s].detach().requires_grad_(True), targets[s]).detach()
                          for s in chunks(len(x), size)])
    finally:
        ctx.__exit__(None, None, None)


@register_method("saliency", kind="gradient", reduce="max_abs",
                 description="gradient of the target logit w.r.t. the pixels (Simonyan et al. 2014; Captum)")
def saliency(classifier: Classifier, x: torch.Tensor, targets: torch.Tensor, *, internal_batch_size: int,
             abs: bool = True) -> torch.Tensor:
    sal = Saliency(classifier)
    return _per_chunk(lambda xs, ts: sal.attribute(xs, target=ts, abs=abs), x, targets, internal_batch_size)


@register_method("input_x_gradient", kind="gradient", reduce="sum",
                 description="pixels times the gradient (Shrikumar et al. 2016; Captum)")
def input_x_gradient(classifier: Classifier, x: torch.Tensor, targets: torch.Tensor, *,
                     internal_batch_size: int) -> torch.Tensor:
    ixg = InputXGradient(classifier)
    return _per_chunk(lambda xs, ts: ixg.attribute(xs, target=ts), x, targets, internal_batch_size)


def ig_baseline(x: torch.Tensor, baseline: str | float | torch.Tensor, *, seed: int = 0,
                mean: tuple[float, ...] | None = None) -> torch.Tensor:
    """The IG reference image: 'black', 'white', 'gray', 'mean' (the model's normalization ``mean``, i.e. zero
    after normalization: what Captum's default baseline is for normalized inputs), 'blur', 'uniform'
    (seeded noise), a value or a tensor."""
    if torch.is_tensor(baseline):
        return baseline.to(x.device, x.dtype).expand_as(x).clone()
    if isinstance(baseline, (int, float)):
        return torch.full_like(x, float(baseline))
    named = {"black": 0.0, "white": 1.0, "gray": 0.5, "grey": 0.5}
    if baseline in named:
        return torch.full_like(x, named[baseline])
    if baseline == "mean":
        if mean is None:
            raise UsageError("IG baseline 'mean' needs the model's normalization mean")
        return torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1).expand_as(x).clone()
    if baseline == "blur":
        return gaussian_blur(x, sigma=max(x.shape[-2:]) / 14)
    if baseline == "uniform":
        g = torch.Generator().manual_seed(seed)
        return torch.rand(x.shape[1:], generator=g).to(x.device, x.dtype).expand_as(x).clone()
    raise UsageError(f"IG baseline must be 'black', 'white', 'gray', 'mean', 'blur', 'uniform', a number or a "
                     f"tensor, got {baseline!r}")


# Integrated gradients are written here (with Captum's quadrature rules): Captum batches the steps of all
# the images of a call together (``internal_batch_size // N`` steps per forward), so its forward batches
# shrink or overflow with the number of images; here the (image, step) points fill forward batches of
# exactly ``internal_batch_size``, whatever the number of images. Equal to Captum's IG to float rounding
# (tests/test_explain_reference.py); benchmarks/explain.py times the two.
@register_method("ig", kind="gradient", reduce="sum",
                 description="integrated gradients along the straight path from a baseline "
                             "(Sundararajan et al. 2017; Captum's quadrature rules)")
def integrated_gradients(classifier: Classifier, x: torch.Tensor, targets: torch.Tensor, *, internal_batch_size: int,
                         steps: int = 50, baseline: str | float | torch.Tensor = "black",
                         integration: str = "gausslegendre", seed: int = 0) -> torch.Tensor:
    if steps < 1 or (steps < 2 and integration != "gausslegendre"):
        raise UsageError(f"IG steps must be >= 1 (>= 2 for Riemann rules), got {steps}")
    if integration not in SUPPORTED_METHODS:
        raise UsageError(f"IG integration must be one of {', '.join(SUPPORTED_METHODS)}, got {integration!r}")
    step_sizes, alphas = approximation_parameters(integration)
    alpha = torch.tensor(alphas(steps), dtype=x.dtype, device=x.device)
    weight = torch.tensor(step_sizes(steps), dtype=x.dtype, device=x.device)
    base = ig_baseline(x, baseline, seed=seed, mean=classifier.config.mean)
    diff = x - base
    grads = torch.zeros_like(x)
    image = torch.arange(len(x), device=x.device).repeat_interleave(steps)  # (image, step) pairs, image-major
    step = torch.arange(steps, device=x.device).repeat(len(x))
    for s in chunks(len(image), internal_batch_size):
        i, k = image[s], step[s]
        path = (base[i] + alpha[k].view(-1, 1, 1, 1) * diff[i]).requires_grad_(True)
        score = classifier(path).gather(1, targets[i][:, None]).sum()
        (g,) = torch.autograd.grad(score, path)
        grads.index_add_(0, i, g * weight[k].view(-1, 1, 1, 1))
    return diff * grads


@register_method("guided_backprop", kind="gradient", reduce="max_abs",
                 description="gradient with negative signals stopped at every rectifier, backward and forward "
                             "(Springenberg et al. 2015; Captum)")
def guided_backprop(classifier: Classifier, x: torch.Tensor, targets: torch.Tensor, *,
                    internal_batch_size: int) -> torch.Tensor:
    gbp = _GuidedBackprop(classifier)
    return _per_chunk(lambda xs, ts: gbp.attribute(xs, target=ts), x, targets, internal_batch_size)


@register_method("deconvnet", kind="gradient", reduce="max_abs",
                 description="deconvolution network: rectifiers pass the positive part of the backward signal "
                             "(Zeiler & Fergus 2014; Captum)")
def deconvnet(classifier: Classifier, x: torch.Tensor, targets: torch.Tensor, *,
              internal_batch_size: int) -> torch.Tensor:
    dec = _Deconvolution(classifier)
    return _per_chunk(lambda xs, ts: dec.attribute(xs, target=ts), x, targets, internal_batch_size)


# SmoothGrad is written here rather than with Captum's NoiseTunnel: NoiseTunnel draws its noise from the
# global RNG chunk by chunk, so an image's map would depend on its batch neighbours and on the internal
# batch size. Here one seeded noise tensor is drawn per call and shared by every image; with the same seed
# it is exactly the noise NoiseTunnel draws for one image (tests/test_explain_reference.py checks this).
@register_method("smoothgrad", kind="gradient",
                 description="average of a method's attributions over noisy copies of the image "
                             "(Smilkov et al. 2017); base= any method, e.g. 'saliency' or 'ig'; further "
                             "parameters go to the base method")
def smoothgrad(classifier: Classifier, x: torch.Tensor, targets: torch.Tensor, *, internal_batch_size: int,
               base: str = "saliency", n_samples: int = 50, stdev: float = 0.15, nt_type: str = "smoothgrad",
               seed: int = 0, reduce: str | None = None, **base_params) -> torch.Tensor:
    if base == "smoothgrad":
        raise UsageError("smoothgrad cannot wrap itself")
    m = get_method(base)
    if nt_type not in {"smoothgrad", "smoothgrad_sq", "vargrad"}:
        raise UsageError(f"nt_type must be 'smoothgrad', 'smoothgrad_sq' or 'vargrad', got {nt_type!r}")
    if n_samples < 1:
        raise UsageError(f"n_samples must be >= 1, got {n_samples}")
    g = torch.Generator().manual_seed(seed)
    noise = (torch.randn(n_samples, *x.shape[1:], generator=g) * stdev).to(x.device, x.dtype)
    m.check_params(base_params)
    bp = dict(base_params)
    out = []
    for i in range(len(x)):
        noisy = x[i:i + 1] + noise
        a = channel_attributions(classifier, noisy, targets[i:i + 1].expand(n_samples), method=base,
                                 internal_batch_size=internal_batch_size, **bp)
        if nt_type == "smoothgrad":
            out.append(a.mean(0))
        elif nt_type == "smoothgrad_sq":
            out.append(a.pow(2).mean(0))
        else:
            out.append(a.pow(2).mean(0) - a.mean(0).pow(2))
    a = torch.stack(out)
    if m.reduce is None:
        return a[:, 0]
    return reduce_channels(a, reduce or m.reduce)
