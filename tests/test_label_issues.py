"""Confident learning (imgclass.diagnose.label_issues) against cleanlab 2.9.0 and the published CIFAR-10 count.

The data: the cross-validated probabilities of the CIFAR-10 test set published with "Pervasive Label Errors in
Test Sets" (Northcutt, Athalye, Mueller 2021) and the official test labels in official order (from the mirror's
test-official-order.txt). cleanlab runs with n_jobs=1 (its results do not depend on n_jobs; this keeps its
process pool out of the suite).
"""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pytest

from conftest import mirror_file
from imgclass.diagnose import label_issues as li
from imgclass.errors import UnknownNameError, UsageError

cleanlab_filter = pytest.importorskip("cleanlab.filter")
cleanlab_count = pytest.importorskip("cleanlab.count")
cleanlab_rank = pytest.importorskip("cleanlab.rank")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def cl_find(labels, probs, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cleanlab_filter.find_label_issues(labels, probs, n_jobs=1, **kw)


@pytest.fixture(scope="module")
def cifar():
    """(labels, probs) of the 10,000 CIFAR-10 test images in official order."""
    order = mirror_file("cifar10-jpeg/test-official-order.txt").read_text().split()
    labels = np.array([CIFAR10.index(member.split("/")[1]) for member in order])
    probs = np.load(mirror_file("cifar10-label-errors/cifar10_test_set_pyx.npy"))
    assert probs.shape == (10_000, 10) and len(labels) == 10_000
    return labels, probs


# -- the published probabilities ------------------------------------------------------------------------------


def test_cifar10_default_rule_finds_the_published_284(cifar):
    """Reference: 284 label issues for the CIFAR-10 test set with cleanlab's default rule (prune_by_noise_rate),
    the number published by cleanlab/label-errors; also the mirror README's 92.94 % argmax agreement."""
    labels, probs = cifar
    assert (probs.argmax(1) == labels).mean() == pytest.approx(0.9294)
    assert li.find_label_issues(labels, probs).sum() == 284


@pytest.mark.parametrize("filter_by", li.FILTER_BY)
def test_cifar10_mask_and_rankings_equal_cleanlab(cifar, filter_by):
    """Reference: cleanlab.filter.find_label_issues (mask and return_indices_ranked_by for every ranking)."""
    labels, probs = cifar
    np.testing.assert_array_equal(li.find_label_issues(labels, probs, filter_by=filter_by),
                                  cl_find(labels, probs, filter_by=filter_by))
    for rank_by in li.RANK_BY:
        np.testing.assert_array_equal(
            li.find_label_issues(labels, probs, filter_by=filter_by, return_indices_ranked_by=rank_by),
            cl_find(labels, probs, filter_by=filter_by, return_indices_ranked_by=rank_by))


@pytest.mark.parametrize("filter_by", ["prune_by_noise_rate", "prune_by_class", "both"])
@pytest.mark.parametrize("frac_noise,min_examples", [(1.0, 0), (0.5, 1), (0.9, 50), (1.0, 990), (0.3, 999)])
def test_cifar10_frac_noise_and_min_examples_equal_cleanlab(cifar, filter_by, frac_noise, min_examples):
    """Reference: cleanlab.filter.find_label_issues with frac_noise and min_examples_per_class."""
    labels, probs = cifar
    kw = dict(filter_by=filter_by, frac_noise=frac_noise, min_examples_per_class=min_examples)
    np.testing.assert_array_equal(li.find_label_issues(labels, probs, **kw), cl_find(labels, probs, **kw))


@pytest.mark.parametrize("filter_by", ["prune_by_noise_rate", "prune_by_class", "both"])
def test_cifar10_num_to_remove_per_class_equals_cleanlab(cifar, filter_by):
    """Reference: cleanlab.filter.find_label_issues with num_to_remove_per_class."""
    labels, probs = cifar
    remove = [5, 0, 1, 10, 3, 3, 30, 3, 0, 7]
    ours = li.find_label_issues(labels, probs, filter_by=filter_by, num_to_remove_per_class=remove)
    np.testing.assert_array_equal(ours, cl_find(labels, probs, filter_by=filter_by, num_to_remove_per_class=remove))


def test_cifar10_confident_joint_joint_and_noise_matrices_equal_cleanlab(cifar):
    """Reference: cleanlab.count.compute_confident_joint (calibrated and not), get_confident_thresholds,
    estimate_joint and estimate_latent."""
    labels, probs = cifar
    for calibrate in (True, False):
        ours = li.confident_joint(labels, probs, calibrate=calibrate)
        ref = cleanlab_count.compute_confident_joint(labels, probs, calibrate=calibrate)
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(li.confident_thresholds(labels, probs),
                               cleanlab_count.get_confident_thresholds(labels, probs), rtol=0, atol=1e-12)
    np.testing.assert_allclose(li.estimate_joint(labels, probs), cleanlab_count.estimate_joint(labels, probs),
                               rtol=0, atol=1e-12)
    ref = cleanlab_count.estimate_latent(cleanlab_count.compute_confident_joint(labels, probs), labels)
    for a, b in zip(li.noise_matrix(labels, probs), ref):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", li.RANK_BY)
def test_cifar10_label_quality_scores_equal_cleanlab(cifar, method):
    """Reference: cleanlab.rank.get_label_quality_scores."""
    labels, probs = cifar
    np.testing.assert_allclose(li.label_quality_scores(labels, probs, method=method),
                               cleanlab_rank.get_label_quality_scores(labels, probs, method=method),
                               rtol=0, atol=1e-12)


def test_cifar10_label_issues_bundle(cifar):
    """Reference: cleanlab (mask, ranking, joint, estimate_latent) and a Counter over (given, argmax) of the
    flagged examples for the per-pair counts."""
    labels, probs = cifar
    r = li.label_issues(labels, probs, rank_by="normalized_margin")
    np.testing.assert_array_equal(r.mask, cl_find(labels, probs))
    np.testing.assert_array_equal(r.ranked, cl_find(labels, probs, return_indices_ranked_by="normalized_margin"))
    np.testing.assert_array_equal(r.suggested, probs.argmax(1))
    np.testing.assert_array_equal(r.confident_joint, cleanlab_count.compute_confident_joint(labels, probs))
    np.testing.assert_allclose(r.joint, cleanlab_count.estimate_joint(labels, probs), rtol=0, atol=1e-12)
    py, nm, inv = cleanlab_count.estimate_latent(r.confident_joint, labels)
    np.testing.assert_allclose(r.noise_matrix, nm, rtol=0, atol=1e-12)
    np.testing.assert_allclose(r.inverse_noise_matrix, inv, rtol=0, atol=1e-12)
    np.testing.assert_allclose(r.py, py, rtol=0, atol=1e-12)
    assert r.n_issues == 284 and sum(r.pair_counts.values()) == 284
    assert r.pair_counts == dict(Counter(zip(labels[r.mask].tolist(), probs.argmax(1)[r.mask].tolist())))
    counts = list(r.pair_counts.values())
    assert counts == sorted(counts, reverse=True)


# -- random probabilities ----------------------------------------------------------------------------------------


@st.composite
def noisy_data(draw):
    """Dirichlet probabilities, labels drawn from them then partly flipped, every class present; sometimes
    probabilities on a 1/20 grid (many ties) and sometimes float32."""
    k = draw(st.integers(2, 8))
    n = draw(st.integers(max(20, k), 300))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    alpha = draw(st.sampled_from([0.1, 0.5, 1.0, 3.0]))
    probs = rng.dirichlet(np.full(k, alpha), size=n)
    if draw(st.booleans()):  # a grid: ties everywhere
        probs = np.stack([rng.multinomial(20, p) for p in probs]) / 20.0
    labels = np.array([rng.choice(k, p=p) for p in probs])
    flip = rng.random(n) < draw(st.sampled_from([0.0, 0.1, 0.3]))
    labels[flip] = rng.integers(0, k, flip.sum())
    labels[rng.choice(n, k, replace=False)] = np.arange(k)  # every class present
    if draw(st.booleans()):
        probs = probs.astype(np.float32)
    return labels, probs


@settings(max_examples=25, deadline=None)
@given(data=noisy_data())
def test_random_masks_and_rankings_equal_cleanlab(data):
    """Reference: cleanlab.filter.find_label_issues, every filter_by rule and every ranking."""
    labels, probs = data
    for filter_by in li.FILTER_BY:
        mask = li.find_label_issues(labels, probs, filter_by=filter_by)
        np.testing.assert_array_equal(mask, cl_find(labels, probs, filter_by=filter_by), err_msg=filter_by)
        for rank_by in li.RANK_BY:
            np.testing.assert_array_equal(
                li.find_label_issues(labels, probs, filter_by=filter_by, return_indices_ranked_by=rank_by),
                cl_find(labels, probs, filter_by=filter_by, return_indices_ranked_by=rank_by),
                err_msg=f"{filter_by} ranked by {rank_by}")


@settings(max_examples=25, deadline=None)
@given(data=noisy_data(), frac_noise=st.sampled_from([0.2, 0.5, 0.8, 1.0]), min_examples=st.integers(0, 40))
def test_random_pruning_parameters_equal_cleanlab(data, frac_noise, min_examples):
    """Reference: cleanlab.filter.find_label_issues with frac_noise and min_examples_per_class."""
    labels, probs = data
    for filter_by in ("prune_by_noise_rate", "prune_by_class", "both"):
        kw = dict(filter_by=filter_by, frac_noise=frac_noise, min_examples_per_class=min_examples)
        np.testing.assert_array_equal(li.find_label_issues(labels, probs, **kw), cl_find(labels, probs, **kw),
                                      err_msg=filter_by)


@settings(max_examples=25, deadline=None)
@given(data=noisy_data())
def test_random_counts_and_scores_equal_cleanlab(data):
    """Reference: cleanlab.count.compute_confident_joint / estimate_joint / estimate_latent and
    cleanlab.rank.get_label_quality_scores."""
    labels, probs = data
    cj = cleanlab_count.compute_confident_joint(labels, probs)
    np.testing.assert_array_equal(li.confident_joint(labels, probs), cj)
    np.testing.assert_array_equal(li.confident_joint(labels, probs, calibrate=False),
                                  cleanlab_count.compute_confident_joint(labels, probs, calibrate=False))
    np.testing.assert_allclose(li.estimate_joint(labels, probs), cleanlab_count.estimate_joint(labels, probs),
                               rtol=0, atol=1e-12)
    for a, b in zip(li.noise_matrix(labels, probs), cleanlab_count.estimate_latent(cj, labels)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    for method in li.RANK_BY:
        np.testing.assert_array_equal(li.label_quality_scores(labels, probs, method=method),
                                      cleanlab_rank.get_label_quality_scores(labels, probs, method=method))


# -- bad input ---------------------------------------------------------------------------------------------------


def _good():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.5, 0.4, 0.1]])
    return np.array([0, 1, 2, 0]), probs


def _bad(change):
    labels, probs = _good()
    return change(labels, probs)


BAD = {
    "1-D probabilities": (lambda y, p: (y, p[:, 0]), "2-D"),
    "rows != labels": (lambda y, p: (y[:3], p), "4 rows but 3 labels"),
    "row not summing to 1": (lambda y, p: (y, np.vstack([p[:2], [[0.5, 0.2, 0.1]], p[3:]])), "row 2 sums to 0.8"),
    "logits": (lambda y, p: (y, np.log(p)), "outside [0, 1]"),
    "NaN": (lambda y, p: (y, np.vstack([p[:1], [[np.nan, 0.5, 0.5]], p[2:]])), "row 1 is not finite"),
    "label out of range": (lambda y, p: (np.array([0, 1, 3, 2]), p), "label 3 at index 2 is out of range"),
    "negative label": (lambda y, p: (np.array([0, -1, 2, 1]), p), "label -1 at index 1"),
    "class missing": (lambda y, p: (np.array([0, 0, 2, 0]), p), "class 1 of 3 never appear"),
    "fractional labels": (lambda y, p: (np.array([0, 1.5, 2, 0]), p), "integer class indices"),
    "one class": (lambda y, p: (np.zeros(4, int), np.ones((4, 1))), "at least 2 classes"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_one_line_usage_error(case):
    """Reference: the validation contract of check_probs (one-line UsageError naming the problem)."""
    change, message = BAD[case]
    labels, probs = _bad(change)
    for call in (li.find_label_issues, li.confident_joint, li.label_issues, li.label_quality_scores):
        with pytest.raises(UsageError) as e:
            call(labels, probs)
        assert message in str(e.value) and "\n" not in str(e.value)


def test_check_probs_names_its_source_and_class_count():
    """Reference: the validation contract of check_probs (source in the message, n_classes checked)."""
    labels, probs = _good()
    y, p = li.check_probs(labels.astype(np.int32), probs.tolist(), n_classes=3)
    assert y.dtype == np.int64 and p.dtype == np.float64 and p.flags.c_contiguous
    with pytest.raises(UsageError, match=r"^--probs x\.npy: 3 columns, expected one per class \(10\)$"):
        li.check_probs(labels, probs, n_classes=10, source="--probs x.npy")


def test_bad_parameters():
    """Reference: cleanlab's parameter domains (frac_noise in (0, 1]; num_to_remove_per_class only for the
    pruning rules, one per class); unknown names answered with the known ones."""
    labels, probs = _good()
    with pytest.raises(UnknownNameError, match="did you mean 'both'"):
        li.find_label_issues(labels, probs, filter_by="bath")
    with pytest.raises(UnknownNameError, match="self_confidence"):
        li.find_label_issues(labels, probs, return_indices_ranked_by="margin")
    with pytest.raises(UsageError, match="frac_noise"):
        li.find_label_issues(labels, probs, frac_noise=1.5)
    with pytest.raises(UsageError, match="apply only to"):
        li.find_label_issues(labels, probs, filter_by="confident_learning", num_to_remove_per_class=[1, 1, 1])
    with pytest.raises(UsageError, match="3 integers"):
        li.find_label_issues(labels, probs, num_to_remove_per_class=[1, 1])
    with pytest.raises(UsageError, match="min_examples_per_class"):
        li.find_label_issues(labels, probs, min_examples_per_class=-1)
