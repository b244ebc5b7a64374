"""Representation quality (imgclass.representation and the `representation` probe): kNN against lightly's
knn_predict, the linear probe against scikit-learn, linear CKA against the published HSIC formula, clustering
metrics against scikit-learn, and the probe on a real CIFAR-10 ResNet-20 (training features: 2,000 CIFAR-10
training images, evaluated: 500 test images)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from imgclass import evaluate, load_dataset, load_model
from imgclass.representation import (cka_matrix, cluster_metrics, fewshot_accuracy, hungarian_accuracy,
                                     knn_predictions, knn_scores, knn_top1, linear_cka, linear_probe)
from imgclass.results import load

from conftest import mirror_file

N_TEST = 500
PARAMS = {"representation": {"compare": "zoo:cifar10-resnet32"}}


def _lightly(test, bank, labels, c, k=200, t=0.1):
    from lightly.utils.benchmarking import knn_predict

    return knn_predict(F.normalize(test, dim=1), F.normalize(bank, dim=1).t(), labels, c, knn_k=k, knn_t=t)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    mirror_file("cifar10-lossless/test-first1000.npz")
    mirror_file("cifar10-lossless/train-first2000.npz")
    out = tmp_path_factory.mktemp("representation")
    res = evaluate("zoo:cifar10-resnet20", "zoo:cifar10-lossless:test", probes=["accuracy", "representation"],
                   probe_params=PARAMS, limit=N_TEST, out=out, progress=False, store=False, workers=0)
    return out, res


@pytest.fixture(scope="module")
def real_features(run):
    """Pre-logit features of the evaluated test subset and of the 2,000 training images, computed directly."""
    clf = load_model("zoo:cifar10-resnet20").eval()
    test = load_dataset("zoo:cifar10-lossless:test")
    test = test.subset(np.sort(np.random.default_rng(0).choice(len(test), size=N_TEST, replace=False)))
    train = load_dataset("zoo:cifar10-lossless:train")

    def feats(ds):
        out = []
        with torch.no_grad():
            for s in range(0, len(ds), 250):
                x = torch.stack([ds.load(i) for i in range(s, min(s + 250, len(ds)))]).float() / 255
                out.append(clf.features(x))
        return torch.cat(out), torch.as_tensor(np.asarray(ds.labels), dtype=torch.long)

    return (*feats(test), *feats(train))


# -- kNN ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k,t,chunk", [(200, 0.1, 1024), (20, 0.07, 37), (1, 0.5, 5)])
def test_knn_equals_lightly_knn_predict_on_random_features(k, t, chunk):
    """Reference: lightly.utils.benchmarking.knn_predict (1.6.0) on L2-normalized features: the full class ranking
    (argsort of the scores) and so the top-1 predictions are equal, also when the test rows are chunked."""
    g = torch.Generator().manual_seed(k)
    test, bank = torch.randn(300, 16, generator=g), torch.randn(900, 16, generator=g)
    labels = torch.randint(0, 7, (900,), generator=g)
    scores = knn_scores(test, bank, labels, 7, k=k, t=t, chunk=chunk)
    ref = _lightly(test, bank, labels, 7, k, t)
    assert scores.shape == (300, 7)
    assert torch.equal(scores.argsort(dim=-1, descending=True), ref)
    assert torch.equal(knn_predictions(scores), ref[:, 0])


def test_knn_ties_are_resolved_as_lightly_resolves_them():
    """Reference: lightly's knn_predict on a bank where each test point's neighbours split their weight equally
    between classes (exact ties in the scores): the same predicted class."""
    bank = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([2, 0, 1, 3])
    test = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    for k in (1, 2, 4):
        scores = knn_scores(test, bank, labels, 4, k=k)
        assert torch.equal(knn_predictions(scores), _lightly(test, bank, labels, 4, k)[:, 0]), k


def test_knn_equals_lightly_on_real_features_and_the_probe_reports_it(run, real_features):
    """Reference: lightly's knn_predict on ResNet-20 pre-logit features (500 test, 2,000 training images, k=200,
    T=0.1): equal predictions; the probe's kNN top-1 (features from its own batched pass) within one image of it."""
    xt, yt, xb, yb = real_features
    ref = _lightly(xt, xb, yb, 10)[:, 0]
    assert torch.equal(knn_predictions(knn_scores(xt, xb, yb, 10)), ref)
    want = float((ref == yt).double().mean())
    assert knn_top1(xt, yt, xb, yb, 10) == want
    assert run[1]["probes"]["representation"]["knn_top1"] == pytest.approx(want, abs=1 / N_TEST + 1e-12)


# -- linear probe --------------------------------------------------------------------------------------------------
def test_linear_probe_equals_sklearn_logistic_regression_at_the_chosen_c(run, real_features):
    """Reference: scikit-learn's StandardScaler + LogisticRegression(lbfgs) fitted on all training features at the C
    the probe chose, and the held-out accuracy of every C of a three-point grid recomputed the same way on the seeded
    split: the same predictions, accuracy and choice; the probe's own linear top-1 (its default seven-point grid,
    features from its batched pass) within two images of the refit at its chosen C."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    xt, yt, xb, yb = (a.numpy().astype(np.float64) for a in real_features)
    lp = linear_probe(xb, yb, xt, yt, Cs=(1e-3, 0.1, 10.0), seed=0)
    sc = StandardScaler().fit(xb)
    pred = LogisticRegression(C=lp.C, max_iter=1000).fit(sc.transform(xb), yb).predict(sc.transform(xt))
    assert np.array_equal(lp.predictions, pred) and lp.top1 == pytest.approx(float((pred == yt).mean()))
    perm = np.random.default_rng(0).permutation(len(xb))
    val, fit = perm[:400], perm[400:]
    sc = StandardScaler().fit(xb[fit])
    for c, acc in lp.heldout.items():
        m = LogisticRegression(C=c, max_iter=1000).fit(sc.transform(xb[fit]), yb[fit])
        assert acc == pytest.approx(float((m.predict(sc.transform(xb[val])) == yb[val]).mean())), c
    assert lp.heldout[lp.C] == max(lp.heldout.values())
    r = run[1]["probes"]["representation"]
    sc = StandardScaler().fit(xb)
    pred = LogisticRegression(C=r["linear_C"], max_iter=1000).fit(sc.transform(xb), yb).predict(sc.transform(xt))
    assert r["linear_top1"] == pytest.approx(float((pred == yt).mean()), abs=2 / N_TEST)


# -- CKA -----------------------------------------------------------------------------------------------------------
def _cka_hsic(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. (2019), eq. 3 with linear kernels: tr(KHLH) / sqrt(tr(KHKH) tr(LHLH))."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = x @ x.T, y @ y.T
    return float(np.trace(k @ h @ l_ @ h) / np.sqrt(np.trace(k @ h @ k @ h) * np.trace(l_ @ h @ l_ @ h)))


def test_linear_cka_equals_the_hsic_formula_and_its_invariances():
    """Reference: the published HSIC form with the centring matrix H (feature and Gram paths: fewer and more features
    than examples); invariants: CKA(X, X) = 1, invariance to an orthogonal transform and to isotropic scaling,
    symmetry, values in [0, 1]."""
    rng = np.random.default_rng(0)
    x, y, wide = rng.normal(size=(60, 12)), rng.normal(size=(60, 5)), rng.normal(size=(60, 200))
    y = y + x[:, :5]  # related
    for a, b in ((x, y), (x, wide), (wide, y)):
        assert linear_cka(a, b) == pytest.approx(_cka_hsic(a, b), rel=1e-10)
        assert linear_cka(a, b) == pytest.approx(linear_cka(b, a), rel=1e-12)
        assert 0 <= linear_cka(a, b) <= 1
    assert linear_cka(x, x) == pytest.approx(1.0, rel=1e-12) and linear_cka(wide, wide) == pytest.approx(1.0)
    q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    assert linear_cka(x @ q, y) == pytest.approx(linear_cka(x, y), rel=1e-10)
    assert linear_cka(3.7 * x, 0.2 * y) == pytest.approx(linear_cka(x, y), rel=1e-10)
    m = cka_matrix([x, wide], [y, x, torch.as_tensor(wide)])
    assert m.shape == (2, 3) and m[0, 1] == pytest.approx(1.0) and m[1, 2] == pytest.approx(1.0)
    assert m[1, 0] == pytest.approx(_cka_hsic(wide, y), rel=1e-10)


# -- clustering and few-shot ---------------------------------------------------------------------------------------
def test_hungarian_accuracy_on_a_hand_made_case():
    """Reference: worked by hand. Four clusters, three classes: clusters 0, 1, 3 best match classes 1, 2, 0
    (4 + 3 + 2 of 10 right); cluster 2 has no class left, its one sample counts as wrong (not 4 + 3 + 1)."""
    y = [1, 1, 1, 1, 2, 2, 2, 0, 0, 0]
    c = [0, 0, 0, 0, 1, 1, 1, 2, 3, 3]
    assert hungarian_accuracy(y, c) == pytest.approx(0.9)
    assert hungarian_accuracy(y, [5, 5, 5, 5, 7, 7, 7, 9, 9, 9]) == 1.0
    assert hungarian_accuracy([0, 0, 1, 1], [0, 1, 0, 1]) == 0.5


def test_cluster_metrics_equal_sklearn(real_features):
    """Reference: scikit-learn's KMeans (same seed, n_init) on the L2-normalized features, and its
    normalized_mutual_info_score / adjusted_rand_score on the same assignments."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    xt, yt = real_features[0].numpy().astype(np.float64), real_features[1].numpy()
    cm = cluster_metrics(xt, yt, seed=0)
    ref = KMeans(10, n_init=10, random_state=0).fit_predict(xt / np.linalg.norm(xt, axis=1, keepdims=True))
    assert np.array_equal(cm["assignments"], ref)
    assert cm["nmi"] == pytest.approx(normalized_mutual_info_score(yt, ref), abs=1e-12)
    assert cm["ari"] == pytest.approx(adjusted_rand_score(yt, ref), abs=1e-12)
    assert 0.5 < cm["nmi"] <= 1 and cm["cluster_acc"] >= cm["ari"] - 0.2


def test_fewshot_on_separable_classes_and_against_a_direct_computation():
    """Invariants: well separated classes give 1.0 at every shot count, with 0 spread over episodes. Reference: one
    1-shot episode recomputed directly (the support drawn with the documented seed [seed, k, episode], one example
    per class in class order): cosine nearest prototype by hand, scikit-learn LogisticRegression(C=1) on features
    standardized with the training mean/std."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 8)) * 10
    ytr, yte = np.repeat(np.arange(4), 30), np.repeat(np.arange(4), 10)
    xtr, xte = centres[ytr] + rng.normal(size=(120, 8)), centres[yte] + rng.normal(size=(40, 8))
    fs = fewshot_accuracy(xtr, ytr, xte, yte, shots=(1, 5), episodes=3)
    for k in (1, 5):
        assert fs[k]["linear_mean"] == fs[k]["prototype_mean"] == 1.0 and fs[k]["prototype_std"] == 0.0
    xq = xte + rng.normal(size=xte.shape) * 12
    got = fewshot_accuracy(xtr, ytr, xq, yte, shots=(1,), episodes=1, seed=3)[1]
    draw = np.random.default_rng([3, 1, 0])
    idx = np.sort(np.concatenate([draw.choice(np.flatnonzero(ytr == c), size=1, replace=False) for c in range(4)]))

    def unit(a):
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    proto = float(((unit(xq) @ unit(xtr[idx]).T).argmax(1) == yte).mean())
    mean, std = xtr.mean(0), xtr.std(0)
    lin = LogisticRegression(C=1.0, max_iter=1000).fit((xtr[idx] - mean) / std, ytr[idx])
    assert got["prototype_mean"] == pytest.approx(proto) and got["prototype_std"] == 0.0
    assert got["linear_mean"] == pytest.approx(float((lin.predict((xq - mean) / std) == yte).mean()))
    assert got["episodes"] == 1 and proto < 1.0


# -- layers --------------------------------------------------------------------------------------------------------
def test_layer_features_pool_named_modules_and_name_unknown_ones():
    """Invariants: a named module's 4-D output is global-average-pooled (equal to the mean of its hooked output);
    pre_logits is features(x); an unknown name is a UsageError with the close names."""
    from imgclass.errors import UsageError

    clf = load_model("zoo:cifar10-resnet20").eval()
    x = torch.rand(3, 3, 32, 32)
    seen = {}
    h = clf.model.layer2.register_forward_hook(lambda m, i, o: seen.setdefault("o", o))
    with torch.no_grad():
        f = clf.layer_features(x, ["layer2", "pre_logits", "linear"])
    h.remove()
    assert torch.allclose(f["layer2"], seen["o"].mean((2, 3)))
    with torch.no_grad():
        assert torch.allclose(f["pre_logits"], clf.features(x)) and torch.allclose(f["linear"], clf(x))
    with pytest.raises(UsageError, match="'layer4'.*layer3"):
        clf.layer_features(x, ["layer4"])


def test_default_cka_layers_are_the_stages():
    """Invariants: a timm model's default CKA layers are its feature_info stages plus the pre-logit features, ViT
    token outputs are averaged over the tokens (or the class token with tokens='cls'); a CIFAR ResNet's are its
    top-level stages (the logit layer left out)."""
    import timm

    from imgclass.probes.representation import default_layers

    names = [str(i) for i in range(10)]
    cnx = load_model(timm.create_model("convnext_atto", pretrained=False, num_classes=10), classes=names,
                     input_size=(3, 64, 64)).eval()
    assert default_layers(cnx) == ["stages.0", "stages.1", "stages.2", "stages.3", "pre_logits"]
    vit = load_model(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, depth=2,
                                       img_size=32, patch_size=8), classes=names, input_size=(3, 32, 32)).eval()
    x = torch.rand(2, 3, 32, 32)
    seen = {}
    h = vit.model.blocks[1].register_forward_hook(lambda m, i, o: seen.setdefault("o", o))
    with torch.no_grad():
        mean = vit.layer_features(x, ["blocks.1"])["blocks.1"]
        cls = vit.layer_features(x, ["blocks.1"], tokens="cls")["blocks.1"]
    h.remove()
    assert torch.allclose(mean, seen["o"].mean(1)) and torch.allclose(cls, seen["o"][:, 0])
    assert default_layers(load_model("zoo:cifar10-resnet20")) == ["conv1", "layer1", "layer2", "layer3", "pre_logits"]


# -- the probe -----------------------------------------------------------------------------------------------------
def test_probe_knn_and_linear_top1_are_close_to_the_models_own_top1(run):
    """Reference: the model's own top-1 on the same 500 images (the features were trained with those labels, so a
    kNN / linear readout of them recovers the classifier: measured 0.916 and 0.918 against 0.918); bound 3 points.
    Few-shot accuracy rises with the shots and reaches the kNN level by 10 shots within 5 points."""
    _, res = run
    r, top1 = res["probes"]["representation"], res["probes"]["accuracy"]["top1"]
    assert abs(r["knn_top1"] - top1) <= 0.03 and abs(r["linear_top1"] - top1) <= 0.03, (r["knn_top1"],
                                                                                       r["linear_top1"], top1)
    fs = r["fewshot"]
    assert set(fs) == {"1", "5", "10"}
    for what in ("linear_mean", "prototype_mean"):
        assert fs["1"][what] <= fs["10"][what] + 0.01 and fs["10"][what] >= r["knn_top1"] - 0.05
    assert r["train"] == {"spec": "zoo:cifar10-lossless:train", "n": 2000, "selection": "all"}
    assert 0.6 < r["nmi"] <= 1 and 0 < r["ari"] <= 1 and 0 < r["cluster_acc"] <= 1


def test_results_json_and_report(run):
    """Invariants: results.json keeps probes.representation.{knn_top1, linear_top1, fewshot[<k>], nmi, ari,
    cluster_acc, cka, cka_layers}, the protocol (layer, k, temperature, training set and sizes, augmentation off,
    batch norm in eval mode), the headline numbers; the report has the table, the few-shot plot and the CKA map.
    Reference for the CKA values: Kornblith et al. (2019), fig. 4: corresponding stages of CIFAR ResNets of
    different depth are the most similar (the diagonal is each row's maximum)."""
    out, _ = run
    r = load(out)
    p = r.probes["representation"]
    head = r.headline()
    for key in ("knn_top1", "linear_top1", "nmi"):
        assert head[f"representation.{key}"] == pytest.approx(p[key])
    assert {"linear_mean", "linear_std", "prototype_mean", "prototype_std"} <= set(p.fewshot["5"])
    proto = r.protocols()["representation"]
    assert proto["layer"] == "pre_logits" and proto["k"] == 200 and proto["temperature"] == 0.1
    assert proto["n_train"] == 2000 and proto["n_test"] == N_TEST and proto["train"] == "zoo:cifar10-lossless:train"
    assert "off" in proto["augmentation"] and "evaluation" in proto["batch_norm"]
    m = np.array(p.cka)
    assert p.cka_layers == p.cka_compare_layers == ["conv1", "layer1", "layer2", "layer3"]
    assert m.shape == (4, 4) and np.all((m >= 0) & (m <= 1 + 1e-9))
    assert all(m[i].argmax() == i for i in range(4)), m
    page = (out / "report.html").read_text()
    assert "Representation quality" in page and "Few-shot accuracy" in page and "Linear CKA" in page


def test_without_training_data_the_training_parts_are_skipped(tmp_path):
    """Invariants: data with no train split (an npz file) and no train_data: kNN, linear probe and few-shot are
    skipped and the result says so; clustering still runs; a chosen layer is used and recorded."""
    res = evaluate("zoo:cifar10-resnet20", "npz:" + str(mirror_file("cifar10-lossless/test-first1000.npz")),
                   probes=["representation"], probe_params={"representation": {"layer": "layer2"}}, limit=120,
                   progress=False, store=False, workers=0)
    r = res["probes"]["representation"]
    assert r["knn_top1"] is None and r["linear_top1"] is None and r["fewshot"] == {}
    assert any("training" in w for w in r["warnings"]) and r["layer"] == "layer2" and r["nmi"] is not None
    assert r["setup"]["feature_dim"] == 32


@pytest.mark.distributed
def test_torchrun_two_processes_give_the_figures_of_one(tmp_path):
    """Reference: the single-process run. kNN, linear probe, few-shot, clustering and CKA come out identical with
    two processes (features gathered in dataset order, every analysis on the same gathered features)."""
    from test_distributed import _eval

    args = ["zoo:cifar10-resnet20", "zoo:cifar10-lossless:test", "--limit", "150", "--batch-size", "32",
            "--probes", "representation", "--set", "representation.train_limit=300",
            "--set", "representation.compare=zoo:cifar10-resnet32", "--set", "representation.shots=1,5"]
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    one = _eval(args, tmp_path / "one", 1, store)
    two = _eval(args, tmp_path / "two", 2, store)
    assert two["settings"]["world_size"] == 2
    assert one["probes"]["representation"] == two["probes"]["representation"]
