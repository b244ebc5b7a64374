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


def _random_task(n: int, seed: int = 0, scale: float = 50.0):
    """Labels independent of the images and a confidently wrong-headed model: nothing to calibrate on."""
    import numpy as np

    from helpers import tiny_classifier
    from imgclass.data.base import ArrayDataset
    from imgclass.data.labels import LabelSpace

    g = np.random.default_rng(seed)
    names = [f"c{i}" for i in range(10)]
    ds = ArrayDataset(g.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), g.integers(0, 10, n),
                      LabelSpace.from_names(names), spec=f"random{n}")
    clf = tiny_classifier(names, seed=seed)
    with torch.no_grad():
        clf.model.fc.weight.mul_(scale)
    return clf, ds


def test_temperature_at_its_bound_is_a_warning_in_the_summary_and_the_report(tmp_path):
    """Invariant: with labels independent of the inputs the NLL-optimal temperature is as large as allowed (uniform
    probabilities): T lands at the search bound and the run says so, in results.json and in report.html."""
    clf, ds = _random_task(400)
    r = evaluate(clf, ds, probes=["calibration"], out=tmp_path, progress=False, workers=0)
    c = r["probes"]["calibration"]
    assert c["temperature"] == pytest.approx(20.0, rel=1e-3)
    assert any("search bound" in w for w in c["warnings"])
    assert any(w.startswith("calibration: the temperature sits at its search bound") for w in r["warnings"])
    assert "search bound" in (tmp_path / "report.html").read_text()


@pytest.mark.parametrize("n,seed", [(16, 0), (16, 1), (24, 2), (600, 3)])
def test_temperature_scaling_warns_exactly_when_it_cannot_be_trusted(n, seed):
    """Invariant: a warning appears exactly when T hits a bound, when scaling made the held-out ECE worse, or when
    the fit split is under 200 samples; the numbers it quotes are the result's own."""
    clf, ds = _random_task(n, seed, scale=3.0)
    c = evaluate(clf, ds, probes=["calibration"], progress=False, workers=0)["probes"]["calibration"]
    ts = c["temperature_scaling"]
    worse = ts["after"]["ece"] > ts["before"]["ece"]
    at_bound = abs(c["temperature"] - 20) < 0.2 or abs(c["temperature"] - 0.05) < 5e-4
    assert bool(c["warnings"]) == (worse or at_bound or ts["n_fit"] < 200), c["warnings"]
    if worse:
        assert any(f"{ts['before']['ece']:.4f} -> {ts['after']['ece']:.4f}" in w for w in c["warnings"])


def test_limit_above_the_dataset_size_warns():
    clf, ds = _random_task(20)
    r = evaluate(clf, ds, probes=["accuracy"], limit=5000, progress=False, workers=0)
    assert r["probes"]["accuracy"]["n_evaluated"] == 20
    assert "--limit 5000 is not below the dataset's 20 samples: every sample was evaluated" in r["warnings"]


@pytest.mark.parametrize("probe, param, given, want", [
    ("adaptation", "methods", "norm", ("norm",)),
    ("adaptation", "methods", "norm, tent", ("norm", "tent")),
    ("explanations", "methods", "saliency", ("saliency",)),
    ("tta", "views", "flip", ("flip",)),
    ("corruptions", "corruptions", "fog", "fog"),  # the probe takes a string ("common", "all", "fog,frost")
])
def test_a_list_parameter_given_as_one_string_is_a_list_of_names(probe, param, given, want):
    """Invariant (a bug seen with `--set adaptation.methods=norm`, which ran methods 'n', 'o', 'r', 'm'): a string
    given for a tuple parameter is split at commas, never into characters."""
    from imgclass.probes import get_probe

    assert getattr(get_probe(probe, **{param: given}).params, param) == want
