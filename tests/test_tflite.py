"""The TFLite rebuild (imgclass.models.tflite) against the reference: the ai_edge_litert interpreter.

Real files come from the asset mirror (IMGCLASS_MIRROR, default ../shared/assets beside the repository);
tests that need them skip when it is absent. Small graphs covering every supported op are written
here as flatbuffers with the ``tflite`` package's builders and run through both paths.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

tflite = pytest.importorskip("tflite")
pytest.importorskip("ai_edge_litert")
flatbuffers = pytest.importorskip("flatbuffers")

from imgclass.models import tflite as tfl  # noqa: E402
from imgclass.models.tflite import TFLiteError, tflite_classifier  # noqa: E402

MIRROR = Path(os.environ.get("IMGCLASS_MIRROR", Path(__file__).resolve().parents[2] / "shared" / "assets"))
CORAL = MIRROR / "models" / "coral-mobilenet-tflite"
MLPERF = MIRROR / "models" / "mlperf-tiny-resnet8"


def need(p: Path) -> Path:
    if not p.exists():
        pytest.skip(f"{p} not in the asset mirror")
    return p


@pytest.fixture(scope="module")
def cifar() -> tuple[torch.Tensor, np.ndarray]:
    """The 1,000 lossless CIFAR-10 test images as raw 0..255 float NCHW, and their labels."""
    d = np.load(need(MIRROR / "cifar10-lossless" / "test-first1000.npz"))
    return torch.from_numpy(d["images"]).permute(0, 3, 1, 2).float(), d["labels"]


@pytest.fixture(scope="module")
def imagenet_200() -> tuple[np.ndarray, np.ndarray]:
    """Every 5th ImageNet sample (200, one per 5 classes): short side 256 (bilinear), centre crop 224, uint8."""
    from PIL import Image

    with tarfile.open(need(MIRROR / "imagenet" / "imagenet-samples.tar")) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")), key=lambda m: m.name)
        wnids = sorted({m.name.split("/")[-2] for m in members})
        imgs, labels = [], []
        for m in members[::5]:
            im = Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB")
            s = 256 / min(im.size)
            im = im.resize((max(256, round(im.size[0] * s)), max(256, round(im.size[1] * s))), Image.BILINEAR)
            left, top = (im.size[0] - 224) // 2, (im.size[1] - 224) // 2
            imgs.append(np.asarray(im.crop((left, top, left + 224, top + 224)), np.uint8))
            labels.append(wnids.index(m.name.split("/")[-2]))
    return np.stack(imgs), np.array(labels)


def _pixels(u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255


# ------------------------------------------------------------------------------------ tiny graphs


def make_tflite(tensors, ops, inputs, outputs) -> bytes:
    """A float32 .tflite: tensors [(shape, data or None)], ops [(OP, ins, outs, OptionsTable or None, {Field: v})]."""
    b = flatbuffers.Builder(4096)
    codes = sorted({op[0] for op in ops})

    def ivec(values):
        return b.CreateNumpyVector(np.asarray(values, np.int32))

    def tables(start, offsets):
        start(b, len(offsets))
        for o in reversed(offsets):
            b.PrependUOffsetTRelative(o)
        return b.EndVector()

    bufs = []
    for _, data in [((), None), *tensors]:
        d = None if data is None else b.CreateNumpyVector(np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8))
        tflite.BufferStart(b)
        if d is not None:
            tflite.BufferAddData(b, d)
        bufs.append(tflite.BufferEnd(b))
    toffs = []
    for i, (shape, data) in enumerate(tensors):
        name, shp = b.CreateString(f"t{i}"), ivec(shape)
        tflite.TensorStart(b)
        tflite.TensorAddShape(b, shp)
        int32 = data is not None and data.dtype == np.int32
        tflite.TensorAddType(b, tflite.TensorType.INT32 if int32 else tflite.TensorType.FLOAT32)
        tflite.TensorAddBuffer(b, 0 if data is None else i + 1)
        tflite.TensorAddName(b, name)
        toffs.append(tflite.TensorEnd(b))
    ooffs = []
    for name, ins, outs, table, fields in ops:
        opt = None
        if table:
            fields = {k: ivec(v) if isinstance(v, list) else v for k, v in fields.items()}
            getattr(tflite, f"{table}Start")(b)
            for k, v in fields.items():
                getattr(tflite, f"{table}Add{k}")(b, v)
            opt = getattr(tflite, f"{table}End")(b)
        iv, ov = ivec(ins), ivec(outs)
        tflite.OperatorStart(b)
        tflite.OperatorAddOpcodeIndex(b, codes.index(name))
        tflite.OperatorAddInputs(b, iv)
        tflite.OperatorAddOutputs(b, ov)
        if opt is not None:
            tflite.OperatorAddBuiltinOptionsType(b, getattr(tflite.BuiltinOptions, table))
            tflite.OperatorAddBuiltinOptions(b, opt)
        ooffs.append(tflite.OperatorEnd(b))
    tv, ov = tables(tflite.SubGraphStartTensorsVector, toffs), tables(tflite.SubGraphStartOperatorsVector, ooffs)
    iv, outv = ivec(inputs), ivec(outputs)
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, tv)
    tflite.SubGraphAddInputs(b, iv)
    tflite.SubGraphAddOutputs(b, outv)
    tflite.SubGraphAddOperators(b, ov)
    sg = tflite.SubGraphEnd(b)
    coffs = []
    for name in codes:
        code = getattr(tflite.BuiltinOperator, name)
        tflite.OperatorCodeStart(b)
        tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
        tflite.OperatorCodeAddBuiltinCode(b, code)
        tflite.OperatorCodeAddVersion(b, 1)
        coffs.append(tflite.OperatorCodeEnd(b))
    cv, sv = tables(tflite.ModelStartOperatorCodesVector, coffs), tables(tflite.ModelStartSubgraphsVector, [sg])
    bv = tables(tflite.ModelStartBuffersVector, bufs)
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, 3)
    tflite.ModelAddOperatorCodes(b, cv)
    tflite.ModelAddSubgraphs(b, sv)
    tflite.ModelAddBuffers(b, bv)
    b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def _tiny_graphs(tail: str):
    """Input 16x14 so that SAME padding is asymmetric (conv 3x3/2, max pool 3x3/2, avg pool 3x2/1)."""
    rng = np.random.default_rng(0)

    def r(*s):
        return (rng.normal(size=s) * 0.5).astype(np.float32)

    same, act = tflite.Padding.SAME, tflite.ActivationFunctionType
    paddings = np.array([[0, 0], [1, 0], [0, 1], [0, 0]], np.int32)
    tensors = [((1, 16, 14, 3), None), ((6, 3, 3, 3), r(6, 3, 3, 3)), ((6,), r(6)), ((1, 8, 7, 6), None),
               ((1, 3, 3, 12), r(1, 3, 3, 12)), ((12,), r(12)), ((1, 8, 7, 12), None), ((1, 4, 4, 12), None),
               ((1, 4, 4, 12), None), ((1, 4, 4, 12), None), ((4, 2), paddings),
               ((1, 5, 5, 12), None), ((12,), r(12)), ((1, 5, 5, 12), None), ((1, 5, 5, 12), None),
               ((1, 5, 5, 12), None), ((1, 5, 5, 24), None), ((1, 5, 5, 24), None)]
    ops = [("CONV_2D", [0, 1, 2], [3], "Conv2DOptions",
            dict(Padding=same, StrideH=2, StrideW=2, FusedActivationFunction=act.RELU)),
           ("DEPTHWISE_CONV_2D", [3, 4, 5], [6], "DepthwiseConv2DOptions",  # depth multiplier 2, dilation 2
            dict(Padding=same, StrideH=1, StrideW=1, DepthMultiplier=2, DilationHFactor=2, DilationWFactor=2,
                 FusedActivationFunction=act.RELU6)),
           ("MAX_POOL_2D", [6], [7], "Pool2DOptions",
            dict(Padding=same, StrideH=2, StrideW=2, FilterHeight=3, FilterWidth=3)),
           ("AVERAGE_POOL_2D", [7], [8], "Pool2DOptions",
            dict(Padding=same, StrideH=1, StrideW=1, FilterHeight=3, FilterWidth=2)),
           ("ADD", [7, 8], [9], "AddOptions", dict(FusedActivationFunction=act.RELU_N1_TO_1)),
           ("PAD", [9, 10], [11], None, {}), ("MUL", [11, 12], [13], "MulOptions", {}),
           ("HARD_SWISH", [13], [14], None, {}), ("LOGISTIC", [13], [15], None, {}),
           ("CONCATENATION", [14, 15], [16], "ConcatenationOptions", dict(Axis=3)), ("RELU6", [16], [17], None, {})]
    if tail == "flatten-fc-softmax":  # RESHAPE of a 5x5x24 map: NHWC element order matters
        tensors += [((2,), np.array([1, -1], np.int32)), ((1, 600), None), ((10, 600), r(10, 600) * 0.1),
                    ((10,), r(10)), ((1, 10), None), ((1, 10), None)]
        ops += [("RESHAPE", [17, 18], [19], None, {}),
                ("FULLY_CONNECTED", [19, 20, 21], [22], "FullyConnectedOptions", {}),
                ("SOFTMAX", [22], [23], "SoftmaxOptions", dict(Beta=1.0))]
        return tensors, ops, 23
    if tail == "mean-fc-squeeze":
        tensors += [((1, 5, 5, 24), None), ((2,), np.array([1, 2], np.int32)), ((1, 24), None), ((7, 24), r(7, 24)),
                    ((7,), r(7)), ((1, 7), None), ((1, 7), None), ((1, 1, 1, 7), None), ((1, 7), None),
                    ((4,), np.array([1, 1, 1, 7], np.int32))]
        ops += [("RELU", [17], [18], None, {}), ("MEAN", [18, 19], [20], "ReducerOptions", dict(KeepDims=False)),
                ("FULLY_CONNECTED", [20, 21, 22], [23], "FullyConnectedOptions",
                 dict(FusedActivationFunction=act.RELU)),
                ("TANH", [23], [24], None, {}), ("RESHAPE", [24, 27], [25], None, {}),
                ("SQUEEZE", [25], [26], "SqueezeOptions", dict(SqueezeDims=[1, 2]))]
        return tensors, ops, 26
    tensors += [((1, 5, 5, 24), None)]  # an op the rebuild does not know
    return tensors, ops + [("EXP", [17], [18], None, {})], 18


@pytest.mark.parametrize("tail", ["flatten-fc-softmax", "mean-fc-squeeze"])
def test_tiny_graph_of_every_op_matches_litert_runtime(tmp_path, tail):
    tensors, ops, out = _tiny_graphs(tail)
    path = tmp_path / f"{tail}.tflite"
    path.write_bytes(make_tflite(tensors, ops, [0], [out]))
    rebuilt, runtime = tflite_classifier(path), tflite_classifier(path, runtime=True)
    assert rebuilt.info["dropped_softmax"] == (tail == "flatten-fc-softmax")
    assert set(rebuilt.info["ops"]) == {op[0] for op in ops} - {"SOFTMAX"}
    x = torch.rand(5, 3, 16, 14, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = rebuilt(x), runtime(x)
    assert a.shape == b.shape == (5, 10 if tail == "flatten-fc-softmax" else 7)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_unsupported_op_error_names_op_and_file(tmp_path):
    tensors, ops, out = _tiny_graphs("unsupported")
    path = tmp_path / "has_exp.tflite"
    path.write_bytes(make_tflite(tensors, ops, [0], [out]))
    with pytest.raises(TFLiteError, match=r"has_exp\.tflite.*\bEXP\b.*not supported"):
        tflite_classifier(path)


def test_unsupported_op_error_from_op_table(monkeypatch):
    path = need(CORAL / "mobilenet_v1_0.25_128_quant.tflite")
    monkeypatch.delitem(tfl.OP_BUILDERS, "DEPTHWISE_CONV_2D")
    with pytest.raises(TFLiteError, match=r"mobilenet_v1_0\.25_128_quant\.tflite.*DEPTHWISE_CONV_2D"):
        tflite_classifier(path)


def test_quant_mode_must_be_known():
    with pytest.raises(ValueError, match="'float', 'simulate'"):
        tflite_classifier(Path("unused.tflite"), quant="int8")


# ------------------------------------------------------------------------------------ input contract


@pytest.mark.parametrize("rel, dtype, scale, zp, qmin", [
    ("coral-mobilenet-tflite/mobilenet_v2_1.0_224_quant.tflite", "uint8", 0.0078125, 128, 0),
    ("coral-mobilenet-tflite/tf2_mobilenet_v2_1.0_224_ptq.tflite", "uint8", 0.00784314, 127, 0),
    ("mlperf-tiny-resnet8/pretrainedResnet_quant.tflite", "int8", 1.0, -128, -128),
])
def test_mean_std_encode_the_quantized_input(rel, dtype, scale, zp, qmin):
    clf = tflite_classifier(need(MIRROR / "models" / rel))
    assert clf.info["input"]["dtype"] == dtype and clf.info["input"]["zero_point"] == zp
    assert clf.info["input"]["scale"] == pytest.approx(scale, rel=1e-6)
    assert clf.config.mean == pytest.approx(((zp - qmin) / 255,) * 3)
    assert clf.config.std == pytest.approx((1 / (255 * clf.info["input"]["scale"]),) * 3)
    p = torch.arange(256, dtype=torch.float64)  # (p/255 - mean)/std is the real value s * (p + qmin - zp)
    real = (p / 255 - clf.config.mean[0]) / clf.config.std[0]
    torch.testing.assert_close(real, clf.info["input"]["scale"] * (p + qmin - zp))
    assert clf.config.layout == "nchw" and clf.config.input_size[0] == 3 and clf.config.crop_pct == 0.875


def test_float_input_has_identity_contract_and_classifier_hooks():
    clf = tflite_classifier(need(MLPERF / "pretrainedResnet.tflite"))
    assert clf.config.mean == (0.0,) * 3 and clf.config.std == (1.0,) * 3 and clf.config.input_size == (3, 32, 32)
    assert clf.num_classes == 10 and not clf.labels.known and clf.source.startswith("tflite:")
    assert clf._logit_layer() is clf.model.fc and isinstance(clf.model.fc, torch.nn.Linear)
    assert isinstance(clf.model.get_submodule("conv_0"), torch.nn.Conv2d)


def test_coral_layers_are_found_by_tracing():
    clf = tflite_classifier(need(CORAL / "mobilenet_v2_1.0_224_quant.tflite"))
    assert clf.num_classes == 1001 and clf.info["dropped_softmax"] is True
    assert clf._logit_layer() is clf.model.fc  # the final 1x1 conv on the 1x1 map is a Linear
    assert clf.cam_layer == "conv_61_relu6"  # the 7x7x1280 map before pooling
    assert clf.features(torch.rand(2, 3, 224, 224)).shape == (2, 1280)


# ------------------------------------------------------------------------------------ vs the runtime


def test_float_tflite_matches_litert_runtime(cifar):
    """MLPerf Tiny float ResNet-8 (raw 0..255 input): logits equal the interpreter's pre-softmax tensor."""
    x, y = cifar
    path = need(MLPERF / "pretrainedResnet.tflite")
    rebuilt, runtime = tflite_classifier(path), tflite_classifier(path, runtime=True)
    assert runtime.info["runtime_output"].startswith("pre-softmax logits")
    with torch.no_grad():
        a, b = rebuilt.model(x), runtime.model(x)  # the modules take the real input: raw pixels
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)  # measured max |diff| 1.5e-5
    assert (a.argmax(1).numpy() == y).mean() >= 0.85  # measured 0.881 (MLPerf Tiny target: 85%)


def test_simulated_quantization_tracks_litert_closer_than_float(cifar):
    x, _ = cifar
    path = need(MLPERF / "pretrainedResnet_quant.tflite")
    clfs = {m: tflite_classifier(path, quant=m) for m in ("float", "simulate")}
    clfs["runtime"] = tflite_classifier(path, runtime=True)
    with torch.no_grad():
        out = {k: c(x / 255) for k, c in clfs.items()}
    agree = {k: (out[k].argmax(1) == out["runtime"].argmax(1)).float().mean().item() for k in ("float", "simulate")}
    err = {k: (out[k] - out["runtime"]).abs().mean().item() for k in ("float", "simulate")}
    # deterministic numbers, held to about one image of the 1,000
    assert agree["float"] == pytest.approx(0.977, abs=0.0015) and agree["simulate"] == pytest.approx(0.999, abs=0.0015), agree
    assert err["simulate"] < err["float"] / 2, err


def test_quantized_rebuild_agrees_with_litert_on_imagenet_samples(imagenet_200):
    """Coral MobileNet v2 (uint8): the float rebuild's top-1 matches the interpreter's on >= 97% of images."""
    u8, labels = imagenet_200
    path = need(CORAL / "mobilenet_v2_1.0_224_quant.tflite")
    rebuilt, runtime = tflite_classifier(path), tflite_classifier(path, runtime=True)
    x = _pixels(u8)
    with torch.no_grad():
        a = torch.cat([rebuilt(x[i:i + 50]) for i in range(0, len(x), 50)])
    b = runtime(x)  # uint8 input = the same cropped pixels
    agree = (a.argmax(1) == b.argmax(1)).float().mean().item()
    assert agree == pytest.approx(0.985, abs=0.0051), agree  # deterministic: within one image of the 200
    top1 = (a[:, 1:].argmax(1).numpy() == labels).mean()  # index 0 is 'background'
    assert top1 == pytest.approx(0.845, abs=0.0051), top1  # 0.875 on all 1,000


# ------------------------------------------------------------------------------------ autograd and batching


@pytest.mark.parametrize("quant", ["float", "simulate"])
def test_gradients_flow(quant):
    clf = tflite_classifier(need(CORAL / "mobilenet_v1_0.5_160_quant.tflite"), quant=quant).eval()
    x = torch.rand(2, 3, 160, 160, generator=torch.Generator().manual_seed(0), requires_grad=True)
    logits = clf(x)
    logits.gather(1, logits.argmax(1, keepdim=True)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in clf.model.parameters())


def test_batch_equals_per_sample():
    path = need(CORAL / "mobilenet_v1_0.25_128_quant.tflite")
    x = torch.rand(4, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    for clf in (tflite_classifier(path), tflite_classifier(path, runtime=True)):
        with torch.no_grad():
            batch, single = clf(x), torch.cat([clf(x[i:i + 1]) for i in range(len(x))])
        assert batch.shape == (4, 1001)
        torch.testing.assert_close(batch, single, atol=1e-4, rtol=1e-4)


def test_simulate_batch_equals_per_sample_up_to_rounding_flips():
    """Batched and single convolutions differ in the last float bit, which flips the odd rounding
    near a .5 boundary; those flips travel, so simulated logits agree to a quantization step or so."""
    clf = tflite_classifier(need(CORAL / "mobilenet_v1_0.25_128_quant.tflite"), quant="simulate")
    step = clf.model.steps[-1].fq[0]  # the logits' quantization step
    x = torch.rand(4, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (clf(x) - torch.cat([clf(x[i:i + 1]) for i in range(len(x))])).abs()
    assert diff.mean() <= 0.25 * step and diff.max() <= 3 * step + 1e-6  # measured 0.12 and 1 step
