"""TFLite image classifiers as PyTorch modules.

:func:`tflite_classifier` reads a ``.tflite`` flatbuffer (with the ``tflite`` parser, not the
interpreter) and rebuilds its graph as a float, differentiable ``nn.Module``: quantized weights and
biases are dequantized (``(q - zero_point) * scale``, per tensor or per axis), activations stay float
(``quant='float'``) or are fake-quantized with a straight-through estimator where the file gives them
quantization parameters (``quant='simulate'``). Tensors are kept NCHW; ops whose meaning depends on
the layout (RESHAPE, MEAN, CONCATENATION, PAD, FULLY_CONNECTED) follow TFLite's NHWC element order.
A final SOFTMAX is dropped so the module returns logits. ``runtime=True`` wraps the exact
``ai_edge_litert`` interpreter instead (not differentiable).

The returned :class:`Classifier` carries the input contract: for a quantized input tensor with scale s
and zero point zp, pixel p in 0..255 is stored as q = p + qmin, so ``mean = (zp - qmin) / 255`` and
``std = 1 / (255 s)`` make ``(x - mean) / std`` the real value ``s (q - zp)`` the float graph expects.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tflite
import torch
import torch.nn.functional as F
from torch import nn

from ..data.labels import LabelSpace
from .classifier import Classifier, ModelConfig

__all__ = ["tflite_classifier", "TFLiteNet", "LiteRTModule", "QUANT_MODES"]

QUANT_MODES = ("float", "simulate")
_OP_NAMES = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
_TYPE_NAMES = {v: k for k, v in vars(tflite.TensorType).items() if not k.startswith("_")}
_NP_TYPES = {"FLOAT32": np.float32, "FLOAT16": np.float16, "FLOAT64": np.float64, "INT32": np.int32,
             "INT64": np.int64, "INT16": np.int16, "INT8": np.int8, "UINT8": np.uint8, "UINT16": np.uint16,
             "UINT32": np.uint32, "BOOL": np.bool_}
_QRANGE = {"UINT8": (0, 255), "INT8": (-128, 127), "INT16": (-32768, 32767)}
_PASS_THROUGH = {"QUANTIZE", "DEQUANTIZE"}  # identities on real values
_TO_NCHW = (0, 3, 1, 2)  # NCHW dim i holds NHWC dim _TO_NCHW[i]
_NHWC_TO_NCHW_AXIS = {0: 0, 1: 2, 2: 3, 3: 1}


class TFLiteError(ValueError):
    """A TFLite graph that cannot be rebuilt (unsupported op, tensor type or structure)."""


def _tf_pads(size: int, k: int, stride: int, dilation: int) -> tuple[int, int]:
    """TF 'SAME' padding: out = ceil(size / stride), the odd pixel goes to the bottom/right."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (k - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _fake_quant(y: torch.Tensor, scale: float, zp: int, qmin: int, qmax: int) -> torch.Tensor:
    fq = torch.fake_quantize_per_tensor_affine(y.detach(), scale, zp, qmin, qmax)
    return y + (fq - y.detach()) if y.requires_grad else fq  # straight-through estimator


def _nhwc4(t: torch.Tensor) -> torch.Tensor:
    """A lower-rank tensor in TFLite layout, broadcast against a 4D NHWC tensor, moved to NCHW."""
    return t.reshape((1,) * (4 - t.dim()) + tuple(t.shape)).permute(*_TO_NCHW)


class _TFConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TF 'SAME' (asymmetric) padding computed from the input size."""

    def __init__(self, *args, same: bool, **kw):
        super().__init__(*args, **kw)
        self.same = same

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = (0, 0)
        if self.same:
            (t, b), (lft, r) = (_tf_pads(x.shape[2 + i], self.kernel_size[i], self.stride[i], self.dilation[i])
                                for i in (0, 1))
            if t == b and lft == r:
                pad = (t, lft)
            else:
                x = F.pad(x, (lft, r, t, b))
        return F.conv2d(x, self.weight, self.bias, self.stride, pad, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", padding={'SAME' if self.same else 'VALID'}"


class _TFLinear(nn.Linear):
    """FULLY_CONNECTED (or a 1x1 conv on a 1x1 map): flattens a 4D input in NHWC order."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            x = x.permute(0, 2, 3, 1)
        return F.linear(x.reshape(-1, self.in_features), self.weight, self.bias)


class _Pool(nn.Module):
    def __init__(self, kind: str, k: tuple[int, int], stride: tuple[int, int], same: bool):
        super().__init__()
        self.kind, self.k, self.stride, self.same = kind, k, stride, same

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = F.max_pool2d if self.kind == "max" else F.avg_pool2d
        if self.same:
            (t, b), (lft, r) = (_tf_pads(x.shape[2 + i], self.k[i], self.stride[i], 1) for i in (0, 1))
            if t or b or lft or r:
                pads = (lft, r, t, b)
                if self.kind == "max":
                    return pool(F.pad(x, pads, value=float("-inf")), self.k, self.stride)
                ones = F.pad(x.new_ones(1, 1, *x.shape[2:]), pads)  # TF averages over valid pixels only
                return pool(F.pad(x, pads), self.k, self.stride) / pool(ones, self.k, self.stride)
        return pool(x, self.k, self.stride)

    def extra_repr(self) -> str:
        return f"{self.kind}, kernel={self.k}, stride={self.stride}, padding={'SAME' if self.same else 'VALID'}"


class _Elementwise(nn.Module):
    """ADD/SUB/MUL/DIV of two activations or an activation and a constant (stored as a buffer)."""

    _FN = {"ADD": torch.add, "SUB": torch.sub, "MUL": torch.mul, "DIV": torch.div}

    def __init__(self, kind: str, const: torch.Tensor | None, const_pos: int, align: tuple[bool, ...]):
        super().__init__()
        self.kind, self.const_pos, self.align = kind, const_pos, align
        self.register_buffer("const", const, persistent=False)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        args = list(xs)
        if self.const is not None:
            args.insert(self.const_pos, self.const.to(xs[0].dtype))
        a, b = (_nhwc4(t) if al else t for t, al in zip(args, self.align))
        return self._FN[self.kind](a, b)


class _Reshape(nn.Module):
    """RESHAPE/SQUEEZE to the file's output shape (batch kept leading), in NHWC element order."""

    def __init__(self, in_rank: int, out_shape: tuple[int, ...]):
        super().__init__()
        self.in_rank, self.out_shape = in_rank, tuple(out_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            x = x.permute(0, 2, 3, 1)
        y = x.reshape(-1, *self.out_shape[1:])
        return y.permute(*_TO_NCHW) if y.dim() == 4 else y


class _Mean(nn.Module):
    def __init__(self, axes: tuple[int, ...], keep: bool, out_shape: tuple[int, ...]):
        super().__init__()
        self.axes, self.keep, self.out_shape = axes, keep, tuple(out_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            return x.mean(dim=self.axes, keepdim=self.keep)
        y = x.mean(dim=[_NHWC_TO_NCHW_AXIS[a % 4] for a in self.axes], keepdim=True)
        return y if self.keep else y.permute(0, 2, 3, 1).reshape(-1, *self.out_shape[1:])


class _Concat(nn.Module):
    def __init__(self, axis: int):
        super().__init__()
        self.axis = axis

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        ax = self.axis % xs[0].dim()
        return torch.cat(xs, dim=_NHWC_TO_NCHW_AXIS[ax] if xs[0].dim() == 4 else ax)


class _Pad(nn.Module):
    def __init__(self, pads: np.ndarray, value: float):
        super().__init__()
        order = _TO_NCHW if len(pads) == 4 else range(len(pads))
        self.pads = tuple(int(v) for d in reversed(list(order)) for v in pads[d])
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.pads, value=self.value)


class _Softmax(nn.Module):
    def __init__(self, beta: float):
        super().__init__()
        self.beta = beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.beta * x, dim=1 if x.dim() == 4 else -1)


_ACTS = {0: None, 1: nn.ReLU, 2: lambda: nn.Hardtanh(-1.0, 1.0), 3: nn.ReLU6, 4: nn.Tanh}
_ACT_NAMES = {1: "relu", 2: "relu_n1_to_1", 3: "relu6", 4: "tanh"}


@dataclass
class _Step:
    name: str | None  # module to call; None = identity on real values (QUANTIZE/DEQUANTIZE)
    act: str | None  # fused-activation module
    inputs: list[int]
    out: int
    to4d: bool = False  # a 1x1 conv rebuilt as Linear: restore (N, C, 1, 1)
    fq: tuple[float, int, int, int] | None = None  # fake-quant params of the output (simulate)
    free: tuple[int, ...] = ()


class TFLiteNet(nn.Module):
    """The rebuilt graph: ops in file order as named child modules; NCHW real-valued in, (N, K) out."""

    def __init__(self, input_id: int, input_fq, output_id: int, beta: float):
        super().__init__()
        self.input_id, self.input_fq, self.output_id, self.beta = input_id, input_fq, output_id, beta
        self.steps: list[_Step] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env = {self.input_id: x if self.input_fq is None else _fake_quant(x, *self.input_fq)}
        for st in self.steps:
            args = [env[i] for i in st.inputs]
            y = args[0] if st.name is None else getattr(self, st.name)(*args)
            if st.to4d:
                y = y.reshape(*y.shape, 1, 1)
            if st.act is not None:
                y = getattr(self, st.act)(y)
            env[st.out] = y if st.fq is None else _fake_quant(y, *st.fq)
            for i in st.free:
                env.pop(i, None)
        y = env[self.output_id]
        if y.dim() == 4:
            y = y.permute(0, 2, 3, 1)
        y = y.reshape(y.shape[0], -1)
        return y if self.beta == 1.0 else self.beta * y


def _options(op, cls):
    tab = op.BuiltinOptions()
    if tab is None:
        return None
    o = cls()
    o.Init(tab.Bytes, tab.Pos)
    return o


def _opt(o, name: str, default):
    return default if o is None else getattr(o, name)()


class _Graph:
    """Tensors, constants and ops of subgraph 0 of a .tflite file."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.buf = self.path.read_bytes()
        self.model = tflite.Model.GetRootAsModel(self.buf, 0)
        self.g = self.model.Subgraphs(0)
        self.ops = []
        for i in range(self.g.OperatorsLength()):
            op = self.g.Operators(i)
            oc = self.model.OperatorCodes(op.OpcodeIndex())
            code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
            self.ops.append((_OP_NAMES.get(code, f"builtin code {code}"), op))
        self.producer = {int(t): i for i, (_, op) in enumerate(self.ops) for t in op.OutputsAsNumpy()}
        self._consts: dict[int, np.ndarray | None] = {}

    def fail(self, msg: str) -> TFLiteError:
        return TFLiteError(f"{self.path.name}: {msg}")

    def shape(self, t: int) -> tuple[int, ...]:
        return tuple(int(v) for v in self.g.Tensors(t).ShapeAsNumpy()) if self.g.Tensors(t).ShapeLength() else ()

    def type_name(self, t: int) -> str:
        return _TYPE_NAMES.get(self.g.Tensors(t).Type(), "?")

    def quant(self, t: int):
        """(scale array, zero-point array, quantized dimension) or None."""
        q = self.g.Tensors(t).Quantization()
        if q is None or q.ScaleLength() == 0:
            return None
        zp = q.ZeroPointAsNumpy() if q.ZeroPointLength() else np.zeros(q.ScaleLength(), np.int64)
        return q.ScaleAsNumpy().astype(np.float64), np.asarray(zp, np.int64), q.QuantizedDimension()

    def raw(self, t: int) -> np.ndarray | None:
        """The stored (integer or float) data of a constant tensor, or None for activations."""
        b = self.model.Buffers(self.g.Tensors(t).Buffer())
        if b is None:
            return None
        if b.DataLength() > 0:
            data = b.DataAsNumpy().tobytes()
        elif b.Offset() > 1:
            data = self.buf[b.Offset(): b.Offset() + b.Size()]
        else:
            return None
        tn = self.type_name(t)
        if tn not in _NP_TYPES:
            raise self.fail(f"constant tensor {self.g.Tensors(t).Name().decode()!r} has unsupported type {tn}")
        return np.frombuffer(data, _NP_TYPES[tn]).reshape(self.shape(t))

    def const(self, t: int) -> np.ndarray | None:
        """Real-valued float32 constant (dequantized; through DEQUANTIZE ops), or None."""
        if t not in self._consts:
            arr, q = self.raw(t), self.quant(t)
            if arr is None:
                p = self.producer.get(t)
                if p is not None and self.ops[p][0] == "DEQUANTIZE":
                    arr = self.const(int(self.ops[p][1].Inputs(0)))
            elif q is not None and np.issubdtype(arr.dtype, np.integer):
                scale, zp, axis = q
                bshape = [1] * arr.ndim
                if scale.size > 1:
                    bshape[axis] = scale.size
                zp = zp if zp.size == scale.size else np.zeros_like(scale, np.int64)
                arr = (arr.astype(np.float64) - zp.reshape(bshape)) * scale.reshape(bshape)
            self._consts[t] = None if arr is None else np.asarray(arr, np.float32)
        return self._consts[t]

    def int_const(self, t: int) -> list[int]:
        return [int(v) for v in np.asarray(self.raw(t)).reshape(-1)]

    def act_fq(self, t: int):
        q, tn = self.quant(t), self.type_name(t)
        if q is None or tn not in _QRANGE or q[0].size != 1:
            return None
        return float(q[0][0]), int(q[1][0]), *_QRANGE[tn]


def _conv(g: _Graph, idx: int, op, depthwise: bool):
    ins = [int(v) for v in op.InputsAsNumpy()]
    o = _options(op, tflite.DepthwiseConv2DOptions if depthwise else tflite.Conv2DOptions)
    w, b = g.const(ins[1]), g.const(ins[2]) if len(ins) > 2 and ins[2] >= 0 else None
    if w is None:
        raise g.fail(f"op {idx}: convolution with non-constant weights is not supported")
    cin = g.shape(ins[0])[3]
    if depthwise:  # [1, KH, KW, C*M] -> [C*M, 1, KH, KW]; output channel c*M + m as in PyTorch groups
        w, groups = w.transpose(3, 0, 1, 2), cin
    else:  # [O, KH, KW, I] -> [O, I, KH, KW]
        w = w.transpose(0, 3, 1, 2)
        groups = cin // w.shape[1]
    stride = (_opt(o, "StrideH", 1), _opt(o, "StrideW", 1))
    dil = (_opt(o, "DilationHFactor", 1), _opt(o, "DilationWFactor", 1))
    same = _opt(o, "Padding", tflite.Padding.SAME) == tflite.Padding.SAME
    act, (_, h, wd, _) = _opt(o, "FusedActivationFunction", 0), g.shape(ins[0])
    if not depthwise and groups == 1 and w.shape[2:] == (1, 1) and (h, wd) == (1, 1):
        mod = _TFLinear(w.shape[1], w.shape[0], bias=b is not None)  # a 1x1 conv on a 1x1 map: the logits
        mod.weight.data.copy_(torch.from_numpy(w.reshape(w.shape[0], -1).copy()))
        kind, to4d = "fc", True
    else:
        mod = _TFConv2d(cin, w.shape[0], tuple(w.shape[2:]), stride=stride, dilation=dil, groups=groups,
                        bias=b is not None, same=same)
        mod.weight.data.copy_(torch.from_numpy(w.copy()))
        kind, to4d = ("dwconv" if depthwise else "conv"), False
    if b is not None:
        mod.bias.data.copy_(torch.from_numpy(b.copy()))
    return kind, mod, [ins[0]], act, to4d


def _fully_connected(g: _Graph, idx: int, op):
    ins = [int(v) for v in op.InputsAsNumpy()]
    o = _options(op, tflite.FullyConnectedOptions)
    if _opt(o, "WeightsFormat", 0) != 0 or _opt(o, "KeepNumDims", False):
        raise g.fail(f"op {idx}: FULLY_CONNECTED with shuffled weights or keep_num_dims is not supported")
    w, b = g.const(ins[1]), g.const(ins[2]) if len(ins) > 2 and ins[2] >= 0 else None
    if w is None:
        raise g.fail(f"op {idx}: FULLY_CONNECTED with non-constant weights is not supported")
    mod = _TFLinear(w.shape[1], w.shape[0], bias=b is not None)
    mod.weight.data.copy_(torch.from_numpy(w.copy()))
    if b is not None:
        mod.bias.data.copy_(torch.from_numpy(b.copy()))
    return "fc", mod, [ins[0]], _opt(o, "FusedActivationFunction", 0), False


def _elementwise(g: _Graph, idx: int, op, kind: str):
    ins = [int(v) for v in op.InputsAsNumpy()]
    o = _options(op, {"ADD": tflite.AddOptions, "SUB": tflite.SubOptions, "MUL": tflite.MulOptions,
                      "DIV": tflite.DivOptions}[kind])
    consts = [g.const(t) for t in ins]
    rank = max(len(g.shape(t)) for t in ins)
    align = tuple(rank == 4 and len(g.shape(t)) < 4 for t in ins)
    const, pos = None, 0
    if consts[0] is not None or consts[1] is not None:
        pos = 0 if consts[0] is not None else 1
        const = torch.from_numpy(consts[pos].copy())
        if align[pos]:
            const = _nhwc4(const).contiguous()
        elif const.dim() == 4:
            const = const.permute(*_TO_NCHW).contiguous()
        align = tuple(a and i != pos for i, a in enumerate(align))
    acts = [t for t, c in zip(ins, consts) if c is None]
    return kind.lower(), _Elementwise(kind, const, pos, align), acts, _opt(o, "FusedActivationFunction", 0), False


def _pool(g: _Graph, idx: int, op, kind: str):
    o = _options(op, tflite.Pool2DOptions)
    mod = _Pool(kind, (_opt(o, "FilterHeight", 1), _opt(o, "FilterWidth", 1)),
                (_opt(o, "StrideH", 1), _opt(o, "StrideW", 1)), _opt(o, "Padding", 0) == tflite.Padding.SAME)
    return f"{kind}pool", mod, [int(op.Inputs(0))], _opt(o, "FusedActivationFunction", 0), False


def _reshape(g: _Graph, idx: int, op):
    i, out = int(op.Inputs(0)), int(op.Outputs(0))
    return "reshape", _Reshape(len(g.shape(i)), g.shape(out)), [i], 0, False


def _mean(g: _Graph, idx: int, op):
    ins = [int(v) for v in op.InputsAsNumpy()]
    keep = bool(_opt(_options(op, tflite.ReducerOptions), "KeepDims", False))
    return "mean", _Mean(tuple(g.int_const(ins[1])), keep, g.shape(int(op.Outputs(0)))), [ins[0]], 0, False


def _concat(g: _Graph, idx: int, op):
    o = _options(op, tflite.ConcatenationOptions)
    ins = [int(v) for v in op.InputsAsNumpy()]
    if any(g.const(t) is not None for t in ins):
        raise g.fail(f"op {idx}: CONCATENATION with a constant input is not supported")
    return "concat", _Concat(_opt(o, "Axis", 0)), ins, _opt(o, "FusedActivationFunction", 0), False


def _pad(g: _Graph, idx: int, op):
    ins = [int(v) for v in op.InputsAsNumpy()]
    value = float(g.const(ins[2]).reshape(-1)[0]) if len(ins) > 2 and ins[2] >= 0 else 0.0
    pads = np.asarray(g.int_const(ins[1])).reshape(-1, 2)
    return "pad", _Pad(pads, value), [ins[0]], 0, False


def _softmax(g: _Graph, idx: int, op):
    beta = float(_opt(_options(op, tflite.SoftmaxOptions), "Beta", 1.0))
    return "softmax", _Softmax(beta), [int(op.Inputs(0))], 0, False


def _unary(name: str, factory):
    return lambda g, idx, op: (name, factory(), [int(op.Inputs(0))], 0, False)


# op name -> builder(graph, op index, op) -> (kind, module, activation inputs, fused activation, to4d)
OP_BUILDERS = {
    "CONV_2D": lambda g, i, op: _conv(g, i, op, False),
    "DEPTHWISE_CONV_2D": lambda g, i, op: _conv(g, i, op, True),
    "FULLY_CONNECTED": _fully_connected,
    **{k: (lambda k: lambda g, i, op: _elementwise(g, i, op, k))(k) for k in ("ADD", "SUB", "MUL", "DIV")},
    "AVERAGE_POOL_2D": lambda g, i, op: _pool(g, i, op, "avg"),
    "MAX_POOL_2D": lambda g, i, op: _pool(g, i, op, "max"),
    "MEAN": _mean, "RESHAPE": _reshape, "SQUEEZE": _reshape, "CONCATENATION": _concat,
    "PAD": _pad, "PADV2": _pad, "SOFTMAX": _softmax,
    "RELU": _unary("relu", nn.ReLU), "RELU6": _unary("relu6", nn.ReLU6), "TANH": _unary("tanh", nn.Tanh),
    "RELU_N1_TO_1": _unary("relu_n1_to_1", lambda: nn.Hardtanh(-1.0, 1.0)),
    "LOGISTIC": _unary("sigmoid", nn.Sigmoid), "HARD_SWISH": _unary("hardswish", nn.Hardswish),
}


def _logits_tensor(g: _Graph) -> tuple[int, bool, float]:
    """The graph output, or the input of a final SOFTMAX (behind RESHAPE/QUANTIZE/DEQUANTIZE/SQUEEZE)."""
    out = t = int(g.g.Outputs(0))
    while t in g.producer:
        name, op = g.ops[g.producer[t]]
        if name in ("RESHAPE", "SQUEEZE") or name in _PASS_THROUGH:
            t = int(op.Inputs(0))
            continue
        if name == "SOFTMAX":
            return int(op.Inputs(0)), True, float(_opt(_options(op, tflite.SoftmaxOptions), "Beta", 1.0))
        break
    return out, False, 1.0


def build_tflite_net(g: _Graph, quant: str = "float") -> tuple[TFLiteNet, dict]:
    """Rebuild subgraph 0 of ``g`` as a :class:`TFLiteNet`; returns it and facts for ``info``."""
    if g.g.InputsLength() != 1 or g.g.OutputsLength() < 1:
        raise g.fail(f"expected one input tensor, found {g.g.InputsLength()}")
    inp = int(g.g.Inputs(0))
    out, dropped, beta = _logits_tensor(g)
    need, stack = set(), [out]  # ops the logits depend on
    while stack:
        t = stack.pop()
        p = g.producer.get(t)
        if p is None or p in need or g.const(t) is not None:
            continue
        need.add(p)
        stack.extend(int(v) for v in g.ops[p][1].InputsAsNumpy() if v >= 0)
    sim = quant == "simulate"
    net = TFLiteNet(inp, g.act_fq(inp) if sim else None, out, beta)
    n_fc = sum(1 for i in need if g.ops[i][0] == "FULLY_CONNECTED" or g.ops[i][0] == "CONV_2D" and
               g.shape(int(g.ops[i][1].Inputs(0)))[1:3] == (1, 1))
    for idx in sorted(need):
        name, op = g.ops[idx]
        o = int(op.Outputs(0))
        if name in _PASS_THROUGH:
            net.steps.append(_Step(None, None, [int(op.Inputs(0))], o, fq=g.act_fq(o) if sim else None))
            continue
        if name not in OP_BUILDERS:
            raise g.fail(f"op {idx} ({name}) is not supported by the PyTorch rebuild "
                         f"(supported: {', '.join(sorted(set(OP_BUILDERS) | _PASS_THROUGH))})")
        kind, mod, ins, act, to4d = OP_BUILDERS[name](g, idx, op)
        mname = "fc" if kind == "fc" and n_fc == 1 else f"{kind}_{idx}"
        net.add_module(mname, mod)
        aname = None
        if act:
            if act not in _ACT_NAMES:
                raise g.fail(f"op {idx} ({name}): fused activation {act} is not supported")
            aname = f"{mname}_{_ACT_NAMES[act]}"
            net.add_module(aname, _ACTS[act]())
        net.steps.append(_Step(mname, aname, ins, o, to4d, g.act_fq(o) if sim else None))
    last_use = {}
    for k, st in enumerate(net.steps):
        for t in st.inputs:
            last_use[t] = k
    for k, st in enumerate(net.steps):
        st.free = tuple(t for t in st.inputs if last_use[t] == k and t != out)
    ops = Counter(g.ops[i][0] for i in sorted(need))
    return net.eval(), {"dropped_softmax": dropped, "softmax_beta": beta, "ops": dict(ops), "n_ops": len(need)}


class LiteRTModule(nn.Module):
    """The exact ``ai_edge_litert`` interpreter behind an ``nn.Module`` (NCHW real-valued in, logits out).

    Not differentiable. Inputs are quantized to the input dtype (round + clamp); batches run in one
    call where the interpreter accepts a resized input, else one sample at a time.
    """

    def __init__(self, path: Path, logits_tensor: int, dropped_softmax: bool, beta: float):
        super().__init__()
        self.path, self.logits_tensor, self.dropped_softmax, self.beta = str(path), logits_tensor, dropped_softmax, beta
        self._interp, self._batch, self._batchable, self._logits_q = None, 0, True, None
        self._interpreter(1)
        self.read_logits = dropped_softmax
        if dropped_softmax:  # can the softmax input be read back? (needs experimental_preserve_all_tensors)
            try:
                self._logits_q = next(d["quantization"] for d in self._interp.get_tensor_details()
                                      if d["index"] == logits_tensor)
                self._run(np.zeros((1, *self._in["shape"][1:]), self._in["dtype"]), logits=True)
            except (ValueError, RuntimeError, StopIteration):
                self.read_logits = False

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_interp"], state["_batch"] = None, 0
        return state

    def _interpreter(self, n: int):
        from ai_edge_litert.interpreter import Interpreter

        if self._interp is None or self._batch != n:
            it = Interpreter(model_path=self.path, experimental_preserve_all_tensors=True)
            self._in = it.get_input_details()[0]
            if n != self._in["shape"][0]:
                it.resize_tensor_input(self._in["index"], [n, *self._in["shape"][1:]])
            it.allocate_tensors()
            self._in, self._out = it.get_input_details()[0], it.get_output_details()[0]
            self._interp, self._batch = it, n
        return self._interp

    def _run(self, q: np.ndarray, logits: bool) -> np.ndarray:
        it = self._interpreter(q.shape[0])
        it.set_tensor(self._in["index"], q)
        it.invoke()
        if logits and self.dropped_softmax:
            y, (s, zp) = it.get_tensor(self.logits_tensor), self._logits_q
        else:
            y, (s, zp) = it.get_tensor(self._out["index"]), self._out["quantization"]
        return (y.astype(np.float64) - zp) * s if s else y.astype(np.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._interpreter(self._batch or 1)
        a = x.detach().to("cpu", torch.float64).permute(0, 2, 3, 1).numpy()
        dt = np.dtype(self._in["dtype"])
        s, zp = self._in["quantization"]
        if np.issubdtype(dt, np.integer):
            info = np.iinfo(dt)
            a = np.clip(np.round(a / s + zp) if s else np.round(a), info.min, info.max)
        a = np.ascontiguousarray(a.astype(dt))
        logits = self.read_logits or not self.dropped_softmax
        outs = None
        if self._batchable and len(a) > 1:
            try:
                outs = self._run(a, logits)
            except (ValueError, RuntimeError):
                self._batchable, self._interp = False, None
        if outs is None:
            outs = np.concatenate([self._run(a[i:i + 1], logits) for i in range(len(a))])
        y = torch.from_numpy(outs.reshape(len(a), -1)).float()
        if self.dropped_softmax:
            y = self.beta * y if self.read_logits else torch.log(y.clamp_min(1e-12))
        return y.to(x.device)


def tflite_classifier(path: Path, *, runtime: bool = False, quant: str = "float", source: str = "") -> Classifier:
    """A :class:`Classifier` for a ``.tflite`` image classifier: the float rebuild, or the exact runtime."""
    if quant not in QUANT_MODES:
        raise ValueError(f"quant must be one of {', '.join(QUANT_MODES)}, got {quant!r}")
    path = Path(path)
    g = _Graph(path)
    inp = int(g.g.Inputs(0))
    shape, tn, q = g.shape(inp), g.type_name(inp), g.quant(inp)
    if len(shape) != 4:
        raise g.fail(f"expected an NHWC image input, got shape {shape}")
    _, h, w, c = shape
    if tn in _QRANGE and q is not None:
        s, zp, qmin = float(q[0][0]), int(q[1][0]), _QRANGE[tn][0]
        mean, std = ((zp - qmin) / 255.0,) * c, (1.0 / (255.0 * s),) * c
        in_info = {"dtype": tn.lower(), "scale": s, "zero_point": zp}
    elif tn == "FLOAT32":
        mean, std, in_info = (0.0,) * c, (1.0,) * c, {"dtype": "float32"}
    else:
        raise g.fail(f"unsupported input tensor type {tn}")
    out, dropped, beta = _logits_tensor(g)
    info = {"format": "tflite", "file": str(path), "quant": quant, "runtime": runtime, "input": in_info,
            "dropped_softmax": dropped, "softmax_beta": beta}
    if runtime:
        module: nn.Module = LiteRTModule(path, out, dropped, beta)
        info["runtime_output"] = ("dequantized graph output" if not dropped else
                                  "pre-softmax logits (dequantized softmax input)" if module.read_logits else
                                  "log of dequantized softmax probabilities, clamped at 1e-12")
    else:
        module, facts = build_tflite_net(g, quant)
        info.update(facts)
    k = int(np.prod(g.shape(out)[1:], dtype=np.int64))
    cfg = ModelConfig(input_size=(c, h, w), mean=tuple(mean), std=tuple(std), crop_pct=0.875,
                      interpolation="bilinear", layout="nchw")
    return Classifier(module, labels=LabelSpace.anonymous(k), config=cfg, source=source or f"tflite:{path}",
                      arch=None, info=info)
