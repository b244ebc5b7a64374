"""Probe behaviour on real models: temperature scaling (Guo et al. 2017), human labels, parameters."""

from __future__ import annotations

import pytest
import torch

from imgclass import evaluate, load_dataset, load_model, metrics
from imgclass.engine import Engine
from imgclass.probes import PROBES, get_probe

from conftest import mirror_file


@pytest.fixture(scope="module")
def r20():
    mirror_file("cifar10-lossless/test-first1000.npz")
    return load_model("zoo:cifar10-resnet20")


def test_temperature_fit_on_a_named_split_equals_the_direct_fit(r20):
    """Reference: metrics.fit_temperature on the fit split's own logits. Fitting on *training* images gives
    T < 1 (the network is near-perfect there), which hurts on test images: the reason to fit on held-out data."""
    mirror_file("cifar10-lossless/train-first2000.npz")
    r = evaluate(r20, "zoo:cifar10-lossless:test", probes=["calibration"], progress=False,
                 probe_params={"calibration": {"fit_data": "zoo:cifar10-lossless:train"}})
    cal = r["probes"]["calibration"]
    fit = Engine(load_model("zoo:cifar10-resnet20"), progress=False).predict(load_dataset("zoo:cifar10-lossless:train"))
    assert cal["temperature"] == pytest.approx(metrics.fit_temperature(fit.logits, fit.labels), rel=1e-9)
    ts = cal["temperature_scaling"]
    assert ts["n_fit"] == 2000 and ts["n_eval"] == 1000
    assert ts["before"]["ece"] == pytest.approx(cal["ece"], abs=1e-12)
    assert cal["temperature"] < 1 and ts["after"]["nll"] > ts["before"]["nll"]
    assert ts["after"]["accuracy"] == ts["before"]["accuracy"]  # scaling never changes the argmax


def test_holdout_split_is_seeded(r20):
    runs = [evaluate(r20, "zoo:cifar10-lossless:test", probes=["calibration"], seed=s, progress=False)
            for s in (0, 0, 1)]
    t = [r["probes"]["calibration"]["temperature"] for r in runs]
    assert t[0] == t[1] and t[0] != t[2]
    # CIFAR ResNets are overconfident (Guo et al. 2017): held-out scaling has T > 1 and lowers ECE and NLL
    ts = runs[0]["probes"]["calibration"]["temperature_scaling"]
    assert ts["n_fit"] == 500 and ts["n_eval"] == 500 and t[0] > 1
    assert ts["after"]["nll"] < ts["before"]["nll"] and ts["after"]["ece"] < ts["before"]["ece"]


def test_human_label_figures_against_a_direct_computation(r20):
    """Reference: the CIFAR-10H probabilities applied by hand to the same logits."""
    ds = load_dataset("zoo:cifar10-lossless:test")
    r = evaluate(r20, ds, probes=["accuracy", "calibration"], progress=False)
    p = Engine(r20, progress=False).predict(ds)
    h = torch.as_tensor(ds.soft_labels)
    pred = p.logits.argmax(1)
    assert r["probes"]["accuracy"]["human"]["top1_vs_human_majority"] == pytest.approx(
        (pred == h.argmax(1)).double().mean().item())
    ce = -(h * torch.log_softmax(p.logits.double(), 1)).sum(1).mean().item()
    assert r["probes"]["calibration"]["human"]["cross_entropy"] == pytest.approx(ce, rel=1e-9)


def test_probe_registry_and_parameters():
    assert {"accuracy", "calibration"} <= set(PROBES)
    with pytest.raises(TypeError, match="no parameter"):
        get_probe("calibration", bins=10)
    with pytest.raises(KeyError, match="known probes"):
        get_probe("nope")
    assert get_probe("calibration", n_bins=20).param_dict()["n_bins"] == 20
