"""Post-hoc OOD detectors (imgclass.ood.detectors) against pytorch-ood 0.4.0 on a real model and real images.

Reference: pytorch_ood.detector (MaxSoftmax, MaxLogit, EnergyBased, Entropy, GEN, Mahalanobis, KNN, ViM, ReAct,
ASH, ODIN) on the same model and inputs; our scores are -theirs (higher = more in-distribution).
Model: zoo:cifar10-resnet20. ID: 200 CIFAR-10 test images; OOD: 200 MNIST test digits padded to 32 px; fit
statistics: 500 CIFAR-10 training images.
"""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from conftest import mirror_file
from imgclass.errors import UnknownNameError, UsageError
from imgclass.ood import detectors as D

pod = pytest.importorskip("pytorch_ood.detector")

ATOL, RTOL = 1e-6, 1e-6  # measured: bitwise equal except KNN (sklearn float32, ~1e-7)


def _cifar(rel: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    d = np.load(mirror_file(rel))
    x = torch.from_numpy(d["images"][:n]).permute(0, 3, 1, 2).float() / 255
    return x, torch.from_numpy(d["labels"][:n]).long()


def _mnist(n: int) -> torch.Tensor:
    with gzip.open(mirror_file("mnist/t10k-images-idx3-ubyte.gz"), "rb") as f:
        raw = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)[:n]
    x = torch.from_numpy(raw.copy()).float() / 255
    return torch.nn.functional.pad(x, (2, 2, 2, 2))[:, None].expand(-1, 3, -1, -1).contiguous()


@pytest.fixture(scope="module")
def setup():
    import imgclass

    torch.manual_seed(0)
    clf = imgclass.load_model("zoo:cifar10-resnet20").eval()
    x_id, _ = _cifar("cifar10-lossless/test-first1000.npz", 200)
    x_train, y_train = _cifar("cifar10-lossless/train-first2000.npz", 500)
    x = torch.cat([x_id, _mnist(200)])
    with torch.no_grad():
        logits, feats, z_train = clf(x), clf.features(x), clf.features(x_train)
    assert torch.allclose(clf.model.linear(feats), logits, atol=1e-5)  # the logit layer is model.linear
    return dict(clf=clf, x=x, logits=logits, feats=feats, z_train=z_train, y_train=y_train,
                W=clf.model.linear.weight.detach(), b=clf.model.linear.bias.detach())


def _close(ours: torch.Tensor, theirs: torch.Tensor, atol: float = ATOL, rtol: float = RTOL) -> None:
    theirs = theirs.to(ours.dtype)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, -theirs, atol=atol, rtol=rtol)


@pytest.mark.parametrize("name,ours,theirs", [
    ("msp", lambda lg: D.msp(lg), lambda m: pod.MaxSoftmax(m)),
    ("max_logit", lambda lg: D.max_logit(lg), lambda m: pod.MaxLogit(m)),
    ("energy", lambda lg: D.energy(lg), lambda m: pod.EnergyBased(m)),
    ("energy_t2", lambda lg: D.energy(lg, t=2.0), lambda m: pod.EnergyBased(m, t=2.0)),
    ("entropy", lambda lg: D.entropy(lg), lambda m: pod.Entropy(m)),
    ("gen", lambda lg: D.gen(lg), lambda m: pod.GEN(m, gamma=0.1, M=100)),  # pytorch-ood's default M=None: all
    ("gen_m3", lambda lg: D.gen(lg, gamma=0.5, m=3), lambda m: pod.GEN(m, gamma=0.5, M=3)),
])
def test_logit_detectors_match_pytorch_ood(setup, name, ours, theirs):
    """Reference: pytorch_ood.detector logit detectors, model = the pixel-space Classifier."""
    with torch.no_grad():
        ref = theirs(setup["clf"]).predict(setup["x"])
    _close(ours(setup["logits"]), ref)


def test_mahalanobis_matches_pytorch_ood(setup):
    """Reference: pytorch_ood.detector.Mahalanobis(clf.features).fit_features(z, y).predict(x)."""
    ref = pod.Mahalanobis(setup["clf"].features).fit_features(setup["z_train"], setup["y_train"])
    ours = D.Mahalanobis().fit(setup["z_train"], setup["y_train"])
    torch.testing.assert_close(ours.precision, ref.precision)
    _close(ours.score(setup["feats"]), ref.predict(setup["x"]))


@pytest.mark.parametrize("k", [50, 1, 7])
def test_knn_matches_pytorch_ood(setup, k):
    """Reference: pytorch_ood.detector.KNN(clf.features, k=k) (sklearn NearestNeighbors); k=50 is both defaults."""
    ref = pod.KNN(setup["clf"].features, k=k).fit_features(setup["z_train"], setup["y_train"])
    with torch.no_grad():
        theirs = ref.predict(setup["x"])
    ours = D.KNN(k=k, chunk_size=64).fit(setup["z_train"]).score(setup["feats"])
    _close(ours, theirs)


def test_knn_chunking_is_exact(setup):
    """Reference: the same KNN scored in one chunk; chunking changes nothing (same float64 arithmetic)."""
    a = D.KNN(chunk_size=7).fit(setup["z_train"]).score(setup["feats"])
    b = D.KNN(chunk_size=10_000).fit(setup["z_train"]).score(setup["feats"])
    torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


@pytest.mark.parametrize("dim", [8, 32])
def test_vim_matches_pytorch_ood(setup, dim):
    """Reference: pytorch_ood.detector.ViM(clf.features, d=dim, w=W, b=b).fit_features(z, y).predict(x)."""
    ref = pod.ViM(setup["clf"].features, d=dim, w=setup["W"], b=setup["b"])
    ref.fit_features(setup["z_train"], setup["y_train"])
    ours = D.ViM().fit(setup["z_train"], setup["W"], setup["b"], dim=dim)
    assert ours.alpha == pytest.approx(ref.alpha, rel=1e-6)
    _close(ours.score(setup["feats"]), ref.predict(setup["x"]))


def _backbone_head(setup):
    clf = setup["clf"]
    return (lambda x: clf.features(x)[:, :, None, None]), (lambda z: clf.model.linear(z.flatten(1)))


@pytest.mark.parametrize("percentile", [90, 60])
def test_react_matches_pytorch_ood(setup, percentile):
    """Reference: pytorch_ood.detector.ReAct on penultimate features (B, D, 1, 1), head = model.linear;
    percentile 90 here is pytorch-ood's 0.9."""
    backbone, head = _backbone_head(setup)
    ref = pod.ReAct(backbone, head, percentile=percentile / 100)
    ref.fit_feature_maps(setup["z_train"][:, :, None, None], setup["y_train"])
    thr = D.react_threshold(setup["z_train"], percentile)
    assert thr == ref.threshold
    with torch.no_grad():
        theirs = ref.predict(setup["x"])
    _close(D.react(setup["feats"], setup["W"], setup["b"], threshold=thr), theirs)


@pytest.mark.parametrize("variant", ["ash-s", "ash-p", "ash-b"])
@pytest.mark.parametrize("percentile", [65, 90])
def test_ash_matches_pytorch_ood(setup, variant, percentile):
    """Reference: pytorch_ood.detector.ASH on penultimate features (B, D, 1, 1), head = model.linear."""
    backbone, head = _backbone_head(setup)
    ref = pod.ASH(backbone, head, variant=variant, percentile=percentile / 100)
    with torch.no_grad():
        theirs = ref.predict(setup["x"])
    ours = D.ash(setup["feats"], setup["W"], setup["b"], percentile=percentile, variant=variant)
    _close(ours, theirs)


def test_odin_matches_pytorch_ood_pixel_space(setup):
    """Reference: pytorch_ood.detector.ODIN(clf, norm_std=None) on [0, 1] pixels: eps in pixel units on both."""
    x = setup["x"][::4]
    ref = pod.ODIN(setup["clf"], eps=0.0014, temperature=1000.0, norm_std=None).predict(x)
    _close(D.odin(setup["clf"], x), ref)


def test_odin_pixel_eps_equals_pytorch_ood_normalized_space(setup):
    """Reference: pytorch_ood.detector.ODIN(clf.model, norm_std=std) on normalized input: its eps / std step in
    normalized space is our eps in pixel space."""
    clf, x = setup["clf"], setup["x"][::4]
    ref = pod.ODIN(clf.model, eps=0.002, temperature=100.0, norm_std=list(clf.config.std)).predict(clf.normalize(x))
    _close(D.odin(clf, x, eps=0.002, temperature=100.0), ref)


def test_scores_rank_id_above_ood(setup):
    """Reference: the convention (higher = more ID): CIFAR-10 test images outscore MNIST digits on average."""
    n = 200
    for s in (D.msp(setup["logits"]), D.energy(setup["logits"]),
              D.KNN().fit(setup["z_train"]).score(setup["feats"])):
        assert s[:n].mean() > s[n:].mean()


def test_registry_and_errors(setup):
    """Reference: DESIGN.md's registry contract (unknown names list the known) and one-line UsageErrors."""
    assert {"msp", "energy", "knn", "mahalanobis", "vim", "react", "ash", "odin", "gen"} <= set(D.DETECTORS)
    assert D.DETECTORS["odin"].needs == {"gradients"} and D.DETECTORS["knn"].requires_fit
    with pytest.raises(UnknownNameError):
        D.DETECTORS["enrgy"]
    with pytest.raises(UsageError):
        D.KNN(k=600).fit(setup["z_train"])
    with pytest.raises(UsageError):
        D.ViM().fit(setup["z_train"], setup["W"], setup["b"], dim=64)
    with pytest.raises(UsageError):
        D.ash(setup["feats"], setup["W"], setup["b"], variant="ash-x")
    with pytest.raises(UsageError):
        D.Mahalanobis().fit(setup["z_train"], setup["y_train"] + 1)
    with pytest.raises(UsageError):
        D.msp(setup["logits"][0])
