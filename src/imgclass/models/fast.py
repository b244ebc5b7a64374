"""A frozen, faster copy of a classifier for work that runs the same model many times (attacks).

Batch normalization in evaluation mode is an affine map, so it folds into the convolution (or linear
layer) before it: one layer less to run forward and, above all, backward. The copy also keeps its
activations channels-last, which oneDNN's and cuDNN's convolutions prefer, and its weights do not
require gradients. The function it computes is the original's up to float rounding (checked on a
random batch; a model that cannot be traced by ``torch.fx`` or that the check rejects is copied
without folding). Written here because torch's ``fuse`` needs a traceable module: the Classifier's
input checks are control flow, so only the wrapped network is folded. What happened is recorded on
the copy as ``copy.fast_info`` (a :class:`FastCopyInfo`).
"""

from __future__ import annotations

import copy
import dataclasses
import logging

import torch
from torch import nn

from .classifier import Classifier

__all__ = ["inference_copy", "FastCopyInfo"]

log = logging.getLogger(__name__)


class _ChannelsLast(nn.Module):
    """Hands the network its (normalized) input in channels-last memory order."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor):
        return self.net(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x)


def _has_bn(net: nn.Module) -> bool:
    return _n_bn(net) > 0


def _n_bn(net: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


@dataclasses.dataclass
class FastCopyInfo:
    """What :func:`inference_copy` did: ``folded`` (batch norms folded into the layers before them and kept),
    ``channels_last`` (activations in channels-last order), ``batch_norms`` (in the original) and
    ``batch_norms_left`` (in the copy), ``max_logit_diff`` (against the original on the check batch; None when
    nothing changed, so nothing was checked) and ``reason`` (why the fast copy or the folding was dropped)."""

    folded: bool = False
    channels_last: bool = False
    batch_norms: int = 0
    batch_norms_left: int = 0
    max_logit_diff: float | None = None
    reason: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def inference_copy(clf: Classifier, *, fold_bn: bool = True, channels_last: bool = True,
                   rtol: float = 1e-3, atol: float = 1e-4) -> Classifier:
    """A copy of ``clf`` (left unchanged) in evaluation mode with frozen weights, batch norms folded into
    the layers before them and channels-last activations. Its logits equal ``clf``'s to ``rtol``/``atol``
    on a random batch, or the folding is dropped. ``copy.fast_info`` (:class:`FastCopyInfo`) says which."""
    out = copy.deepcopy(clf).eval()
    for p in out.parameters():
        p.requires_grad_(False)
    net = out.model
    n_bn = _n_bn(net)
    info = FastCopyInfo(batch_norms=n_bn, batch_norms_left=n_bn)
    out.fast_info = info
    if fold_bn and n_bn:
        try:
            from torch.fx.experimental.optimization import fuse

            net = fuse(net)  # not in place: the unfolded network stays intact for the fallback below
        except Exception as e:  # untraceable network (data-dependent control flow): run it unfolded
            log.debug("%s: batch norm not folded (%s)", clf.source, e)
            info.reason = f"batch norm not folded: torch.fx cannot trace the network ({type(e).__name__})"
    elif not n_bn:
        info.reason = "no batch norm to fold" if fold_bn else "folding not asked for"
    folded_net = net
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
        if a.shape != b.shape:
            raise ValueError(f"logits of shape {tuple(b.shape)} instead of {tuple(a.shape)}")
        info.max_logit_diff = float((a.float() - b.float()).abs().max())
        if not torch.allclose(a.float(), b.float(), rtol=rtol, atol=atol):
            raise ValueError(f"max logit difference {info.max_logit_diff:.2e}")
    except Exception as e:
        log.debug("%s: fast copy rejected (%s); using a plain frozen copy", clf.source, e)
        out.model = ref
        info.reason = f"fast copy rejected, plain frozen copy used: {e}"
        return out
    info.channels_last = net is not folded_net
    info.batch_norms_left = _n_bn(folded_net)
    info.folded = info.batch_norms_left < n_bn
    return out
