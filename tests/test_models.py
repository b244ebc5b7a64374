"""Model sources and the Classifier contract; references are published numbers, onnxruntime, torch itself."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from imgclass import evaluate, load_model
from imgclass.data.labels import imagenet_space
from imgclass.models import MODEL_SOURCES, ZOO_MODELS, ModelLoadError
from imgclass.models.checkpoint import CheckpointError, UnsafeCheckpointError, save_checkpoint
from imgclass.errors import UnknownNameError
from imgclass.specs import SpecError

from conftest import mirror_file
from helpers import TinyNet


@pytest.mark.parametrize("name", sorted(ZOO_MODELS))
def test_every_zoo_model_honours_the_classifier_contract(name):
    """Registry-wide (timm style): pixels in [0,1] -> finite logits of the label-space width, features, CAM layer."""
    for a in ZOO_MODELS[name].assets:
        from imgclass.assets import get_asset

        mirror_file(get_asset(a).path)
    clf = load_model(f"zoo:{name}")
    c, h, w = clf.input_size
    x = torch.rand(3, c, h, w)
    with torch.no_grad():
        out = clf(x)
        feats = clf.features(x)
    assert out.shape == (3, clf.num_classes) and torch.isfinite(out).all()
    assert clf.labels.known and len(clf.class_names) == clf.num_classes
    assert feats.dim() == 2 and feats.shape[0] == 3
    layer = dict(clf.model.named_modules())[clf.cam_layer]
    acts = {}
    hk = layer.register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    with torch.no_grad():
        clf(x)
    hk.remove()
    assert acts["a"].dim() == 4
    with torch.no_grad():  # one image alone gives what it gives in a batch
        assert torch.allclose(clf(x[:1]), out[:1], atol=1e-4)


PUBLISHED_LOSSLESS = {20: 0.915, 32: 0.928, 44: 0.933, 56: 0.926}


@pytest.mark.parametrize("depth", [20, 32, 44, 56])
def test_cifar_resnets_reproduce_published_accuracy(depth):
    """Reference: the mirror's independent measurement on the lossless 1,000 (91.5 / 92.8 / 93.3 / 92.6 %),
    consistent with the published test errors 8.27 / 7.37 / 6.90 / 6.61 % on the full test set."""
    mirror_file("cifar10-lossless/test-first1000.npz")
    r = evaluate(f"zoo:cifar10-resnet{depth}", "zoo:cifar10-lossless:test", probes=["accuracy"], progress=False)
    assert r["probes"]["accuracy"]["top1"] == pytest.approx(PUBLISHED_LOSSLESS[depth], abs=0.0015)
    assert r["probes"]["accuracy"]["n_evaluated"] == 1000


# published full-test-set accuracy (akamaster README: errors 8.27 / 7.37 / 6.90 / 6.61 %)
PUBLISHED_FULL = {20: 0.9173, 32: 0.9263, 44: 0.9310, 56: 0.9339}


@pytest.mark.slow
@pytest.mark.parametrize("depth", [20, 56])
def test_cifar_resnets_on_jpeg_test_set(depth):
    """Reference: the mirror's measured JPEG caveat: standard CIFAR-10 models lose 9 to 11 points on the JPEG copy
    (measured here: 81.0 / 82.6 / 82.7 / 83.2 % for depths 20 / 32 / 44 / 56 against the published 91.7 / 92.6 /
    93.1 / 93.4 %). The shallowest and deepest run here (10,000 images each); all four run on the lossless 1,000."""
    mirror_file("cifar10-jpeg/test.tar.gz")
    r = evaluate(f"zoo:cifar10-resnet{depth}", "zoo:cifar10-jpeg:test", probes=["accuracy"], progress=False,
                 batch_size=256)
    acc = r["probes"]["accuracy"]
    assert acc["n_evaluated"] == 10_000 and acc["n_skipped"] == 0
    assert 0.085 <= PUBLISHED_FULL[depth] - acc["top1"] <= 0.115


def test_onnx_model_with_its_contract_on_the_spec():
    """Reference: onnxruntime on the same inputs, and the mirror's measured clean accuracies on the lossless 1,000."""
    import onnxruntime as ort

    path = mirror_file("models/vnncomp2021-cifar/resnet_2b.onnx")
    spec = f"onnx:{path}?mean=0.4914,0.4822,0.4465&std=0.2471,0.2435,0.2616&classes=cifar10"
    clf = load_model(spec)
    x = torch.rand(4, 3, 32, 32)
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2471, 0.2435, 0.2616]).view(1, 3, 1, 1)
    sess = ort.InferenceSession(str(path))
    name = sess.get_inputs()[0].name
    ref = np.concatenate([sess.run(None, {name: ((x[i:i + 1] - mean) / std).numpy()})[0] for i in range(4)])
    with torch.no_grad():
        assert np.allclose(clf(x).numpy(), ref, atol=1e-4)
    r = evaluate(spec, "zoo:cifar10-lossless:test", probes=["accuracy"], progress=False)
    assert r["probes"]["accuracy"]["top1"] == pytest.approx(0.703, abs=0.0015)  # published clean 69.25% on all 10,000
    nhwc = mirror_file("models/vnncomp2021-cifar/cifar10_small.onnx")
    r = evaluate(f"onnx:{nhwc}?layout=nhwc&classes=cifar10", "zoo:cifar10-lossless:test", probes=["accuracy"],
                 progress=False)
    assert r["probes"]["accuracy"]["top1"] == pytest.approx(0.630, abs=0.0015)  # mirror README: 63.0%


def test_onnx_layout_is_inferred_from_the_input_shape():
    path = mirror_file("models/vnncomp2021-cifar/cifar10_medium.onnx")
    clf = load_model(f"onnx:{path}?classes=cifar10")
    assert clf.config.layout == "nhwc" and clf.input_size == (3, 32, 32)


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, (f"touch {_Evil.marker}",))


def test_checkpoint_whose_pickle_runs_code_is_refused(tmp_path):
    """Invariant: the code in the pickle never runs; the error names the file and the opt-in."""
    _Evil.marker = tmp_path / "PWNED"
    ckpt = tmp_path / "evil.pth"
    ckpt.write_bytes(pickle.dumps({"state_dict": {"w": _Evil()}}))
    torch.save({"weight": torch.zeros(2), "payload": _Evil()}, tmp_path / "evil2.pt")
    for f in (ckpt, tmp_path / "evil2.pt"):
        with pytest.raises(UnsafeCheckpointError) as e:
            load_model(f"file:{f}?arch=cifar_resnet20")
        assert str(f) in str(e.value) and "trust=true" in str(e.value)
    assert not _Evil.marker.exists()


def test_safetensors_checkpoint_roundtrip(tmp_path):
    """Reference: the original model's logits; metadata carries classes and preprocessing."""
    mirror_file("models/akamaster-resnet-cifar10/resnet20-12fca82f.th")
    clf = load_model("zoo:cifar10-resnet20")
    path = save_checkpoint(clf, tmp_path / "r20.safetensors", extra={"epoch": 3})
    back = load_model(f"file:{path}")
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(clf(x), back(x))
    assert back.class_names == clf.class_names and back.config == clf.config
    assert back.info["meta"] == {"epoch": 3}
    assert not list(tmp_path.glob("*.tmp"))


def test_plain_state_dict_with_arch_and_sidecar(tmp_path):
    """Reference: the zoo model built from the same published file."""
    th = mirror_file("models/akamaster-resnet-cifar10/resnet20-12fca82f.th")
    direct = load_model(f"file:{th}?arch=cifar_resnet20&classes=cifar10")
    zoo = load_model("zoo:cifar10-resnet20")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(direct(x), zoo(x))
    sd = tmp_path / "tiny.pt"
    torch.save({"model": TinyNet(3).state_dict()}, sd)
    with pytest.raises(CheckpointError, match="arch"):
        load_model(f"file:{sd}")
    with pytest.raises(CheckpointError, match="unknown architecture"):
        load_model(f"file:{sd}?arch=nonsense")


def test_py_source(tmp_path):
    f = tmp_path / "mymodel.py"
    f.write_text("import torch.nn as nn\n"
                 "def build():\n"
                 "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))\n")
    clf = load_model(f"py:{f}:build?size=32&classes=cifar10&mean=0.5&std=0.25")
    assert clf.input_size == (3, 32, 32) and clf.class_names[0] == "airplane"
    assert clf.config.mean == (0.5, 0.5, 0.5)
    assert clf.features(torch.rand(2, 3, 32, 32)).shape == (2, 4)
    with pytest.raises(ModelLoadError, match="defines no"):
        load_model(f"py:{f}:nothing")


def test_timm_without_weights_keeps_its_pretrained_config():
    """Reference: timm's own pretrained cfg and ImageNet label list."""
    import timm
    from timm.data import resolve_data_config

    clf = load_model("timm:resnet18.a1_in1k?pretrained=false")
    cfg = resolve_data_config({}, model=timm.create_model("resnet18.a1_in1k", pretrained=False))
    assert clf.config.crop_pct == cfg["crop_pct"] and clf.config.interpolation == cfg["interpolation"]
    assert clf.config.mean == tuple(cfg["mean"]) and clf.input_size == tuple(cfg["input_size"])
    assert clf.wnids == list(imagenet_space().wnids)
    assert clf.features(torch.rand(1, 3, 64, 64)).shape == (1, 512)
    assert clf.cam_layer.startswith("layer4")


def test_timm_pretrained_offline_gives_a_helpful_error(monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")
    with pytest.raises(ModelLoadError, match="pretrained=false"):
        load_model("timm:resnet18.a1_in1k")


def test_unknown_model_scheme_and_options():
    with pytest.raises(SpecError) as e:
        load_model("keras:model.h5")
    assert all(s in str(e.value) for s in MODEL_SOURCES)
    with pytest.raises(SpecError, match="unknown option"):
        load_model("timm:resnet18?pretrained=false&colour=red")
    with pytest.raises(UnknownNameError, match="known zoo models: .*cifar10-resnet20"):
        load_model("zoo:resnet9000")


@pytest.mark.slow
def test_coral_mobilenet_v2_rebuild_on_imagenet_samples_agrees_with_tflite_runtime():
    """References: the TFLite runtime (ai-edge-litert) on the same preprocessed pixels (>= 97 % equal top-1
    decisions), and the issue's ~84 % top-1 on the 1,000 ImageNet samples (measured here: 87.8 % with the
    standard 87.5 % centre crop, 85.7 % without a crop). The 1001-way output aligns to the 1000 wnid folders."""
    mirror_file("imagenet/imagenet-samples.tar")
    mirror_file("models/coral-mobilenet-tflite/mobilenet_v2_1.0_224_quant.tflite")
    from imgclass import load_dataset
    from imgclass.engine import Engine

    ds = load_dataset("zoo:imagenet-samples")
    preds = {}
    for mode in ("", "?runtime=true"):
        clf = load_model(f"zoo:coral-mobilenet-v2-1.0-224{mode}")
        p = Engine(clf, batch_size=100, progress=False).predict(ds)
        assert len(p.labels) == 1000
        preds[mode] = p
    rebuilt, runtime = preds[""], preds["?runtime=true"]
    top1 = (rebuilt.logits.argmax(1) == rebuilt.labels).double().mean().item()
    agree = (rebuilt.logits.argmax(1) == runtime.logits.argmax(1)).double().mean().item()
    assert agree >= 0.97, agree
    assert 0.82 <= top1 <= 0.90, top1


def test_inference_copy_folds_batch_norm_and_keeps_the_function():
    """Invariant: the attack copy (BN folded into convolutions, channels-last, frozen) computes the same logits
    as the published ResNet-20 to float rounding, has no batch norm left, and leaves the caller's model as it was;
    a network torch.fx cannot trace is copied unfolded."""
    from imgclass.models.fast import inference_copy

    mirror_file("models/akamaster-resnet-cifar10/resnet20-12fca82f.th")
    clf = load_model("zoo:cifar10-resnet20").eval()
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    fast = inference_copy(clf)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert all(not p.requires_grad for p in fast.parameters())
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(fast(x), clf(x), rtol=1e-4, atol=1e-4)
    assert all(p.requires_grad for p in clf.parameters())
    assert all(torch.equal(v, before[k]) for k, v in clf.state_dict().items())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in clf.modules())

    class Branchy(torch.nn.Module):  # data-dependent control flow: not traceable
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.fc = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 10)

        def forward(self, x):
            h = self.bn(self.conv(x))
            if h.mean() > 0:
                h = h * 2
            return self.fc(h.mean((2, 3)))

    from imgclass.data.labels import named_space
    from imgclass.models import Classifier, ModelConfig

    odd = Classifier(Branchy().eval(), labels=named_space("cifar10"), config=ModelConfig(input_size=(3, 32, 32)),
                     source="test:branchy").eval()
    odd_fast = inference_copy(odd)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in odd_fast.modules())
    with torch.no_grad():
        torch.testing.assert_close(odd_fast(x), odd(x), rtol=1e-5, atol=1e-5)
