"""A frozen, faster copy of a classifier for work that runs the same model many times (attacks).

Batch normalization in evaluation mode is an affine map, so it folds into the convolution (or linear
layer) before it: one layer less to run forward and, above all, backward. The copy also keeps its
activations channels-last, which oneDNN's and cuDNN's convolutions prefer, and its weights do not
require gradients. The function it computes is the original's up to float rounding (checked on a
random batch; a model that cannot be traced by ``torch.fx`` or that the check rejects is copied
without folding). Written here because torch's ``fuse`` needs a traceable module: the Classifier's
input checks are control flow, so only the wrapped network is folded.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from .classifier import Classifier

__all__ = ["inference_copy"]

log = logging.getLogger(__name__)


class _ChannelsLast(nn.Module):
    """Hands the network its (normalized) input in channels-last memory order."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor):
        return self.net(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x)


def _has_bn(net: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def inference_copy(clf: Classifier, *, fold_bn: bool = True, channels_last: bool = True,
                   rtol: float = 1e-3, atol: float = 1e-4) -> Classifier:
    """A copy of ``clf`` (left unchanged) in evaluation mode with frozen weights, batch norms folded into
    the layers before them and channels-last activations. Its logits equal ``clf``'s to ``rtol``/``atol``
    on a random batch, or the folding is dropped."""
    out = copy.deepcopy(clf).eval()
    for p in out.parameters():
        p.requires_grad_(False)
    net = out.model
    if fold_bn and _has_bn(net):
        try:
            from torch.fx.experimental.optimization import fuse

            net = fuse(net)  # not in place: the unfolded network stays intact for the fallback below
        except Exception as e:  # untraceable network (data-dependent control flow): run it unfolded
            log.debug("%s: batch norm not folded (%s)", clf.source, e)
    if channels_last and out.config.layout == "nchw":
        net = _ChannelsLast(net.to(memory_format=torch.channels_last))
    if net is out.model:
        return out
    ref = out.model
    try:
        dev = next((t.device for t in out.parameters()), torch.device("cpu"))
        x = torch.rand((2, *out.config.input_size), generator=torch.Generator().manual_seed(0)).to(dev)
        with torch.no_grad():
            a = out(x)
            out.model = net
            b = out(x)
        if a.shape != b.shape or not torch.allclose(a.float(), b.float(), rtol=rtol, atol=atol):
            raise ValueError(f"max logit difference {float((a.float() - b.float()).abs().max()):.2e}")
    except Exception as e:
        log.debug("%s: fast copy rejected (%s); using a plain frozen copy", clf.source, e)
        out.model = ref
    return out
