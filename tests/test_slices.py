"""imgclass.diagnose.slices: planted subgroups found exactly, invariants (seeded determinism, row order, chance-level
errors give no slice), and each slice's statistics against a reference computed here: accuracy and gap by counting
the planted members, the p-value as ``scipy.stats.binom.cdf(correct, support, overall)`` (the one-sided binomial
test's definition), the member order by ``np.lexsort`` on confidence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom

from imgclass.diagnose.slices import Slice, default_clusters, error_slices
from imgclass.errors import UsageError

SIZES = (300, 250, 200, 150, 100, 60)  # the last blob is the planted subgroup


def _data(seed: int = 0, *, planted_acc: float = 0.2, d: int = 32):
    """Six separated Gaussian blobs; about 90% correct everywhere except the last blob (``planted_acc``)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(len(SIZES), d)) * 4
    blob = np.repeat(np.arange(len(SIZES)), SIZES)
    f = centers[blob] + rng.normal(size=(len(blob), d))
    correct = rng.random(len(blob)) < 0.9
    planted = np.flatnonzero(blob == len(SIZES) - 1)
    correct[planted] = rng.random(len(planted)) < planted_acc
    conf = rng.random(len(blob))
    return f, correct, conf, planted


def test_planted_subgroup_found_exactly():
    """With one cluster per blob the planted subgroup is the only slice, with exactly its 60 members; accuracy, gap,
    mean confidence and p-value as computed from the planted members directly."""
    f, correct, conf, planted = _data()
    slices = error_slices(f, correct, confidence=conf, n_clusters=len(SIZES))
    assert len(slices) == 1
    s = slices[0]
    assert s.support == 60 and set(s.indices) == set(planted)
    overall = correct.mean()
    hits = int(correct[planted].sum())
    assert s.accuracy == hits / 60 and s.gap == pytest.approx(overall - hits / 60, abs=1e-15)
    assert s.mean_confidence == pytest.approx(conf[planted].mean(), abs=1e-15)
    assert s.p_value == pytest.approx(binom.cdf(hits, 60, overall), rel=1e-9) and s.p_value < 1e-20
    expected_order = planted[np.lexsort((planted, -conf[planted]))]
    assert s.indices == tuple(expected_order.tolist())
    # without confidence: ascending indices, no mean
    plain = error_slices(f, correct, n_clusters=len(SIZES))[0]
    assert plain.indices == tuple(sorted(planted.tolist())) and plain.mean_confidence is None


def test_planted_subgroup_default_clusters():
    """With the default (21 clusters for 1,060 rows) k-means may split the subgroup; the slices are then exactly
    its parts, each significant."""
    f, correct, conf, planted = _data()
    assert default_clusters(len(f)) == 21
    slices = error_slices(f, correct)
    members = [set(s.indices) for s in slices]
    assert set().union(*members) == set(planted) and sum(map(len, members)) == 60
    assert all(s.p_value < 1e-6 for s in slices)


def test_deterministic_and_seeded():
    """The same seed gives equal results (dataclass equality: ids, statistics, member order); torch input equals
    numpy input."""
    f, correct, conf, _ = _data(seed=1, planted_acc=0.5)
    a = error_slices(f, correct, confidence=conf, seed=3)
    assert a == error_slices(f, correct, confidence=conf, seed=3)
    assert a == error_slices(torch.from_numpy(f).float().double(), torch.from_numpy(correct), confidence=conf, seed=3)
    assert all(isinstance(s, Slice) for s in a) and a


def test_row_order_does_not_matter():
    """Permuting the rows permutes the members and changes nothing else (canonical order before k-means: even
    the cluster ids agree)."""
    f, correct, conf, _ = _data(seed=2, planted_acc=0.4)
    perm = np.random.default_rng(5).permutation(len(f))
    a = error_slices(f, correct, confidence=conf)
    b = error_slices(f[perm], correct[perm], confidence=conf[perm])
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert tuple(perm[list(y.indices)].tolist()) == x.indices
        assert (x.cluster, x.support, x.accuracy, x.gap, x.p_value, x.mean_confidence) == \
               (y.cluster, y.support, y.accuracy, y.gap, y.p_value, y.mean_confidence)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(20, 90), d=st.integers(1, 6), k=st.integers(1, 6))
def test_row_order_property(seed, n, d, k):
    """Any data (ties and duplicate rows included): a permutation of the rows permutes the members only."""
    rng = np.random.default_rng(seed)
    f = np.round(rng.normal(size=(n, d)), 1)
    f[: n // 5] = f[0]
    correct = rng.random(n) < 0.6
    perm = rng.permutation(n)
    a = error_slices(f, correct, n_clusters=k, min_support=2, min_gap=0.0)
    b = error_slices(f[perm], correct[perm], n_clusters=k, min_support=2, min_gap=0.0)
    assert [(s.support, s.accuracy, frozenset(s.indices)) for s in a] == \
           [(s.support, s.accuracy, frozenset(perm[list(s.indices)].tolist())) for s in b]


def test_uniform_errors_give_no_slice():
    """Errors at random (80% correct everywhere): no cluster of ~250 rows is 0.1 below the overall; with
    ``min_gap=0`` every below-average cluster is listed and none is significant once the six tests are accounted
    for (Bonferroni: the smallest p-value times 6; by chance alone one of six clusters is often near p = 0.02)."""
    f, _, _, _ = _data(seed=4)
    correct = np.random.default_rng(6).random(len(f)) < 0.8
    assert error_slices(f, correct, n_clusters=len(SIZES)) == []
    every = error_slices(f, correct, n_clusters=len(SIZES), min_gap=0.0)
    assert every and min(s.p_value for s in every) * len(SIZES) > 0.05
    for s in every:
        assert s.p_value == pytest.approx(binom.cdf(round(s.accuracy * s.support), s.support, correct.mean()),
                                          rel=1e-9)


def test_min_support_and_gap_edges():
    """A gap exactly equal to min_gap counts (0.9 - 0.8 is below 0.1 in floating point); clusters under
    min_support are left out; everything correct gives nothing."""
    f = np.concatenate([np.tile([1.0, 0.0], (10, 1)), np.tile([0.0, 1.0], (10, 1))])
    correct = np.array([True] * 9 + [False] + [True] * 8 + [False] * 2)  # 0.9 and 0.8, overall 0.85
    s = error_slices(f, correct, n_clusters=2, min_gap=0.05)
    assert [(x.support, x.accuracy) for x in s] == [(10, 0.8)]
    assert error_slices(f, correct, n_clusters=2, min_gap=0.05, min_support=11) == []
    assert error_slices(f, np.ones(20, dtype=bool), n_clusters=2) == []
    assert error_slices(f[:1], correct[:1]) == []


def test_errors():
    """One-line usage errors."""
    f, correct, _, _ = _data()
    with pytest.raises(UsageError, match="correct"):
        error_slices(f, correct[:-1])
    with pytest.raises(UsageError, match="correct"):
        error_slices(f, correct * 2.0 + 1)
    with pytest.raises(UsageError, match=r"\(N, D\)"):
        error_slices(f[0], correct)
    with pytest.raises(UsageError, match="confidence"):
        error_slices(f, correct, confidence=np.ones(3))
    with pytest.raises(UsageError, match="n_clusters"):
        error_slices(f, correct, n_clusters=0)
    with pytest.raises(UsageError, match="min_gap"):
        error_slices(f, correct, min_gap=2)
