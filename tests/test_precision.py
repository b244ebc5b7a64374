"""``--amp``: bfloat16 autocast on CPUs that compute it natively (float16 on CUDA), float32 with the reason
elsewhere; and what bfloat16 does to the numbers of real models against float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imgclass import evaluate, load_dataset, load_model, metrics
from imgclass.data.base import ArrayDataset
from imgclass.engine import Engine, resolve_precision
from imgclass.errors import UsageError

from conftest import mirror_file, unavailable
from helpers import rgb_image, tiny_classifier

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return {w for line in f if line.startswith(("flags", "Features")) for w in line.split(":", 1)[1].split()}
    except OSError:
        unavailable("no /proc/cpuinfo to read the CPU's flags from")


def _tiny():
    clf = tiny_classifier([str(i) for i in range(10)])
    ds = ArrayDataset(np.stack([rgb_image(i) for i in range(6)]), np.arange(6), clf.labels, spec="tiny")
    return clf, ds


def test_amp_is_bfloat16_exactly_where_the_cpu_computes_it_natively():
    """Reference: the CPU flags the kernel reports (/proc/cpuinfo: avx512_bf16 or amx_bf16 on x86, bf16 on Arm).
    Logits leave autocast as float32 whatever the precision inside."""
    native = bool(_cpu_flags() & {"avx512_bf16", "amx_bf16", "bf16"})
    precision, reason = resolve_precision(CPU, True)
    assert precision == ("bfloat16" if native else "float32")
    assert ("natively" in reason) == native
    assert resolve_precision(CPU, False) == ("float32", "amp off")
    assert resolve_precision(CUDA, True)[0] == "float16"
    assert resolve_precision(CPU, "bfloat16") == ("bfloat16", "requested")  # forced, e.g. emulated to check numbers
    with pytest.raises(UsageError, match="bfloat16"):
        resolve_precision(CPU, "int8")
    clf, ds = _tiny()
    eng = Engine(clf, workers=0, device="cpu", progress=False, amp="bfloat16")
    p = eng.predict(ds)
    assert p.logits.dtype == torch.float32 and eng.settings()["precision"] == "bfloat16"
    with torch.no_grad():
        assert torch.allclose(p.logits, clf(torch.from_numpy(ds.images).permute(0, 3, 1, 2).float() / 255),
                              rtol=0.02, atol=0.02)


def test_amp_without_native_bfloat16_computes_in_float32_and_says_why(monkeypatch):
    """Where bfloat16 would be emulated (slower than float32), --amp falls back to float32 with a warning, and
    results.json records the precision used and the reason."""
    import imgclass.engine as engine

    why = "CPU has no native bfloat16 (test)"
    monkeypatch.setattr(engine, "cpu_bfloat16", lambda: (False, why))
    clf, ds = _tiny()
    with pytest.warns(RuntimeWarning, match="float32"):
        eng = Engine(clf, workers=0, device="cpu", progress=False, amp=True)
    assert eng.precision == "float32" and not eng.amp and why in eng.precision_reason
    with pytest.warns(RuntimeWarning):
        r = evaluate(clf, ds, probes=["accuracy"], amp=True, workers=0, progress=False)
    assert r["settings"]["precision"] == "float32" and why in r["settings"]["precision_reason"]
    assert any(w.startswith("--amp: computed in float32") and why in w for w in r["warnings"])


CIFAR = [f"zoo:cifar10-resnet{d}" for d in (20, 32, 44, 56)]
MOBILENET = "zoo:coral-mobilenet-v2-1.0-224"


def _both_precisions(model: str, data: str) -> dict:
    """float32 and bfloat16-autocast logits (forced: the check runs even where bfloat16 is emulated) of the same
    decoded pixels through the same engine path, with the labels."""
    clf, ds = load_model(model), load_dataset(data)
    f32 = Engine(clf, batch_size=100, device="cpu", progress=False)
    b16 = Engine(clf, batch_size=100, device="cpu", progress=False, amp="bfloat16")
    al = f32.alignment(ds)

    def both(b):  # one decode, both precisions
        x = f32.to_float(b.images)
        return {"f32": al.apply(f32.logits(x)), "b16": al.apply(b16.logits(x)), "y": b.labels}

    o = f32.map(ds, both, desc=model).outputs
    assert b16.settings()["precision"] == "bfloat16" and o["b16"].dtype == torch.float32
    assert f32.settings()["inference_copy"]["used"] and b16.settings()["inference_copy"]["used"]
    assert len(o["y"]) == 1000
    return o


def _figures(logits: torch.Tensor, y: torch.Tensor) -> tuple[int, float, float]:
    lg = logits.double()
    return int((lg.argmax(1) == y).sum()), metrics.ece(torch.softmax(lg, 1), y, 15), metrics.nll(lg, y)


@pytest.mark.slow
def test_bfloat16_keeps_top1_and_calibration_of_real_models():
    """Reference: the same models in float32 on the same 1,000 images, through the same engine (the folded copy,
    with oneDNN's fused conv+ReLU and conv+add+ReLU on the CPU).

    Measured here (Xeon with AMX-BF16, torch 2.14), bfloat16 minus float32:
      CIFAR ResNet-20/32/44/56 (lossless test images): top-1 +0.1 / +0.1 / -0.1 / +0.2 points, ECE +0.0011 /
      -0.0011 / +0.0013 / -0.0019, NLL -0.07 % / +0.35 % / +0.08 % / -0.04 %; 99.7-99.9 % of decisions unchanged.
      Coral MobileNet v2 (ImageNet samples): top-1 87.8 -> 87.6 % (-0.2 points, 6 decisions change), with its
      depthwise convolutions in float32 (the engine's bfloat16 policy); bfloat16 everywhere cost 0.7 points (14
      decisions, every one a near-tie: float32 top-2 margin 0.04 to 0.55 logits, where bfloat16 moves logits by 0.04
      at the median). A 1000-way ImageNet model has many more near-ties than a 10-way CIFAR one.
    Tolerances: top-1 0.2 points (2 of 1,000) on every model; on MobileNet v2 at most 1 % of decisions changed and
    none with a float32 margin of 1 logit or more. ECE 0.005 (2.6x the largest change measured, a tenth of these
    models' ECE of ~0.05 and below its sampling error on 1,000 images); NLL 3 % (measured at most 1.7 %; its
    sampling error on 1,000 images is ~10 %).
    """
    mirror_file("cifar10-lossless/test-first1000.npz")
    mirror_file("imagenet/imagenet-samples.tar")
    for model in [*CIFAR, MOBILENET]:
        data = "zoo:imagenet-samples" if model == MOBILENET else "zoo:cifar10-lossless:test"
        o = _both_precisions(model, data)
        y = o["y"]
        (c32, e32, n32), (c16, e16, n16) = _figures(o["f32"], y), _figures(o["b16"], y)
        assert abs(e16 - e32) <= 0.005, (model, e32, e16)
        assert abs(n16 - n32) <= 0.03 * n32, (model, n32, n16)
        assert abs(c16 - c32) <= 2, (model, c32, c16)  # 0.2 points of 1,000
        if model != MOBILENET:
            continue
        changed = o["f32"].argmax(1) != o["b16"].argmax(1)
        top2 = o["f32"].topk(2, 1).values
        assert int(changed.sum()) <= 10, int(changed.sum())
        margins = (top2[:, 0] - top2[:, 1])[changed]
        assert margins.numel() == 0 or float(margins.max()) < 1.0, margins


def test_depthwise_convolutions_compute_in_float32_under_bfloat16():
    """The engine's bfloat16 policy: a depthwise convolution gives exactly its float32 result (a dense one does not),
    through nn.Conv2d and through the fused oneDNN module alike."""
    from imgclass.engine import _bfloat16_autocast
    from imgclass.models.pointwise import FusedConv2d, available

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 12, 12, generator=g)
    dw, dense = torch.nn.Conv2d(16, 16, 3, padding=1, groups=16), torch.nn.Conv2d(16, 16, 3, padding=1)
    with torch.no_grad():
        ref_dw, ref_dense = dw(x), dense(x)
        with _bfloat16_autocast("cpu"):
            got_dw, got_dense = dw(x), dense(x)
        assert got_dw.dtype == torch.float32 and torch.equal(got_dw, ref_dw)
        assert got_dense.dtype == torch.bfloat16 and not torch.equal(got_dense.float(), ref_dense)
        if available():
            fused = FusedConv2d(dw, add=False, relu=True)
            with _bfloat16_autocast("cpu"):
                f = fused(x)
            torch.testing.assert_close(f.float(), torch.relu(ref_dw), rtol=1e-5, atol=1e-5)
