"""Metrics against references: torchmetrics (ECE), scikit-learn (P/R/F1, confusion), loops, and invariants."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from imgclass import metrics


def _random_case(seed: int, n: int, c: int, scale: float):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g) * scale
    labels = torch.randint(0, c, (n,), generator=g)
    # make part of the predictions right so accuracy is not ~1/c
    right = torch.rand(n, generator=g) < 0.6
    logits[right, labels[right]] += 2 * scale
    return logits, labels


@pytest.mark.parametrize("seed,n,c,scale", [(0, 1000, 10, 1.0), (1, 5000, 100, 3.0), (2, 37, 3, 0.3),
                                            (3, 2000, 1000, 5.0), (4, 500, 2, 30.0)])
def test_ece_equals_torchmetrics(seed, n, c, scale):
    """Reference: torchmetrics MulticlassCalibrationError(n_bins=15, norm='l1'), same probabilities, to 1e-6."""
    from torchmetrics.classification import MulticlassCalibrationError

    logits, labels = _random_case(seed, n, c, scale)
    probs = torch.softmax(logits, 1)
    ref = MulticlassCalibrationError(num_classes=c, n_bins=15, norm="l1")(probs, labels).item()
    assert metrics.ece(probs, labels, 15) == pytest.approx(ref, abs=1e-6)
    ref_max = MulticlassCalibrationError(num_classes=c, n_bins=15, norm="max")(probs, labels).item()
    assert metrics.max_calibration_error(probs, labels, 15) == pytest.approx(ref_max, abs=1e-6)


def test_ece_confidence_exactly_one_and_bin_edges():
    """Reference: torchmetrics on confidences that sit on bin boundaries and at exactly 1.0."""
    from torchmetrics.classification import MulticlassCalibrationError

    probs = torch.tensor([[1.0, 0.0], [0.6, 0.4], [0.4, 0.6], [2 / 3, 1 / 3], [0.8, 0.2], [0.5, 0.5]])
    labels = torch.tensor([0, 1, 1, 0, 0, 1])
    ref = MulticlassCalibrationError(num_classes=2, n_bins=15, norm="l1")(probs, labels).item()
    assert metrics.ece(probs, labels) == pytest.approx(ref, abs=1e-7)


def _classwise_ece_loop(p: np.ndarray, y: np.ndarray, n_bins: int) -> float:
    edges = np.linspace(0, 1, n_bins + 1)
    per = []
    for k in range(p.shape[1]):
        b = np.searchsorted(edges, p[:, k], side="right") - 1
        tot = 0.0
        for j in np.unique(b):
            m = b == j
            tot += abs((y[m] == k).mean() - p[m, k].mean()) * m.sum() / len(y)
        per.append(tot)
    return float(np.mean(per))


def test_classwise_ece_equals_reference_loop():
    logits, labels = _random_case(5, 700, 7, 2.0)
    p = torch.softmax(logits.double(), 1)
    assert metrics.classwise_ece(p, labels, 15) == pytest.approx(_classwise_ece_loop(p.numpy(), labels.numpy(), 15),
                                                                 abs=1e-12)


def test_adaptive_ece_equal_mass_reference():
    logits, labels = _random_case(6, 999, 5, 2.0)
    p = torch.softmax(logits.double(), 1)
    conf, pred = p.max(1)
    order = np.argsort(conf.numpy(), kind="stable")
    parts = np.array_split(order, 15)
    ref = sum(abs((pred.numpy()[q] == labels.numpy()[q]).mean() - conf.numpy()[q].mean()) * len(q) / 999 for q in parts)
    assert metrics.adaptive_ece(p, labels, 15) == pytest.approx(ref, abs=1e-12)


def test_nll_and_brier_references():
    logits, labels = _random_case(7, 300, 4, 1.5)
    ref_nll = torch.nn.functional.cross_entropy(logits.double(), labels).item()
    assert metrics.nll(logits, labels) == pytest.approx(ref_nll, rel=1e-12)
    p = torch.softmax(logits.double(), 1).numpy()
    onehot = np.eye(4)[labels.numpy()]
    assert metrics.brier(p, labels) == pytest.approx(((p - onehot) ** 2).sum(1).mean(), rel=1e-12)


def test_confusion_and_macro_scores_equal_sklearn():
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    from imgclass.data.base import ArrayDataset
    from imgclass.data.labels import LabelSpace
    from imgclass.engine import Predictions
    from imgclass.probes.accuracy import AccuracyProbe

    logits, labels = _random_case(8, 400, 6, 1.0)
    pred = logits.argmax(1)
    assert np.array_equal(metrics.confusion_matrix(labels, pred, 6), confusion_matrix(labels, pred, labels=range(6)))

    class Ctx:
        dataset = ArrayDataset(np.zeros((400, 2, 2, 3), np.uint8), labels.numpy(), LabelSpace.from_names(list("abcdef")))

        def predictions(self):
            return Predictions(logits, labels, np.arange(400))

        def record_samples(self, probe, indices, **arrays):  # a stand-in context keeps no per-sample outputs
            pass

    r = AccuracyProbe().run(Ctx())
    p, rc, f, _ = precision_recall_fscore_support(labels, pred, average="macro", zero_division=0)
    assert r["macro_precision"] == pytest.approx(p) and r["macro_recall"] == pytest.approx(rc)
    assert r["macro_f1"] == pytest.approx(f)
    assert r["top1"] == pytest.approx((pred == labels).double().mean().item())
    top5 = logits.topk(5, 1).indices
    assert r["top5"] == pytest.approx((top5 == labels[:, None]).any(1).double().mean().item())


def test_temperature_fit_minimises_nll():
    """Invariant: the fitted T is a minimum of NLL(T); overconfident logits get T > 1."""
    logits, labels = _random_case(9, 2000, 10, 1.0)
    logits = logits * 4  # overconfident
    t = metrics.fit_temperature(logits, labels)
    assert t > 1
    best = metrics.nll(logits / t, labels)
    for f in (0.9, 0.99, 1.01, 1.1):
        assert best <= metrics.nll(logits / (t * f), labels) + 1e-12


@st.composite
def prob_cases(draw):
    n = draw(st.integers(1, 60))
    c = draw(st.integers(2, 8))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.floats(0.01, 50))
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g, dtype=torch.float64) * scale
    labels = torch.randint(0, c, (n,), generator=g)
    return logits, labels


@settings(max_examples=60, deadline=None)
@given(prob_cases())
def test_calibration_metric_properties(case):
    """Properties: ranges, permutation invariance, and zero error for perfect one-hot predictions."""
    logits, labels = case
    p = torch.softmax(logits, 1)
    for fn in (metrics.ece, metrics.adaptive_ece, metrics.classwise_ece, metrics.max_calibration_error):
        v = fn(p, labels)
        assert -1e-12 <= v <= 1 + 1e-12
    assert 0 <= metrics.brier(p, labels) <= 2 + 1e-12
    assert metrics.nll(logits, labels) >= 0
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    assert metrics.ece(p[perm], labels[perm]) == pytest.approx(metrics.ece(p, labels), abs=1e-12)
    assert metrics.classwise_ece(p[perm], labels[perm]) == pytest.approx(metrics.classwise_ece(p, labels), abs=1e-12)
    perfect = torch.nn.functional.one_hot(labels, p.shape[1]).double()
    assert metrics.ece(perfect, labels) == 0
    assert metrics.classwise_ece(perfect, labels) == 0
    assert metrics.brier(perfect, labels) == 0
