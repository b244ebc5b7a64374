"""Convolution + ReLU and convolution + residual add + ReLU as single oneDNN calls, for CPU inference.

Eager PyTorch runs a ResNet block as conv, ReLU, conv, add, ReLU: every ReLU and add reads and writes the whole
activation once more. oneDNN applies them as post-ops of the convolution (``torch.ops.mkldnn._convolution_
pointwise``, the kernels torch.compile's CPU backend calls), while the output is still in cache. This pass rewrites
a ``torch.fx`` graph (the folded network of :func:`~imgclass.models.fast.inference_copy`) to use them. The result
is the same arithmetic in float32 (the same convolution kernel, the ReLU applied to the same values); under CPU
bfloat16 autocast the fused module casts as autocast would (input, weight and residual to bfloat16, once for the
weight) and the add happens before the output is rounded. Forward only: where gradients are needed it runs the
plain layers.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = ["fuse_conv_pointwise", "available"]

_RELUS = (torch.relu, F.relu, torch.relu_)
_ADDS = (operator.add, operator.iadd, torch.add)


def available() -> bool:
    """Whether this torch build has oneDNN's fused convolution kernels."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


class FusedConv2d(nn.Module):
    """``relu(conv(x) [+ other])`` in one oneDNN call (``conv`` a plain zero-padded ``nn.Conv2d``)."""

    def __init__(self, conv: nn.Conv2d, *, add: bool, relu: bool):
        super().__init__()
        self.conv, self.add, self.relu = conv, add, relu
        self.depthwise = conv.groups > 1 and conv.groups == conv.in_channels
        self._args = ([int(p) for p in conv.padding], list(conv.stride), list(conv.dilation), conv.groups)
        self._cast: dict = {}

    def _weights(self, dtype: torch.dtype):
        w, b = self.conv.weight, self.conv.bias
        if dtype == w.dtype:
            return w, b
        key = (dtype, w.data_ptr(), w._version)
        if key not in self._cast:  # autocast re-casts a frozen weight on every call; once is enough
            self._cast = {key: (w.detach().to(dtype), None if b is None else b.detach().to(dtype))}
        return self._cast[key]

    def _plain(self, x: torch.Tensor, other: torch.Tensor | None) -> torch.Tensor:
        y = self.conv(x)
        if self.add:
            y = y + other
        return torch.relu(y) if self.relu else y

    def forward(self, x: torch.Tensor, other: torch.Tensor | None = None) -> torch.Tensor:
        if x.device.type != "cpu" or (torch.is_grad_enabled() and (x.requires_grad or (other is not None and other.requires_grad))):
            return self._plain(x, other)
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        if self.depthwise:  # as the engine's bfloat16 autocast computes depthwise convolutions: in float32
            dtype = torch.float32
        w, b = self._weights(dtype)
        x = x.to(dtype)
        unary = "relu" if self.relu else "none"
        with torch.autocast("cpu", enabled=False):
            if not self.add:
                return torch.ops.mkldnn._convolution_pointwise(x, w, b, *self._args, unary, [], "")
            other = other.to(dtype).contiguous(memory_format=torch.channels_last if x.is_contiguous(
                memory_format=torch.channels_last) else torch.contiguous_format)
            return torch.ops.mkldnn._convolution_pointwise.binary(x, other, w, b, *self._args, "add", None,
                                                                  unary if self.relu else None, [], "")


def fuse_conv_pointwise(gm: fx.GraphModule) -> int:
    """Rewrite ``gm`` in place: conv -> ReLU and add(conv, other) -> ReLU become :class:`FusedConv2d` calls
    (identity layers in between are dropped first). Returns the number of fusions."""
    mods = dict(gm.named_modules())
    graph = gm.graph
    for n in list(graph.nodes):  # identities (timm's drop_block/aa placeholders) hide conv -> ReLU pairs
        if n.op == "call_module" and isinstance(mods.get(n.target), nn.Identity) and len(n.args) == 1 and not n.kwargs:
            n.replace_all_uses_with(n.args[0])
            graph.erase_node(n)

    def conv_of(n) -> nn.Conv2d | None:
        m = mods.get(n.target) if isinstance(n, fx.Node) and n.op == "call_module" else None
        ok = (type(m) is nn.Conv2d and m.padding_mode == "zeros" and not isinstance(m.padding, str)
              and len(n.users) == 1 and len(n.args) == 1 and not n.kwargs)
        return m if ok else None

    def is_relu(n) -> bool:
        if n.op == "call_module":
            return type(mods.get(n.target)) is nn.ReLU
        return n.op == "call_function" and n.target in _RELUS and len(n.args) == 1 and not n.kwargs

    count = 0
    for n in list(graph.nodes):
        if not is_relu(n):
            continue
        src = n.args[0]
        conv, inputs, drop = conv_of(src), None, []
        if conv is not None:
            inputs, drop, add = (src.args[0],), [src], False
        elif (isinstance(src, fx.Node) and src.op == "call_function" and src.target in _ADDS and len(src.users) == 1
              and len(src.args) == 2 and not src.kwargs):
            a, b = src.args
            for c, other in ((a, b), (b, a)):
                if conv_of(c) is not None and isinstance(other, fx.Node):
                    conv, inputs, drop, add = conv_of(c), (c.args[0], other), [src, c], True
                    break
        if conv is None:
            continue
        name = f"fused_{count}"
        gm.add_submodule(name, FusedConv2d(conv, add=add, relu=True))
        with graph.inserting_before(n):
            new = graph.call_module(name, inputs)
        n.replace_all_uses_with(new)
        graph.erase_node(n)
        for d in drop:
            graph.erase_node(d)
        count += 1
    graph.lint()
    gm.recompile()
    return count
