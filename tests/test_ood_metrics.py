"""imgclass.ood.metrics against pytorch-ood 0.4.0 (``pytorch_ood.metrics.OODMetrics``), scikit-learn
(``roc_auc_score``, ``average_precision_score``, ``precision_recall_curve`` + ``auc``, ``roc_curve``), a direct
loop over the definitions of AURC (Geifman et al., 2019) and of accuracy at coverage (SAT, Huang et al., 2020),
Geifman et al.'s closed form of the optimal AURC, and hand-computed small cases.

pytorch-ood treats OOD as positive with larger *outlier* scores; our scores are higher = more ID. Two mappings:
``-scores`` with OOD labels < 0 gives AUROC, AUPR-IN, AUPR-OUT and its FPR95TPR (OOD positive, our
``fpr95_ood_positive``); ``scores`` with ID labels < 0 makes ID its "positive" class and its FPR95TPR our ``fpr95``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from imgclass.errors import UsageError
from imgclass.ood.metrics import (accuracy_at_coverage, aurc, excess_aurc, ood_metrics, optimal_aurc,
                                  risk_coverage)

TOL = 1e-12

# tie-heavy (a few integer levels) and continuous scores
_tied = st.lists(st.integers(-3, 3).map(float), min_size=1, max_size=40)
_cont = st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=40)
_scores = st.one_of(_tied, _cont)


def _pytorch_ood(outlier_scores: np.ndarray, is_positive: np.ndarray) -> dict:
    import torch
    from pytorch_ood.metrics import OODMetrics

    labels = torch.where(torch.as_tensor(is_positive), -1, 0)
    m = OODMetrics()
    m.update(torch.as_tensor(outlier_scores, dtype=torch.float64), labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # AUTC on constant scores
        return m.compute()


@pytest.mark.filterwarnings("ignore")
@settings(max_examples=60, deadline=None)
@given(id_s=_scores, ood_s=_scores)
def test_matches_pytorch_ood(id_s, ood_s):
    """pytorch_ood.metrics.OODMetrics, both mappings (see module docstring)."""
    pytest.importorskip("pytorch_ood")
    ours = ood_metrics(id_s, ood_s)
    s = np.concatenate([id_s, ood_s])
    is_ood = np.r_[np.zeros(len(id_s), bool), np.ones(len(ood_s), bool)]
    ref = _pytorch_ood(-s, is_ood)
    assert ours["auroc"] == pytest.approx(ref["AUROC"], abs=TOL)
    assert ours["aupr_in"] == pytest.approx(ref["AUPR-IN"], abs=TOL)
    assert ours["aupr_out"] == pytest.approx(ref["AUPR-OUT"], abs=TOL)
    assert ours["fpr95_ood_positive"] == pytest.approx(ref["FPR95TPR"], abs=TOL)
    swapped = _pytorch_ood(s, ~is_ood)  # ID as pytorch-ood's positive class
    assert ours["fpr95"] == pytest.approx(swapped["FPR95TPR"], abs=TOL)
    assert ours["aupr_in"] == pytest.approx(swapped["AUPR-OUT"], abs=TOL)
    assert ours["auroc"] == pytest.approx(swapped["AUROC"], abs=TOL)


def _sk_fpr_at(y, s, tpr=0.95):
    fpr, tpr_curve, _ = roc_curve(y, s, drop_intermediate=False)
    return fpr[np.argmax(tpr_curve >= tpr)]


@settings(max_examples=80, deadline=None)
@given(id_s=_scores, ood_s=_scores)
def test_matches_sklearn(id_s, ood_s):
    """sklearn roc_auc_score, average_precision_score, auc(precision_recall_curve) and roc_curve (OpenOOD's way)."""
    ours = ood_metrics(id_s, ood_s)
    s = np.concatenate([id_s, ood_s])
    y_id = np.r_[np.ones(len(id_s)), np.zeros(len(ood_s))]
    assert ours["auroc"] == pytest.approx(roc_auc_score(y_id, s), abs=TOL)
    assert ours["ap_in"] == pytest.approx(average_precision_score(y_id, s), abs=TOL)
    assert ours["ap_out"] == pytest.approx(average_precision_score(1 - y_id, -s), abs=TOL)
    p, r, _ = precision_recall_curve(y_id, s)
    assert ours["aupr_in"] == pytest.approx(auc(r, p), abs=TOL)
    p, r, _ = precision_recall_curve(1 - y_id, -s)
    assert ours["aupr_out"] == pytest.approx(auc(r, p), abs=TOL)
    assert ours["fpr95"] == pytest.approx(_sk_fpr_at(y_id, s), abs=TOL)
    assert ours["fpr95_ood_positive"] == pytest.approx(_sk_fpr_at(1 - y_id, -s), abs=TOL)


def test_hand_computed():
    """By hand: ID [3, 2, 1], OOD [0, 1]: 5.5 of 6 pairs ordered; keeping all 3 ID (threshold 1) passes 1 of 2
    OOD; flagging both OOD (threshold -1 on -score) flags 1 of 3 ID. AP-IN = (1 + 1 + 3/4) / 3."""
    m = ood_metrics([3.0, 2.0, 1.0], [0.0, 1.0])
    assert m["positive"] == "id"
    assert m["auroc"] == pytest.approx(5.5 / 6)
    assert m["fpr95"] == pytest.approx(0.5)
    assert m["fpr95_ood_positive"] == pytest.approx(1 / 3)
    assert m["ap_in"] == pytest.approx((1 + 1 + 0.75) / 3)
    # OOD positive, ranked by -score: 0 (OOD) first, then {1 (ID), 1 (OOD)} tied: precisions 1, 2/3 at recalls 1/2, 1
    assert m["ap_out"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # trapezoid: (0,1)-(1/2,1)-(1,2/3)
    assert m["aupr_out"] == pytest.approx(0.5 + 0.5 * (1 + 2 / 3) / 2)
    assert (m["n_id"], m["n_ood"]) == (3, 2)


def test_invariants():
    """Perfect separation is 1 / 0, reversed is 0 / 1, identical distributions give AUROC about 0.5."""
    perfect = ood_metrics([5.0, 6.0, 7.0], [1.0, 2.0])
    assert (perfect["auroc"], perfect["aupr_in"], perfect["aupr_out"], perfect["fpr95"]) == (1.0, 1.0, 1.0, 0.0)
    reverse = ood_metrics([1.0, 2.0], [5.0, 6.0, 7.0])
    assert reverse["auroc"] == 0.0 and reverse["fpr95"] == 1.0 and reverse["fpr95_ood_positive"] == 1.0
    const = ood_metrics([0.3] * 5, [0.3] * 7)
    assert const["auroc"] == 0.5 and const["fpr95"] == 1.0
    assert const["aupr_in"] == pytest.approx((1 + 5 / 12) / 2)
    rng = np.random.default_rng(0)
    same = ood_metrics(rng.normal(size=20_000), rng.normal(size=20_000))
    assert same["auroc"] == pytest.approx(0.5, abs=0.015)
    assert ood_metrics([1.0], [0.0], tpr=0.9)["fpr90"] == 0.0


@settings(max_examples=50, deadline=None)
@given(id_s=_scores, ood_s=_scores, seed=st.integers(0, 1000))
def test_order_and_shift_invariance(id_s, ood_s, seed):
    """Invariance to sample order and to a monotone map of the scores (the reference is the unpermuted call)."""
    ref = ood_metrics(id_s, ood_s)
    rng = np.random.default_rng(seed)
    out = ood_metrics(np.tanh(rng.permutation(np.array(id_s) / 1e3)), np.tanh(rng.permutation(np.array(ood_s) / 1e3)))
    for k in ("auroc", "aupr_in", "aupr_out", "ap_in", "ap_out", "fpr95", "fpr95_ood_positive"):
        assert out[k] == pytest.approx(ref[k], abs=1e-12)


# ---- selective prediction ----------------------------------------------------------------------------------------


def _aurc_loop(conf, correct) -> float:
    """Definition: each sample's risk is the error rate of all samples with confidence >= its own; AURC = mean."""
    conf, correct = np.asarray(conf, float), np.asarray(correct, bool)
    total = 0.0
    for c in conf:
        acc = conf >= c
        total += np.sum(~correct[acc]) / np.sum(acc)
    return total / len(conf)


def _geifman_rc(conf, correct) -> float:
    """Geifman et al. (2019)'s RC curve without ties: (1/n) * sum_k errors(top k) / k, sorted by confidence."""
    order = np.argsort(-np.asarray(conf, float), kind="stable")
    err = ~np.asarray(correct, bool)[order]
    return float(np.mean(np.cumsum(err) / np.arange(1, len(err) + 1)))


_sel = st.integers(1, 40).flatmap(lambda n: st.tuples(
    st.one_of(st.lists(st.integers(0, 4).map(float), min_size=n, max_size=n),
              st.lists(st.floats(0, 1, allow_nan=False), min_size=n, max_size=n)),
    st.lists(st.booleans(), min_size=n, max_size=n)))


@settings(max_examples=100, deadline=None)
@given(data=_sel)
def test_aurc_against_loop(data):
    """AURC equals the per-sample loop (ties together), and Geifman's sorted sum when there are no ties."""
    conf, correct = data
    a = aurc(conf, correct)
    assert a == pytest.approx(_aurc_loop(conf, correct), abs=TOL)
    if len(set(conf)) == len(conf):
        assert a == pytest.approx(_geifman_rc(conf, correct), abs=TOL)
    opt = optimal_aurc(correct)
    assert opt == pytest.approx(_geifman_rc(np.asarray(correct, float), correct), abs=TOL)
    assert -TOL <= opt <= a + TOL and a <= 1 + TOL
    assert excess_aurc(conf, correct) == pytest.approx(a - opt, abs=TOL)
    assert excess_aurc(conf, correct) >= -TOL
    cov, risk = risk_coverage(conf, correct)
    assert np.all(np.diff(cov) > 0) and cov[-1] == 1.0
    assert risk[-1] == pytest.approx(1 - np.mean(correct), abs=TOL)
    assert np.all((risk >= 0) & (risk <= 1))


def test_aurc_hand_and_bounds():
    """By hand: conf [.9, .8, .8, .1], correct [1, 0, 1, 0]: risks 0 at 1/4, 1/3 at 3/4, 1/2 at 1 -> 0.5/3 + 0.125;
    optimum (1/4) * (1/3 + 2/4). Constant confidence gives the error rate; a perfect ranking has E-AURC 0."""
    conf, correct = [0.9, 0.8, 0.8, 0.1], [1, 0, 1, 0]
    cov, risk = risk_coverage(conf, correct)
    np.testing.assert_allclose(cov, [0.25, 0.75, 1.0])
    np.testing.assert_allclose(risk, [0.0, 1 / 3, 0.5])
    assert aurc(conf, correct) == pytest.approx(0.5 / 3 + 0.125)
    assert optimal_aurc(correct) == pytest.approx((1 / 3 + 0.5) / 4)
    assert aurc([0.5] * 10, [1] * 7 + [0] * 3) == pytest.approx(0.3)
    correct = np.r_[np.ones(30, bool), np.zeros(10, bool)]
    assert excess_aurc(np.linspace(1, 0, 40), correct) == pytest.approx(0.0, abs=TOL)
    assert aurc(np.linspace(0, 1, 40), correct) > 0.25  # errors ranked first: at least the error rate
    assert aurc([0.1, 0.2], [1, 1]) == 0.0 and aurc([0.1, 0.2], [0, 0]) == 1.0


def test_optimal_aurc_closed_form():
    """Geifman et al. (2019), AURC(kappa*) ~= r + (1 - r) ln(1 - r) for large n."""
    for r in (0.05, 0.2, 0.5):
        n = 200_000
        correct = np.arange(n) >= round(r * n)
        assert optimal_aurc(correct) == pytest.approx(r + (1 - r) * math.log(1 - r), abs=1e-4)


def _sat_acc_at(conf, correct, coverages):
    """SAT (Huang et al., 2020) eval_converage: threshold = sorted-descending conf[int(c * n) - 1], accept >=."""
    conf, correct = np.asarray(conf, float), np.asarray(correct, bool)
    ranked = np.sort(conf)[::-1]
    out = {}
    for c in coverages:
        mask = conf >= ranked[int(c * len(conf)) - 1]
        out[c] = 1.0 - np.sum(~correct & mask) / np.sum(mask)
    return out


@settings(max_examples=60, deadline=None)
@given(m=st.integers(1, 5), data=st.data())
def test_accuracy_at_coverage_against_sat(m, data):
    """SAT's accuracy at coverage (n a multiple of 20, so c * n is whole), tie-heavy and continuous confidences."""
    n = 20 * m
    conf = data.draw(st.one_of(st.lists(st.integers(0, 5).map(float), min_size=n, max_size=n),
                               st.lists(st.floats(0, 1, allow_nan=False), min_size=n, max_size=n)))
    correct = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    covs = (0.5, 0.8, 0.9, 0.95, 1.0)
    ours = accuracy_at_coverage(conf, correct, coverages=covs)
    ref = _sat_acc_at(conf, correct, covs)
    for c in covs:
        assert ours[c] == pytest.approx(ref[c], abs=TOL)
    assert ours[1.0] == pytest.approx(np.mean(correct), abs=TOL)


def test_accuracy_at_coverage_default_and_hand():
    """By hand: 10 samples, the 8 most confident hold 1 error; the 9th is an error; the 10th is correct."""
    conf = np.arange(10, 0, -1) / 10
    correct = [1, 1, 0, 1, 1, 1, 1, 1, 0, 1]
    assert accuracy_at_coverage(conf, correct) == pytest.approx({0.8: 7 / 8, 0.9: 7 / 9, 0.95: 8 / 10})


@pytest.mark.parametrize("call", [
    lambda: ood_metrics([], [1.0]),
    lambda: ood_metrics([1.0, float("nan")], [1.0]),
    lambda: ood_metrics([1.0], [0.0], tpr=1.5),
    lambda: aurc([0.1, 0.2], [1]),
    lambda: aurc([0.1, 0.2], [1, 2]),
    lambda: aurc([], []),
    lambda: accuracy_at_coverage([0.1, 0.2], [1, 0], coverages=(0.0,)),
    lambda: optimal_aurc([]),
])
def test_usage_errors(call):
    """Bad input raises imgclass.errors.UsageError (the reference is the design's error contract)."""
    with pytest.raises(UsageError):
        call()


def test_fpr95_at_exactly_95_percent():
    """By hand: 20 ID scores 1..20 and OOD at 1.5: threshold 2 keeps exactly 19/20 = 95% of ID and passes no OOD;
    the same numbers from pytorch-ood's FPR95TPR (ID as its positive class) and sklearn's roc_curve."""
    id_s, ood_s = np.arange(1.0, 21.0), np.array([1.5, 0.0])
    assert ood_metrics(id_s, ood_s)["fpr95"] == 0.0
    assert ood_metrics(id_s, np.array([1.5, 2.0]))["fpr95"] == 0.5
    s = np.r_[id_s, ood_s]
    y_id = np.r_[np.ones(20), np.zeros(2)]
    assert _sk_fpr_at(y_id, s) == 0.0
    pytest.importorskip("pytorch_ood")
    assert _pytorch_ood(s, y_id.astype(bool))["FPR95TPR"] == 0.0
