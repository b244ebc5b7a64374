"""Probe adaptation: TENT / BN adaptation / self-learning; references: the TENT paper's claim, invariants."""

from __future__ import annotations

import copy

import pytest
import torch

from imgclass import evaluate, load_model
from imgclass.probes.adaptation import adaptation_loss, prepare

from conftest import mirror_file


def test_prepare_adapts_only_normalization_affine_parameters():
    """Invariant (TENT): only the normalization layers' scale and shift are trained; BN uses batch statistics."""
    mirror_file("models/akamaster-resnet-cifar10/resnet20-12fca82f.th")
    clf = load_model("zoo:cifar10-resnet20")
    params = prepare(copy.deepcopy(clf), "tent")
    bn = [m for m in clf.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(params) == 2 * len(bn)
    m = copy.deepcopy(clf)
    prepare(m, "norm")
    assert not any(p.requires_grad for p in m.parameters())
    b = [mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)][0]
    assert b.training and b.running_mean is None and not m.model.conv1.training


def test_losses_against_direct_formulas():
    logits = torch.randn(5, 10)
    p = logits.softmax(1)
    assert adaptation_loss(logits, "tent") == pytest.approx(float(-(p * p.log()).sum(1).mean()), rel=1e-5)
    y = logits.argmax(1)
    assert adaptation_loss(logits, "pl") == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y)), rel=1e-5)
    py = p.gather(1, y[:, None]).squeeze(1)
    assert adaptation_loss(logits, "rpl", q=0.8) == pytest.approx(float(((1 - py ** 0.8) / 0.8).mean()), rel=1e-5)


def test_adaptation_never_modifies_the_callers_model():
    mirror_file("cifar10-lossless/test-first1000.npz")
    clf = load_model("zoo:cifar10-resnet20")
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    r = evaluate(clf, "zoo:cifar10-lossless:test", probes=["adaptation"], limit=256, progress=False,
                 probe_params={"adaptation": {"corruptions": ("none",), "methods": ("norm", "tent", "pl", "rpl")}})
    after = clf.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    acc = r["probes"]["adaptation"]["accuracy"]["none"]
    assert set(acc) == {"source", "norm", "tent", "pl", "rpl"}


@pytest.mark.slow
def test_tent_improves_resnet20_on_gaussian_noise_severity_5():
    """Reference: TENT (Wang et al. 2021) and BN adaptation raise CIFAR-10-C accuracy of a standard ResNet under
    gaussian noise at severity 5 substantially (source ~30 % for ResNet-20 style nets)."""
    mirror_file("cifar10-lossless/test-first1000.npz")
    r = evaluate("zoo:cifar10-resnet20", "zoo:cifar10-lossless:test", probes=["adaptation"], progress=False,
                 probe_params={"adaptation": {"corruptions": ("gaussian_noise",), "severity": 5,
                                              "methods": ("norm", "tent", "rpl")}})
    acc = r["probes"]["adaptation"]["accuracy"]["gaussian_noise"]
    assert acc["tent"] > acc["source"] + 0.10
    assert acc["norm"] > acc["source"]
