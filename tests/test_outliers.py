"""imgclass.diagnose.outliers against cleanlab 2.9.0: ``OutOfDistribution().fit_score(features=...)`` and
``fit(reference).score(features)`` for the scores, Datalab's OutlierIssueManager rule on cleanlab's own kNN graph
(``create_knn_graph_and_index``) for the flags. Same float64 inputs on both sides; scores agree to 1e-9 (float64
rounding of the distances)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imgclass.diagnose.outliers import knn_outlier_scores, outlier_issues
from imgclass.errors import UsageError

outlier = pytest.importorskip("cleanlab.outlier")

TOL = 1e-9


def _ood(x, **params):
    return outlier.OutOfDistribution(params=params or None).fit_score(features=x, verbose=False)


def _planted(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs, a few far-off rows (returned) and a few exact duplicates."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(4, d)) * 3
    x = centers[rng.integers(0, 4, n)] + rng.normal(size=(n, d)) * 0.5
    n_far = 6 if n > 50 else 2
    far = rng.choice(n, n_far, replace=False)
    x[far] = rng.normal(size=(n_far, d)) * 12
    dup = [i for i in range(n) if i not in far][:8]
    x[dup[1:4]] = x[dup[0]]  # a set of 4 equal rows
    x[dup[5:6]] = x[dup[4]]
    return x, np.sort(far)


@pytest.mark.parametrize("n,d", [(400, 16), (300, 2), (60, 3), (11, 8), (2500, 32)])
def test_scores_match_out_of_distribution(n, d):
    """OutOfDistribution().fit_score on planted data: cosine above 3 columns, sklearn's and scipy's Euclidean below
    (N over / under 100), k = N - 1 for 11 rows, exact duplicates (cleanlab's correction puts them at distance 0),
    2,500 rows searched in several chunks."""
    x, far = _planted(n, d, seed=n + d)
    ours = knn_outlier_scores(x, chunk=700)
    np.testing.assert_allclose(ours, _ood(x), rtol=0, atol=TOL)
    if n > 50:
        assert set(np.argsort(ours)[:6]) == set(far)
        assert set(np.flatnonzero(outlier_issues(ours))) >= set(far)


@pytest.mark.parametrize("k", [1, 3, 25])
def test_k(k):
    """OutOfDistribution(params={"k": k})."""
    x, _ = _planted(200, 12, seed=k)
    np.testing.assert_allclose(knn_outlier_scores(x, k=k), _ood(x, k=k), rtol=0, atol=TOL)


@pytest.mark.parametrize("d", [2, 20])
def test_reference(d):
    """OutOfDistribution().fit(features=reference).score(features=query): the reference's own median sets the
    scale, query rows leave nothing out (a query row equal to a reference row is at distance 0 from it)."""
    ref, _ = _planted(300, d, seed=d)
    rng = np.random.default_rng(d)
    q = np.concatenate([ref[:5], rng.normal(size=(30, d)) * 3, rng.normal(size=(5, d)) * 20])
    ood = outlier.OutOfDistribution()
    ood.fit(features=ref, verbose=False)
    np.testing.assert_allclose(knn_outlier_scores(q, reference=ref), ood.score(features=q), rtol=0, atol=TOL)
    ood7 = outlier.OutOfDistribution(params={"k": 7})
    ood7.fit(features=ref, verbose=False)
    np.testing.assert_allclose(knn_outlier_scores(q, reference=ref, k=7), ood7.score(features=q), rtol=0, atol=TOL)


def _datalab(x, k, metric, threshold):
    """Datalab's outlier scores and flags: its kNN graph, its transform, its threshold rule."""
    from cleanlab.datalab.internal.issue_manager.outlier import OutlierIssueManager
    from cleanlab.internal.neighbor.knn_graph import create_knn_graph_and_index
    from cleanlab.internal.outlier import correct_precision_errors, transform_distances_to_scores

    graph, _ = create_knn_graph_and_index(x, n_neighbors=k, metric=metric)
    dist = graph.data.reshape(len(x), -1)
    _, _, flags = OutlierIssueManager._compute_threshold_and_issue_column_from_distances(None, dist, threshold)
    avg = dist.mean(axis=1)
    scale = float(max(np.median(avg), 100 * np.finfo(np.float64).eps))
    scores = correct_precision_errors(transform_distances_to_scores(avg, 1, scale), avg, metric)
    return scores, flags


@pytest.mark.parametrize("d,metric,threshold", [(16, "cosine", None), (16, "euclidean", None), (2, "euclidean", 0.6),
                                                (16, "cosine", 0.1), (16, "cosine", 1.0)])
def test_flags_match_datalab(d, metric, threshold):
    """Datalab's outlier flags: average distance > Q3 + (1 / threshold - 1) * IQR (default threshold 0.37037); also
    the explicit euclidean metric on 16 columns (sklearn's dot-product distances there)."""
    x, far = _planted(500, d, seed=d)
    theirs_scores, theirs = _datalab(x, 10, metric, threshold)
    ours = knn_outlier_scores(x, metric=metric)
    np.testing.assert_allclose(ours, theirs_scores, rtol=0, atol=TOL)
    flags = outlier_issues(ours, threshold=threshold)
    assert np.array_equal(flags, theirs)
    if threshold is None:
        assert set(far) <= set(np.flatnonzero(flags)) and flags.sum() < 40


@pytest.mark.slow
def test_real_features():
    """ResNet-20 (CIFAR-10) pre-logit features of 500 lossless CIFAR-10 test images: float64 to both sides equal;
    float32 to cleanlab (sklearn then computes in float32) within float32 rounding."""
    from conftest import mirror_file

    import imgclass

    model = imgclass.load_model("zoo:cifar10-resnet20")
    z = np.load(mirror_file("cifar10-lossless/test-first1000.npz"))
    x = torch.from_numpy(z["images"][:500]).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        f = model.features(x)
    assert f.shape == (500, 64)
    ours = knn_outlier_scores(f)
    np.testing.assert_allclose(ours, _ood(f.double().numpy()), rtol=0, atol=TOL)
    np.testing.assert_allclose(ours, _ood(f.numpy()), rtol=0, atol=1e-5)
    # the train-set bank: test images scored against 500 training images' features
    zt = np.load(mirror_file("cifar10-lossless/train-first2000.npz"))
    xt = torch.from_numpy(zt["images"][:500]).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        ft = model.features(xt)
    ood = outlier.OutOfDistribution()
    ood.fit(features=ft.double().numpy(), verbose=False)
    np.testing.assert_allclose(knn_outlier_scores(f, reference=ft), ood.score(features=f.double().numpy()),
                               rtol=0, atol=TOL)


def test_inputs_and_errors():
    """Invariances (torch == numpy, chunk size) and one-line usage errors."""
    x, _ = _planted(120, 10, seed=3)
    a = knn_outlier_scores(x)
    np.testing.assert_allclose(knn_outlier_scores(torch.from_numpy(x), chunk=1), a, atol=1e-12)
    perm = np.random.default_rng(0).permutation(len(x))
    np.testing.assert_allclose(knn_outlier_scores(x[perm]), a[perm], atol=1e-12)
    assert knn_outlier_scores(np.zeros((0, 10)), reference=x).shape == (0,)
    with pytest.raises(UsageError, match="k must be"):
        knn_outlier_scores(x[:5], k=5)
    with pytest.raises(UsageError, match="metric"):
        knn_outlier_scores(x, metric="manhattan")
    with pytest.raises(UsageError, match=r"\(N, D\)"):
        knn_outlier_scores(x[0])
    with pytest.raises(UsageError, match="columns"):
        knn_outlier_scores(x, reference=x[:, :5])
    with pytest.raises(UsageError, match="NaN"):
        knn_outlier_scores(np.full((5, 4), np.nan))
    with pytest.raises(UsageError, match="threshold"):
        outlier_issues(a, threshold=1.5)
    with pytest.raises(UsageError, match=r"\[0, 1\]"):
        outlier_issues(a * 2)
    np.testing.assert_allclose(knn_outlier_scores(x[5:7]), _ood(x[5:7]), rtol=0, atol=TOL)  # 2 rows: k = 1
