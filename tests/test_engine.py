"""The evaluation engine: predictions from the folded inference copy, the prediction cache keyed by dataset object,
and no prediction pass that no probe asked for."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch
from torch import nn

from imgclass import evaluate, load_dataset, load_model
from imgclass.data.base import ArrayDataset
from imgclass.data.labels import LabelSpace
from imgclass.engine import Engine
from imgclass.models import pointwise
from imgclass.models.classifier import Classifier, ModelConfig
from imgclass.models.fast import inference_copy

from conftest import mirror_file
from helpers import rgb_image, save_png, write_bad_files

CIFAR = "zoo:cifar10-lossless:test"


@pytest.fixture(scope="module")
def r20():
    mirror_file("cifar10-lossless/test-first1000.npz")
    return load_model("zoo:cifar10-resnet20")


@pytest.fixture(scope="module")
def images(r20):
    """64 lossless CIFAR-10 test images, uint8 NCHW, and their labels."""
    ds = load_dataset(CIFAR).subset(range(64))
    x = torch.stack([ds[i].image for i in range(len(ds))])
    return ds, x, torch.as_tensor(ds.labels)


def _bns(m: nn.Module) -> int:
    return sum(isinstance(k, nn.modules.batchnorm._BatchNorm) for k in m.modules())


def test_predictions_come_from_the_folded_copy_and_match_the_model_as_loaded(r20, images):
    """Reference: the model as loaded, called directly on the same pixels (float32). The engine predicts with the
    folded, channels-last copy (its 19 batch norms gone), whose logits match to float rounding, and says so in its
    settings; ``engine.classifier`` stays the unfolded model with trainable weights (gradients, TENT, attacks)."""
    ds, x, _ = images
    with torch.no_grad():
        ref = r20(x.float() / 255)
    eng = Engine(r20, batch_size=32, workers=0, device="cpu", progress=False)
    assert eng.settings()["inference_copy"]["used"] is False  # made at the first prediction, not before
    p = eng.predict(ds)
    info = eng.settings()["inference_copy"]
    assert info["used"] and info["folded"] and info["channels_last"]
    assert 0 <= info["max_logit_diff"] <= 1e-4 + 1e-3 * float(ref.abs().max())
    assert torch.allclose(p.logits, ref, rtol=1e-3, atol=1e-4)
    assert (p.logits.argmax(1) == ref.argmax(1)).all()
    assert eng.classifier is r20 and _bns(r20.model) == 19 and all(q.requires_grad for q in r20.parameters())
    assert _bns(eng._predictor.model) == 0  # the predictor is the folded copy
    assert info["fused_conv_relu"] == (19 if pointwise.available() else 0)  # 1 stem + 9 blocks x 2

    off = Engine(r20, batch_size=32, workers=0, device="cpu", progress=False, fast=False)
    q = off.predict(ds)
    assert off.settings()["inference_copy"] == {"used": False, "reason": "turned off (fast=False, --no-fast)"}
    assert torch.allclose(q.logits, ref, rtol=1e-5, atol=1e-4)  # float32 rounding of another batch split


@pytest.mark.parametrize("spec, fusions", [("zoo:cifar10-resnet20", 19), ("timm:resnet18?pretrained=false", 17)])
def test_fused_conv_relu_equals_the_layers_and_keeps_gradients(spec, fusions):
    """Reference: the same folded copy without fusion (torch's own conv, add and ReLU). oneDNN's conv+ReLU and
    conv+add+ReLU post-ops give the same float32 logits; where gradients are needed the fused modules run the plain
    layers, so input gradients are the unfused copy's. Counts: ResNet-20 has a stem conv+ReLU and 9 blocks of two;
    timm's ResNet-18 a stem and 8 blocks of two once its identity placeholders (drop_block, aa) are dropped."""
    assert pointwise.available()  # torch's x86 and Arm wheels ship oneDNN
    if "cifar" in spec:
        mirror_file("models/akamaster-resnet-cifar10/resnet20-12fca82f.th")
    clf = load_model(spec)
    plain, fused = inference_copy(clf), inference_copy(clf)
    assert pointwise.fuse_conv_pointwise(fused.model.net) == fusions
    x = torch.rand((4, *clf.config.input_size), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = plain(x), fused(x)
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    plain(xa)[:, 0].sum().backward()
    fused(xb)[:, 0].sum().backward()
    assert torch.allclose(xa.grad, xb.grad, rtol=1e-4, atol=1e-6)


def test_a_copy_whose_logits_differ_is_not_used():
    """A model that answers differently on every call (a randomized defence) fails the copy's logit check: the
    engine predicts with the model as loaded (its batch norm unfolded) and records why."""

    class Noisy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.fc = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(self.bn(self.conv(x)).mean((2, 3))) + torch.randn(x.shape[0], 3)

    torch.manual_seed(0)
    clf = Classifier(Noisy().eval(), labels=LabelSpace.from_names(["a", "b", "c"]),
                     config=ModelConfig(input_size=(3, 8, 8)), source="noisy")
    ds = ArrayDataset(np.stack([rgb_image(i, (8, 8)) for i in range(6)]), np.arange(6) % 3, clf.labels)
    eng = Engine(clf, batch_size=4, workers=0, device="cpu", progress=False)
    assert len(eng.predict(ds).labels) == 6
    info = eng.settings()["inference_copy"]
    assert not info["used"] and info["reason"] and not info["folded"]
    assert eng._predictor is clf and _bns(clf.model) == 1


def test_prediction_cache_is_keyed_by_the_dataset_object_not_its_id(r20):
    """Reference: each dataset's own labels and the model's direct output. Datasets made one after the other, each
    dropped before the next, often reuse the same id(); every one must get its own predictions, and the engine must
    not keep a dataset alive."""
    eng = Engine(r20, batch_size=16, workers=0, device="cpu", progress=False)
    refs = []
    for k in range(6):
        imgs = np.stack([rgb_image(100 * k + i) for i in range(4 + k % 2)])
        labels = (np.arange(len(imgs)) + k) % 10
        ds = ArrayDataset(imgs, labels, r20.labels, spec=f"array-{k}")
        p = eng.predict(ds)
        with torch.no_grad():
            ref = r20(torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255)
        assert p.labels.tolist() == labels.tolist()
        assert torch.allclose(p.logits, ref, rtol=1e-3, atol=1e-4)
        assert eng.cached_predictions(ds).logits is p.logits
        refs.append(weakref.ref(ds))
        del ds, p
        gc.collect()
    assert all(r() is None for r in refs)  # nothing kept alive by the cache


def test_the_cache_answers_a_second_predict_without_a_pass(r20, images):
    ds, _, _ = images
    eng = Engine(r20, batch_size=32, workers=0, device="cpu", progress=False)
    assert eng.cached_predictions(ds) is None
    a = eng.predict(ds)
    b = eng.predict(ds)
    assert b.logits is a.logits and eng.cached_predictions(ds).logits is a.logits
    assert eng.cached_predictions(ds.subset(range(len(ds)))) is None  # another dataset object: its own entry


class _Counting(ArrayDataset):
    """An in-memory dataset that counts image loads (``workers=0``: the loader calls it in this process)."""

    loads = 0

    def load(self, i):
        type(self).loads += 1
        return super().load(i)


@pytest.fixture
def counted(r20, monkeypatch):
    """40 CIFAR images behind a load counter, and a spy on Engine.map recording every pass over the images
    (description, size)."""
    base = load_dataset(CIFAR)
    imgs = np.stack([base[i].image.permute(1, 2, 0).numpy() for i in range(40)])
    ds = _Counting(imgs, base.labels[:40], base.classes, spec="counted")
    _Counting.loads = 0
    passes: list[tuple[str, int]] = []
    real_map = Engine.map

    def spy(self, dataset, fn, **kw):
        before = _Counting.loads
        out = real_map(self, dataset, fn, **kw)
        if _Counting.loads > before:  # a pass over the images, not an answer from the cache
            passes.append((kw.get("desc", ""), len(dataset)))
        return out

    monkeypatch.setattr(Engine, "map", spy)
    return ds, passes


@pytest.mark.parametrize("probe, params", [
    ("corruptions", {"corruptions": "gaussian_noise,contrast", "severities": "1,5", "example_size": 0}),
    ("adversarial", {"attacks": "fgsm", "eps": "8/255", "sanity_checks": False}),
])
def test_a_probe_without_predictions_costs_no_prediction_pass(r20, counted, probe, params):
    """Reference: the passes the probe itself makes. ``evaluate`` used to predict the whole dataset at the end only
    for its timing and skipped-file fields; a run of corruptions or adversarial alone with --limit 10 now reads
    each image only in the probe's own passes, and reports no inference timing it did not measure."""
    ds, passes = counted
    r = evaluate(r20, ds, probes=[probe], probe_params={probe: params}, limit=10, workers=0, progress=False)
    assert r["probes"][probe]
    assert not [p for p in passes if p[0] == "predicting"], passes
    assert all(n <= 10 for _, n in passes), passes
    assert "inference_seconds" not in r["timing"]
    if probe == "corruptions":
        assert passes == [(passes[0][0], 10)] and _Counting.loads == 10  # one pass, every image read once


def test_accuracy_and_calibration_share_one_prediction_pass(r20, counted):
    ds, passes = counted
    r = evaluate(r20, ds, probes=["accuracy", "calibration"], limit=10, workers=0, progress=False)
    assert passes == [("predicting", 10)] and _Counting.loads == 10
    assert r["timing"]["inference_seconds"] > 0 and r["timing"]["images_per_second"] > 0
    assert r["settings"]["inference_copy"]["used"] and r["settings"]["precision"] == "float32"


def test_skipped_files_are_reported_from_the_probes_own_pass(tmp_path):
    """Reference: the bad files written. Without a prediction pass of its own, evaluate still lists every file the
    probe could not read (here a corruptions-only run)."""
    root = tmp_path / "data"
    for ci, cls in enumerate(["cat", "dog"]):
        for j in range(3):
            save_png(rgb_image(ci * 10 + j), root / cls / f"{j}.png")
    expected = write_bad_files(root / "dog" / "bad")
    r = evaluate("zoo:cifar10-resnet20", f"folder:{root}", probes=["corruptions"], workers=0, progress=False,
                 probe_params={"corruptions": {"corruptions": "contrast", "severities": "1", "example_size": 0}})
    assert {s["path"].rsplit("/", 1)[-1] for s in r["skipped"]} == set(expected)
    assert any(f"{len(expected)} file(s) could not be read" in w for w in r["warnings"])
