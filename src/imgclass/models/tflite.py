"""TFLite image classifiers as PyTorch modules.

:func:`tflite_classifier` parses a ``.tflite`` flatbuffer (``tflite`` package, not the interpreter) and
rebuilds subgraph 0 as a differentiable float ``nn.Module``: weights and biases dequantized
(``(q - zero_point) * scale``, per tensor or per axis), activations float (``quant='float'``) or
fake-quantized with a straight-through estimator where the file quantizes them (``quant='simulate'``).
Tensors are NCHW inside; layout-dependent ops (RESHAPE, MEAN, CONCATENATION, PAD, FULLY_CONNECTED)
follow TFLite's NHWC order. A final SOFTMAX is dropped: the module returns logits. ``runtime=True``
wraps the exact ``ai_edge_litert`` interpreter instead (not differentiable).

Input contract: a quantized input (scale s, zero point zp) stores pixel p in 0..255 as q = p + qmin, so
``mean = (zp - qmin) / 255``, ``std = 1 / (255 s)`` map [0, 1] pixels to the real value ``s (q - zp)``.
A float input says nothing: mean 0, std 1.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tflite
import torch
import torch.nn.functional as F
from torch import nn

from ..data.labels import LabelSpace
from ..errors import ImgclassError, UsageError
from .classifier import Classifier, ModelConfig

__all__ = ["tflite_classifier", "build_tflite_net", "TFLiteNet", "LiteRTModule", "TFLiteError", "OP_BUILDERS"]

QUANT_MODES = ("float", "simulate")
_OP_NAMES = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
_TYPE_NAMES = {v: k for k, v in vars(tflite.TensorType).items() if not k.startswith("_")}
_NP_TYPES = {"FLOAT32": np.float32, "FLOAT16": np.float16, "FLOAT64": np.float64, "INT32": np.int32,
             "INT64": np.int64, "INT16": np.int16, "INT8": np.int8, "UINT8": np.uint8}
_QRANGE = {"UINT8": (0, 255), "INT8": (-128, 127), "INT16": (-32768, 32767)}
_IDENTITY = {"QUANTIZE", "DEQUANTIZE"}  # identities on real values
_TO_NCHW = (0, 3, 1, 2)  # NCHW dim i holds NHWC dim _TO_NCHW[i]
_AXIS = {0: 0, 1: 2, 2: 3, 3: 1}  # NHWC axis -> NCHW axis
_ACTS = {1: ("relu", nn.ReLU), 2: ("relu_n1_to_1", lambda: nn.Hardtanh(-1.0, 1.0)), 3: ("relu6", nn.ReLU6),
         4: ("tanh", nn.Tanh)}


class TFLiteError(ImgclassError, ValueError):
    """A TFLite graph that cannot be rebuilt (unsupported op, tensor type or structure)."""


def _tf_pads(size: int, k: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF 'SAME' padding: out = ceil(size / stride); the odd pixel goes to the bottom/right."""
    total = max((-(-size // stride) - 1) * stride + (k - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _fake_quant(y: torch.Tensor, scale: float, zp: int, qmin: int, qmax: int) -> torch.Tensor:
    """Round to the integer grid and back; gradients pass straight through."""
    fq = torch.fake_quantize_per_tensor_affine(y.detach(), scale, zp, qmin, qmax)
    return y + (fq - y.detach()) if y.requires_grad else fq


def _nhwc4(t: torch.Tensor) -> torch.Tensor:
    """A tensor of rank <= 4, broadcast NumPy-style against a 4D NHWC tensor, moved to NCHW."""
    return t.reshape((1,) * (4 - t.dim()) + tuple(t.shape)).permute(*_TO_NCHW)


def _to_tflite_order(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1) if x.dim() == 4 else x


class _TFConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TF 'SAME' (asymmetric) padding computed from the input size."""

    def __init__(self, *args, same: bool, **kw):
        super().__init__(*args, **kw)
        self.same = same

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = (0, 0)
        if self.same:
            (t, b), (lf, r) = (_tf_pads(x.shape[2 + i], self.kernel_size[i], self.stride[i], self.dilation[i])
                               for i in (0, 1))
            if t == b and lf == r:
                pad = (t, lf)
            else:
                x = F.pad(x, (lf, r, t, b))
        return F.conv2d(x, self.weight, self.bias, self.stride, pad, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", padding={'SAME' if self.same else 'VALID'}"


class _TFLinear(nn.Linear):
    """FULLY_CONNECTED (or a 1x1 conv on a 1x1 map): flattens a 4D input in NHWC order."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(_to_tflite_order(x).reshape(-1, self.in_features), self.weight, self.bias)


class _Elementwise(nn.Module):
    """ADD/SUB/MUL of two activations, or of an activation and a constant (a buffer, in NCHW)."""

    def __init__(self, kind: str, const: torch.Tensor | None, const_pos: int):
        super().__init__()
        self.fn, self.const_pos = {"ADD": torch.add, "SUB": torch.sub, "MUL": torch.mul}[kind], const_pos
        self.register_buffer("const", const, persistent=False)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        args = list(xs)
        if self.const is not None:
            args.insert(self.const_pos, self.const.to(xs[0].dtype))
        return self.fn(*args)


class _Layout(nn.Module):
    """Parameter-free ops (axes given in NHWC): pools with TF padding, reshape, mean, concat, pad, softmax."""

    def __init__(self, kind: str, out_shape: tuple[int, ...], **kw):
        super().__init__()
        self.kind, self.out_shape, self.kw = kind, tuple(out_shape), kw

    def _restore(self, y: torch.Tensor) -> torch.Tensor:  # TFLite order -> ours, batch kept leading
        y = y.reshape(-1, *self.out_shape[1:])
        return y.permute(*_TO_NCHW) if y.dim() == 4 else y

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        x, kw, four = xs[0], self.kw, xs[0].dim() == 4
        if self.kind in ("maxpool", "avgpool"):
            pool, k, st = F.max_pool2d if self.kind == "maxpool" else F.avg_pool2d, kw["k"], kw["stride"]
            (t, b), (lf, r) = (_tf_pads(x.shape[2 + i], k[i], st[i]) if kw["same"] else (0, 0) for i in (0, 1))
            if not (t or b or lf or r):
                return pool(x, k, st)
            if self.kind == "maxpool":
                return pool(F.pad(x, (lf, r, t, b), value=float("-inf")), k, st)
            ones = F.pad(x.new_ones(1, 1, *x.shape[2:]), (lf, r, t, b))  # TF averages over valid pixels only
            return pool(F.pad(x, (lf, r, t, b)), k, st) / pool(ones, k, st)
        if self.kind == "reshape":
            return self._restore(_to_tflite_order(x))
        if self.kind == "mean":
            axes = [_AXIS[a % 4] if four else a for a in kw["axes"]]
            y = x.mean(dim=axes, keepdim=True)
            return y if kw["keep"] else self._restore(_to_tflite_order(y))
        if self.kind == "concat":
            ax = kw["axis"] % x.dim()
            return torch.cat(xs, dim=_AXIS[ax] if four else ax)
        if self.kind == "pad":
            order = _TO_NCHW if four else range(x.dim())
            return F.pad(x, [int(v) for d in reversed(list(order)) for v in kw["pads"][d]], value=kw["value"])
        return F.softmax(kw["beta"] * x, dim=1 if four else -1)

    def extra_repr(self) -> str:
        return f"{self.kind}, {', '.join(f'{k}={v}' for k, v in self.kw.items() if k != 'pads')}"


@dataclass
class _Step:
    name: str | None  # child module to call; None = identity (QUANTIZE/DEQUANTIZE)
    act: str | None  # fused-activation child module
    inputs: list[int]
    out: int
    fq: tuple | None = None  # fake-quant params of the output (simulate)
    free: tuple[int, ...] = ()  # tensors no later step reads


class TFLiteNet(nn.Module):
    """The rebuilt graph: ops in file order as named children; real-valued NCHW in, (N, K) logits out."""

    def __init__(self, input_id: int, input_fq: tuple | None, output_id: int, beta: float):
        super().__init__()
        self.input_id, self.input_fq, self.output_id, self.beta = input_id, input_fq, output_id, beta
        self.steps: list[_Step] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env = {self.input_id: x if self.input_fq is None else _fake_quant(x, *self.input_fq)}
        for st in self.steps:
            args = [env[i] for i in st.inputs]
            y = args[0] if st.name is None else getattr(self, st.name)(*args)
            y = y if st.act is None else getattr(self, st.act)(y)
            env[st.out] = y if st.fq is None else _fake_quant(y, *st.fq)
            for i in st.free:
                del env[i]
        y = _to_tflite_order(env[self.output_id]).flatten(1)
        return y if self.beta == 1.0 else self.beta * y


def _options(op, cls):
    """A getter for the op's builtin options; a missing table leaves every field at its default."""
    tab, o = op.BuiltinOptions(), cls()
    if tab is not None:
        o.Init(tab.Bytes, tab.Pos)
    return lambda name, default=0: default if tab is None else getattr(o, name)()


class _Graph:
    """Tensors, constants and ops of subgraph 0 of a .tflite file."""

    def __init__(self, path: Path):
        self.path, self.buf = Path(path), Path(path).read_bytes()
        self.model = tflite.Model.GetRootAsModel(self.buf, 0)
        self.g = self.model.Subgraphs(0)
        self.ops = []
        for i in range(self.g.OperatorsLength()):
            op = self.g.Operators(i)
            oc = self.model.OperatorCodes(op.OpcodeIndex())
            code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
            self.ops.append((_OP_NAMES.get(code, f"builtin code {code}"), op))
        self.producer = {int(t): i for i, (_, op) in enumerate(self.ops) for t in op.OutputsAsNumpy()}
        self.consumers: dict[int, list[str]] = {}
        for name, op in self.ops:
            for t in op.InputsAsNumpy():
                self.consumers.setdefault(int(t), []).append(name)
        self._consts: dict[int, np.ndarray | None] = {}

    def fail(self, msg: str) -> TFLiteError:
        return TFLiteError(f"{self.path.name}: {msg}")

    def shape(self, t: int) -> tuple[int, ...]:
        return tuple(int(v) for v in self.g.Tensors(t).ShapeAsNumpy()) if self.g.Tensors(t).ShapeLength() else ()

    def type_name(self, t: int) -> str:
        return _TYPE_NAMES.get(self.g.Tensors(t).Type(), "?")

    def quant(self, t: int):
        """(scales, zero points, quantized dimension), or None."""
        q = self.g.Tensors(t).Quantization()
        if q is None or q.ScaleLength() == 0:
            return None
        zp = q.ZeroPointAsNumpy() if q.ZeroPointLength() == q.ScaleLength() else np.zeros(q.ScaleLength())
        return q.ScaleAsNumpy().astype(np.float64), np.asarray(zp, np.int64), q.QuantizedDimension()

    def raw(self, t: int) -> np.ndarray | None:
        """The stored data of a constant tensor; None for activations."""
        b = self.model.Buffers(self.g.Tensors(t).Buffer())
        if b is not None and b.DataLength() > 0:
            data = b.DataAsNumpy().tobytes()
        elif b is not None and b.Offset() > 1:  # large models keep buffers after the flatbuffer
            data = self.buf[b.Offset(): b.Offset() + b.Size()]
        else:
            return None
        if self.type_name(t) not in _NP_TYPES:
            raise self.fail(f"constant tensor {t} has unsupported type {self.type_name(t)}")
        return np.frombuffer(data, _NP_TYPES[self.type_name(t)]).reshape(self.shape(t))

    def const(self, t: int) -> np.ndarray | None:
        """A real-valued float32 constant (dequantized; followed through DEQUANTIZE ops), or None."""
        if t not in self._consts:
            arr, q = self.raw(t), self.quant(t)
            if arr is None and t in self.producer and self.ops[self.producer[t]][0] == "DEQUANTIZE":
                arr = self.const(int(self.ops[self.producer[t]][1].Inputs(0)))
            elif arr is not None and q is not None and np.issubdtype(arr.dtype, np.integer):
                scale, zp, axis = q
                bshape = [scale.size if d == axis and scale.size > 1 else 1 for d in range(arr.ndim)]
                arr = (arr - zp.reshape(bshape)) * scale.reshape(bshape)  # int32 biases: zp = 0
            self._consts[t] = None if arr is None else np.ascontiguousarray(arr, np.float32)
        return self._consts[t]

    def ints(self, t: int) -> list[int]:
        return [int(v) for v in np.asarray(self.raw(t)).reshape(-1)]

    def act_fq(self, t: int) -> tuple | None:
        q, tn = self.quant(t), self.type_name(t)
        if q is None or tn not in _QRANGE or q[0].size != 1:
            return None
        return float(q[0][0]), int(q[1][0]), *_QRANGE[tn]


def _dense(g: _Graph, idx: int, name: str, op, ins: list[int]):
    """CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED with constant (dequantized) weights."""
    w, b = g.const(ins[1]), g.const(ins[2]) if len(ins) > 2 and ins[2] >= 0 else None
    if w is None:
        raise g.fail(f"op {idx} ({name}) has non-constant weights, which the rebuild does not support")
    o = _options(op, {"CONV_2D": tflite.Conv2DOptions, "DEPTHWISE_CONV_2D": tflite.DepthwiseConv2DOptions,
                      "FULLY_CONNECTED": tflite.FullyConnectedOptions}[name])
    act, dw, shape = o("FusedActivationFunction", 0), name == "DEPTHWISE_CONV_2D", g.shape(ins[0])
    if name == "FULLY_CONNECTED" and (o("WeightsFormat", 0) != 0 or o("KeepNumDims", False)):
        raise g.fail(f"op {idx} ({name}): shuffled weights and keep_num_dims are not supported")
    if name != "FULLY_CONNECTED":
        # [1, KH, KW, C*M] -> [C*M, 1, KH, KW] (output c*M + m, PyTorch's group order); [O, KH, KW, I] -> [O, I, KH, KW]
        w = np.ascontiguousarray(w.transpose(3, 0, 1, 2) if dw else w.transpose(0, 3, 1, 2))
        groups = shape[3] if dw else shape[3] // w.shape[1]
    if name == "FULLY_CONNECTED" or (not dw and groups == 1 and w.shape[2:] == (1, 1) and shape[1:3] == (1, 1) and
                                     set(g.consumers.get(int(op.Outputs(0)), [])) <= {"RESHAPE", "SQUEEZE", "SOFTMAX"}):
        kind, mod = "fc", _TFLinear(w.shape[1], w.shape[0], bias=b is not None)  # incl. MobileNet's 1x1-conv logits
    else:
        kind = "dwconv" if dw else "conv"
        mod = _TFConv2d(shape[3], w.shape[0], tuple(w.shape[2:]), groups=groups, bias=b is not None,
                        stride=(o("StrideH", 1), o("StrideW", 1)),
                        dilation=(o("DilationHFactor", 1), o("DilationWFactor", 1)),
                        same=o("Padding", 0) == tflite.Padding.SAME)
    mod.weight.data.copy_(torch.tensor(w).reshape(mod.weight.shape))
    if b is not None:
        mod.bias.data.copy_(torch.tensor(b))
    return kind, mod, [ins[0]], act


def _elementwise(g: _Graph, idx: int, name: str, op, ins: list[int]):
    o = _options(op, {"ADD": tflite.AddOptions, "SUB": tflite.SubOptions, "MUL": tflite.MulOptions}[name])
    consts, four = [g.const(t) for t in ins], max(len(g.shape(t)) for t in ins) == 4
    const, pos = None, int(consts[0] is None)
    if consts[pos] is not None:  # broadcast NumPy-style against NHWC, then move to NCHW
        const = _nhwc4(torch.tensor(consts[pos])).contiguous() if four else torch.tensor(consts[pos])
    mod = _Elementwise(name, const, pos)
    return name.lower(), mod, [t for t, c in zip(ins, consts) if c is None], o("FusedActivationFunction", 0)


def _layout(g: _Graph, idx: int, name: str, op, ins: list[int]):
    out, act, kw = g.shape(int(op.Outputs(0))), 0, {}
    if name.endswith("POOL_2D"):
        o = _options(op, tflite.Pool2DOptions)
        act, same = o("FusedActivationFunction", 0), o("Padding", 0) == tflite.Padding.SAME
        kw = {"k": (o("FilterHeight", 1), o("FilterWidth", 1)),
              "stride": (o("StrideH", 1), o("StrideW", 1)), "same": same}
    elif name == "MEAN":
        kw = {"axes": tuple(g.ints(ins[1])), "keep": bool(_options(op, tflite.ReducerOptions)("KeepDims", 0))}
    elif name == "CONCATENATION":
        o = _options(op, tflite.ConcatenationOptions)
        if any(g.const(t) is not None for t in ins):
            raise g.fail(f"op {idx} ({name}) with a constant input is not supported")
        kw, act = {"axis": o("Axis", 0)}, o("FusedActivationFunction", 0)
    elif name == "PAD":
        kw = {"pads": np.asarray(g.ints(ins[1])).reshape(-1, 2), "value": 0.0}  # real 0 = the zero point
    elif name == "SOFTMAX":
        kw = {"beta": float(_options(op, tflite.SoftmaxOptions)("Beta", 1.0))}
    kind = {"MEAN": "mean", "CONCATENATION": "concat", "PAD": "pad", "SOFTMAX": "softmax", "MAX_POOL_2D": "maxpool",
            "AVERAGE_POOL_2D": "avgpool"}.get(name, "reshape")
    return kind, _Layout(kind, out, **kw), ins if kind == "concat" else [ins[0]], act


def _unary(kind: str, factory):
    return lambda g, idx, name, op, ins: (kind, factory(), [ins[0]], 0)


# TFLite op -> builder(graph, op index, op name, op, inputs) -> (kind, module, activation inputs, fused act)
OP_BUILDERS = {
    "CONV_2D": _dense, "DEPTHWISE_CONV_2D": _dense, "FULLY_CONNECTED": _dense,
    "ADD": _elementwise, "SUB": _elementwise, "MUL": _elementwise, "AVERAGE_POOL_2D": _layout, "MAX_POOL_2D": _layout,
    "MEAN": _layout, "RESHAPE": _layout, "SQUEEZE": _layout, "CONCATENATION": _layout, "PAD": _layout,
    "SOFTMAX": _layout, "RELU": _unary("relu", nn.ReLU), "RELU6": _unary("relu6", nn.ReLU6),
    "RELU_N1_TO_1": _unary("relu_n1_to_1", _ACTS[2][1]), "TANH": _unary("tanh", nn.Tanh),
    "LOGISTIC": _unary("sigmoid", nn.Sigmoid), "HARD_SWISH": _unary("hardswish", nn.Hardswish),
}


def _logits_tensor(g: _Graph) -> tuple[int, bool, float]:
    """(tensor, dropped, beta): the input of a final SOFTMAX (behind RESHAPE/SQUEEZE/(DE)QUANTIZE) or the output."""
    out = t = int(g.g.Outputs(0))
    while t in g.producer:
        name, op = g.ops[g.producer[t]]
        if name == "SOFTMAX":
            return int(op.Inputs(0)), True, float(_options(op, tflite.SoftmaxOptions)("Beta", 1.0))
        if name not in ("RESHAPE", "SQUEEZE", *_IDENTITY):
            break
        t = int(op.Inputs(0))
    return out, False, 1.0


def build_tflite_net(g: _Graph, quant: str = "float") -> tuple[TFLiteNet, dict]:
    """Rebuild the ops the logits depend on as a :class:`TFLiteNet`; also returns facts for ``info``."""
    inp = int(g.g.Inputs(0))
    out, dropped, beta = _logits_tensor(g)
    need, stack = set(), [out]
    while stack:
        t = stack.pop()
        if t in g.producer and g.producer[t] not in need and g.const(t) is None:
            need.add(g.producer[t])
            stack.extend(int(v) for v in g.ops[g.producer[t]][1].InputsAsNumpy() if v >= 0)
    sim = quant == "simulate"
    net, built = TFLiteNet(inp, g.act_fq(inp) if sim else None, out, beta), []
    for idx in sorted(need):
        name, op = g.ops[idx]
        ins, o = [int(v) for v in op.InputsAsNumpy()], int(op.Outputs(0))
        fq = g.act_fq(o) if sim else None
        if name in _IDENTITY:
            net.steps.append(_Step(None, None, [ins[0]], o, fq=fq))
            continue
        if name not in OP_BUILDERS:
            raise g.fail(f"op {idx} ({name}) is not supported by the PyTorch rebuild (supported: "
                         f"{', '.join(sorted(set(OP_BUILDERS) | _IDENTITY))})")
        kind, mod, acts, act = OP_BUILDERS[name](g, idx, name, op, ins)
        if act and act not in _ACTS:
            raise g.fail(f"op {idx} ({name}): fused activation {act} is not supported")
        built.append((idx, kind, mod, acts, act, o, fq))
    n_fc = sum(b[1] == "fc" for b in built)
    for idx, kind, mod, acts, act, o, fq in built:
        mname = "fc" if kind == "fc" and n_fc == 1 else f"{kind}_{idx}"
        net.add_module(mname, mod)
        aname = f"{mname}_{_ACTS[act][0]}" if act else None
        if aname:
            net.add_module(aname, _ACTS[act][1]())
        net.steps.append(_Step(mname, aname, acts, o, fq))
    last = {t: k for k, st in enumerate(net.steps) for t in st.inputs}
    for k, st in enumerate(net.steps):
        st.free = tuple({t for t in st.inputs if last[t] == k and t != out})
    facts = {"dropped_softmax": dropped, "softmax_beta": beta, "ops": dict(Counter(g.ops[i][0] for i in need))}
    return net.eval(), facts


class LiteRTModule(nn.Module):
    """The exact ``ai_edge_litert`` interpreter as an ``nn.Module`` (real-valued NCHW in, logits out).

    Not differentiable. Inputs are quantized to the input dtype (round + clamp). A batch runs in one
    call where the interpreter accepts a resized input, else one sample at a time.
    """

    def __init__(self, path: Path, logits_tensor: int, dropped_softmax: bool, beta: float):
        super().__init__()
        self.path, self.logits_tensor, self.dropped, self.beta = str(path), logits_tensor, dropped_softmax, beta
        self._interp, self._batch, self._batchable, self.read_logits = None, 0, True, dropped_softmax
        it = self._interpreter(1)
        self._logits_q = next((d["quantization"] for d in it.get_tensor_details() if d["index"] == logits_tensor), None)
        try:  # the softmax input can be read back thanks to experimental_preserve_all_tensors
            self._run(np.zeros((1, *self._in["shape"][1:]), self._in["dtype"]))
        except (ValueError, RuntimeError, TypeError):
            self.read_logits = False

    def __getstate__(self):
        return {**self.__dict__, "_interp": None, "_batch": 0}

    def _interpreter(self, n: int):
        from ai_edge_litert.interpreter import Interpreter

        if self._interp is None or self._batch != n:
            with warnings.catch_warnings():  # "intended for debugging": we read one intermediate tensor
                warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
                it = Interpreter(model_path=self.path, experimental_preserve_all_tensors=True)
            shape = it.get_input_details()[0]["shape"]
            if n != shape[0]:
                it.resize_tensor_input(it.get_input_details()[0]["index"], [n, *shape[1:]])
            it.allocate_tensors()
            self._in, self._out = it.get_input_details()[0], it.get_output_details()[0]
            self._interp, self._batch = it, n
        return self._interp

    def _run(self, q: np.ndarray) -> np.ndarray:
        it = self._interpreter(q.shape[0])
        it.set_tensor(self._in["index"], q)
        it.invoke()
        if self.read_logits:
            y, (s, zp) = it.get_tensor(self.logits_tensor), self._logits_q
        else:
            y, (s, zp) = it.get_tensor(self._out["index"]), self._out["quantization"]
        if len(q) > 1 and (y.ndim < 2 or y.shape[0] != len(q)):  # the batch did not survive the graph's reshapes
            raise ValueError(f"batch of {q.shape[0]} gave an output of shape {y.shape}")
        return (y.astype(np.float64) - zp) * s if s else y.astype(np.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._interpreter(self._batch or 1)
        a, dt = x.detach().to("cpu", torch.float64).permute(0, 2, 3, 1).numpy(), np.dtype(self._in["dtype"])
        s, zp = self._in["quantization"]
        if np.issubdtype(dt, np.integer):
            a = np.clip(np.round(a / s + zp if s else a), np.iinfo(dt).min, np.iinfo(dt).max)
        a, y = np.ascontiguousarray(a.astype(dt)), None
        if self._batchable and len(a) > 1:
            try:
                y = self._run(a)
            except (ValueError, RuntimeError):  # e.g. a RESHAPE to a constant [1, K]
                self._batchable, self._interp = False, None
        if y is None:
            y = np.concatenate([self._run(a[i:i + 1]) for i in range(len(a))])
        y = torch.from_numpy(y.reshape(len(a), -1)).float()
        if self.dropped:
            y = self.beta * y if self.read_logits else torch.log(y.clamp_min(1e-12))
        return y.to(x.device)


def tflite_classifier(path: Path, *, runtime: bool = False, quant: str = "float", source: str = "") -> Classifier:
    """A :class:`Classifier` for a ``.tflite`` image classifier: the float rebuild, or the exact runtime."""
    if quant not in QUANT_MODES:
        raise UsageError(f"quant must be one of {', '.join(map(repr, QUANT_MODES))}, got {quant!r}")
    g = _Graph(Path(path))
    if g.g.InputsLength() != 1 or len(g.shape(int(g.g.Inputs(0)))) != 4:
        raise g.fail("expected one NHWC image input")
    inp = int(g.g.Inputs(0))
    (_, h, w, c), tn, q = g.shape(inp), g.type_name(inp), g.quant(inp)
    if tn in _QRANGE and q is not None:
        s, zp = float(q[0][0]), int(q[1][0])
        mean, std = ((zp - _QRANGE[tn][0]) / 255.0,) * c, (1.0 / (255.0 * s),) * c
        in_info = {"dtype": tn.lower(), "scale": s, "zero_point": zp}
    elif tn == "FLOAT32":
        mean, std, in_info = (0.0,) * c, (1.0,) * c, {"dtype": "float32"}
    else:
        raise g.fail(f"unsupported input tensor type {tn}")
    out, dropped, beta = _logits_tensor(g)
    info = {"format": "tflite", "file": str(path), "quant": quant, "runtime": runtime, "input": in_info,
            "dropped_softmax": dropped, "softmax_beta": beta}
    if runtime:
        module: nn.Module = LiteRTModule(Path(path), out, dropped, beta)
        info["runtime_output"] = ("dequantized graph output" if not dropped else
                                  "pre-softmax logits (dequantized softmax input)" if module.read_logits else
                                  "log of dequantized softmax probabilities, clamped at 1e-12")
    else:
        module, facts = build_tflite_net(g, quant)
        info.update(facts)
    cfg = ModelConfig(input_size=(c, h, w), mean=mean, std=std, crop_pct=0.875, interpolation="bilinear",
                      layout="nchw")
    return Classifier(module, labels=LabelSpace.anonymous(int(np.prod(g.shape(out)[1:]))), config=cfg,
                      source=source or f"tflite:{path}", arch=None, info=info)
