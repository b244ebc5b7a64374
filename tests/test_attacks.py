"""Attacks against their references: torchattacks on the same model and images (FGSM, PGD, APGD,
CW, Square), the white-box minimal perturbation for the decision-based attack, a random patch for the
universal patch, and invariants every attack must keep (the epsilon ball, [0, 1], seeds)."""

from __future__ import annotations

import pytest
import torch
import torchattacks

from imgclass import load_dataset, load_model
from imgclass.attacks import ATTACKS, get_attack, parse_eps, place
from imgclass.attacks.base import dlr_loss, dlr_loss_targeted

from conftest import mirror_file


def _images(n: int, split: str = "test", offset: int = 0):
    mirror_file("cifar10-lossless/test-first1000.npz")
    ds = load_dataset(f"zoo:cifar10-lossless:{split}")
    x = torch.stack([ds[i].image for i in range(offset, offset + n)]).float() / 255
    y = torch.tensor([ds.label(i) for i in range(offset, offset + n)])
    return x, y


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def r2b():
    mirror_file("models/vnncomp2021-cifar/resnet_2b.onnx")
    return load_model("zoo:vnncomp-resnet-2b").eval()


@pytest.fixture(scope="module")
def r20():
    mirror_file("models/akamaster-resnet-cifar10/resnet20-12fca82f.th")
    return load_model("zoo:cifar10-resnet20").eval()


@pytest.fixture(scope="module")
def data200():
    return _images(200)


def _correct(model, x, y):
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    return x[ok], y[ok]


def _acc(model, adv, y) -> float:
    with torch.no_grad():
        return float((model(adv).argmax(1) == y).double().mean())


# -- exact agreement with torchattacks ------------------------------------------------------------------

def test_fgsm_matches_torchattacks(r20):
    """Reference: torchattacks.FGSM on the same ResNet-20 and images, to 1e-6."""
    x, y = _images(32)
    ref = torchattacks.FGSM(r20, eps=8 / 255)(x, y)
    ours = get_attack("fgsm", eps="8/255")(r20, x, y).adv
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


def test_pgd_linf_matches_torchattacks_with_the_same_random_start(r20):
    """Reference: torchattacks.PGD (10 steps of 2/255 at 8/255) started from the same uniform noise, to 1e-6."""
    x, y = _images(32)
    eps = 8 / 255
    torch.manual_seed(3)
    ref = torchattacks.PGD(r20, eps=eps, alpha=2 / 255, steps=10)(x, y)
    torch.manual_seed(3)
    start = torch.clamp(x + torch.empty_like(x).uniform_(-eps, eps), 0, 1)
    ours = get_attack("pgd", eps=eps, step_size=2 / 255, steps=10, early_stop=False)(r20, x, y, start=start).adv
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


def test_pgd_l2_matches_torchattacks_with_the_same_random_start(r2b):
    """Reference: torchattacks.PGDL2 (eps 0.5, 10 steps of 0.1) from the same start in the L2 ball, to 1e-6."""
    x, y = _images(64)
    torch.manual_seed(4)
    ref = torchattacks.PGDL2(r2b, eps=0.5, alpha=0.1, steps=10)(x, y)
    torch.manual_seed(4)
    d = torch.empty_like(x).normal_()
    n = d.view(len(x), -1).norm(p=2, dim=1).view(-1, 1, 1, 1)
    r = torch.zeros_like(n).uniform_(0, 1)
    start = torch.clamp(x + d * (r / n * 0.5), 0, 1)
    ours = get_attack("pgd", eps=0.5, norm="l2", step_size=0.1, steps=10, early_stop=False)(r2b, x, y, start=start).adv
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


def test_early_stop_pgd_is_never_weaker_than_the_last_iterate(r2b, data200):
    """Invariant: with the same start, stopping at the first fooling iterate fools every sample the full run fools."""
    x, y = _correct(r2b, *data200)
    eps = 2 / 255
    start = torch.clamp(x + torch.empty_like(x).uniform_(-eps, eps, generator=torch.Generator().manual_seed(0)), 0, 1)
    full = get_attack("pgd", eps=eps, early_stop=False)(r2b, x, y, start=start)
    fast = get_attack("pgd", eps=eps)(r2b, x, y, start=start)
    assert bool((fast.success | ~full.success).all())
    assert fast.success.sum() >= full.success.sum()


# -- robust accuracy against torchattacks ---------------------------------------------------------------

def test_apgd_matches_torchattacks_robust_accuracy(r2b, data200):
    """Reference: torchattacks.APGD (CE) and APGDT (copies of the authors' code), 2/255, within 2 points."""
    x, y = _correct(r2b, *data200)
    eps = 2 / 255
    ours = _acc(r2b, get_attack("apgd-ce", eps=eps, steps=25)(r2b, x, y).adv, y)
    ref = _acc(r2b, torchattacks.APGD(r2b, eps=eps, steps=25, loss="ce", seed=0)(x, y), y)
    assert abs(ours - ref) <= 0.02, (ours, ref)
    ours_t = _acc(r2b, get_attack("apgd-t", eps=eps, steps=25, targets=3)(r2b, x, y).adv, y)
    ta = torchattacks.APGDT(r2b, eps=eps, steps=25, n_classes=4, seed=0)  # n_classes - 1 = 3 target classes
    ref_t = _acc(r2b, ta(x, y), y)
    assert abs(ours_t - ref_t) <= 0.02, (ours_t, ref_t)


def test_cw_binary_search_shrinks_the_perturbations(r2b):
    """Invariant (Carlini & Wagner 2017): searching over c finds smaller adversarial perturbations than a fixed c."""
    x, y = _correct(r2b, *_images(48))
    one = get_attack("cw", steps=30, search_steps=1)(r2b, x, y)
    four = get_attack("cw", steps=30, search_steps=4)(r2b, x, y)
    both = one.success & four.success
    assert both.sum() > 0.8 * len(y)
    # CW is deterministic and the first search step is shared, so searching can only shrink each norm
    assert (four.norm[both] <= one.norm[both] + 1e-6).all()
    assert four.norm[both].median() < 0.95 * one.norm[both].median()


@pytest.mark.slow
def test_cw_and_square_match_torchattacks_on_500_images(r2b):
    """Reference: torchattacks.CW (c=1, 50 Adam steps, no binary search, run with the same settings) and
    torchattacks.Square (auto-attack's code, Linf 2/255, 1,000 queries) on the first 500 lossless CIFAR-10 test
    images: robust accuracy (clean mistakes count as broken) within 2 points, and for CW also the accuracy at L2
    0.25 (a sample counts as robust there if its perturbation is larger); Square's queries are counted.
    Measured: CW 2.0 / 2.0 %, Square 57.0 / 57.0 %."""
    x, y = _images(500)
    cw = get_attack("cw", steps=50, search_steps=1, initial_const=1.0)(r2b, x, y).adv
    cw_ref = torchattacks.CW(r2b, c=1.0, kappa=0, steps=50, lr=0.01)(x, y).detach()
    sq_res = get_attack("square", eps=2 / 255, n_queries=1000)(r2b, x, y)
    sq_ref = torchattacks.Square(r2b, eps=2 / 255, n_queries=1000, seed=0)(x, y)
    accs = {k: _acc(r2b, a, y) for k, a in (("cw", cw), ("cw_ref", cw_ref), ("sq", sq_res.adv), ("sq_ref", sq_ref))}
    print(accs)
    assert abs(accs["cw"] - accs["cw_ref"]) <= 0.02, accs
    assert abs(accs["sq"] - accs["sq_ref"]) <= 0.02, accs
    assert accs["sq"] < _acc(r2b, x, y) - 0.05  # the black-box attack does break images

    def at(adv, e):
        with torch.no_grad():
            right = r2b(adv).argmax(1) == y
        small = (adv - x).flatten(1).norm(dim=1) <= e
        return float((right | ~small).double().mean())

    assert abs(at(cw, 0.25) - at(cw_ref, 0.25)) <= 0.02
    q = sq_res.queries  # the first query is the initial stripes
    assert q.max() <= 1001 and (q[sq_res.success] < 1001).all()
    assert (q[~sq_res.success] == 1001).all()  # the ones that resisted used the whole budget


# -- the decision-based attack and the patch ------------------------------------------------------------

def test_hopskipjump_finds_adversarials_near_the_white_box_minimum(r2b):
    """Reference: CW's minimal L2 perturbations (white box). HSJ sees only labels, so it ends further away,
    but within a small factor after 1000 queries, and closer with more queries."""
    x, y = _correct(r2b, *_images(24))
    cw = get_attack("cw", steps=50, search_steps=5)(r2b, x, y)
    short = get_attack("hsj", max_queries=300)(r2b, x, y)
    long = get_attack("hsj", max_queries=1200)(r2b, x, y)
    assert bool(long.success.all())
    torch.testing.assert_close(long.norm, (long.adv - x).flatten(1).norm(dim=1))
    assert long.norm.median() < short.norm.median()
    assert long.norm.median() < 4 * cw.norm[cw.success].median()
    assert (long.queries <= 1200 + 50).all()


def test_patch_placement():
    """Invariant: the patch lands where asked, everything else is untouched."""
    x = torch.rand(3, 3, 16, 16)
    p = torch.rand(3, 4, 4)
    out = place(x, p, torch.tensor([0, 5, 12]), torch.tensor([0, 7, 12]))
    for i, (r, c) in enumerate([(0, 0), (5, 7), (12, 12)]):
        torch.testing.assert_close(out[i, :, r:r + 4, c:c + 4], p)
        mask = torch.ones(16, 16, dtype=torch.bool)
        mask[r:r + 4, c:c + 4] = False
        torch.testing.assert_close(out[i][:, mask], x[i][:, mask])


def test_universal_patch_beats_a_random_patch_on_held_out_images(r2b):
    """Reference: a uniformly random patch of the same size at the same positions (occlusion alone). The patch is
    trained on training images and evaluated on test images."""
    xt, yt = _images(256, "train")
    xe, ye = _correct(r2b, *_images(200))
    att = get_attack("patch", size=0.1, epochs=15, step_size=4 / 255)
    att.fit(r2b, [(xt[i:i + 128], yt[i:i + 128]) for i in range(0, 256, 128)], seed=0)
    rnd = get_attack("patch", size=0.1, patch=torch.rand(att.patch.shape, generator=torch.Generator().manual_seed(1)))
    acc_patch = _acc(r2b, att(r2b, xe, ye, seed=5).adv, ye)
    acc_rand = _acc(r2b, rnd(r2b, xe, ye, seed=5).adv, ye)
    assert acc_patch < acc_rand - 0.1, (acc_patch, acc_rand)


# -- invariants over the registry -----------------------------------------------------------------------

BOUNDED = [(a, n) for a in sorted(ATTACKS) for n in ("linf", "l2")
           if not ATTACKS[a].minimal and ATTACKS[a].threat != "patch" and n in ATTACKS[a].norms]
FAST = {"pgd": {"steps": 5}, "apgd-ce": {"steps": 5}, "apgd-dlr": {"steps": 5}, "apgd-t": {"steps": 5, "targets": 2},
        "square": {"n_queries": 20}}


@pytest.mark.parametrize("name,norm", BOUNDED)
def test_every_bounded_attack_stays_in_the_ball_and_the_box(r2b, name, norm):
    """Invariant: ||adv - x|| <= eps in the attack's norm, pixels in [0, 1], success means misclassified."""
    x, y = _images(12)
    eps = 8 / 255 if norm == "linf" else 0.5
    res = get_attack(name, eps=eps, norm=norm, **FAST.get(name, {}))(r2b, x, y)
    d = (res.adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert (size <= eps + 1e-5).all()
    assert res.adv.min() >= 0 and res.adv.max() <= 1
    with torch.no_grad():
        assert torch.equal(res.success, r2b(res.adv).argmax(1) != y)


@pytest.mark.parametrize("name", ["pgd", "apgd-ce", "square"])
def test_seeds_make_attacks_reproducible(r2b, name):
    x, y = _images(8)
    kw = {"eps": 8 / 255, **FAST.get(name, {})}
    a = get_attack(name, **kw)(r2b, x, y, seed=1).adv
    b = get_attack(name, **kw)(r2b, x, y, seed=1).adv
    c = get_attack(name, **kw)(r2b, x, y, seed=2).adv
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_pgd_batch_equals_per_sample(r2b):
    """Invariant (Captum-style): attacking a batch gives each sample what attacking it alone gives (same start)."""
    x, y = _images(6)
    start = torch.clamp(x + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0)), 0, 1)
    att = get_attack("pgd", eps=4 / 255, steps=5, early_stop=False)
    batch = att(r2b, x, y, start=start).adv
    single = torch.cat([att(r2b, x[i:i + 1], y[i:i + 1], start=start[i:i + 1]).adv for i in range(len(x))])
    assert (batch - single).abs().max() <= 2 * 4 / 255 / 5 * 2.5 + 1e-6  # at most a rare flipped sign
    assert ((batch - single).abs() > 1e-6).float().mean() < 1e-3


def test_eot_averages_gradients_of_a_randomized_model(r2b):
    """Reference: the plain gradient of the deterministic model. With Gaussian input noise, the EOT gradient over many
    samples points much closer to it than a single noisy sample does (Athalye et al. 2018)."""
    from imgclass.attacks.base import ce_loss

    class Noisy(torch.nn.Module):
        def forward(self, x):
            return r2b((x + 0.03 * torch.randn_like(x)).clamp(0, 1))

    x, y = _images(16)
    torch.manual_seed(0)
    _, g_true, _ = get_attack("fgsm", eps=0.1).loss_grad(r2b, x, ce_loss(y, None))
    _, g1, _ = get_attack("fgsm", eps=0.1, eot_samples=1).loss_grad(Noisy(), x, ce_loss(y, None))
    _, g32, _ = get_attack("fgsm", eps=0.1, eot_samples=32).loss_grad(Noisy(), x, ce_loss(y, None))

    def cos(a, b):
        return torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1)).mean()

    # averaging 32 draws shrinks the angle to the true gradient; one draw leaves it noisy
    assert 1 - cos(g32, g_true) < 0.5 * (1 - cos(g1, g_true))


# -- losses, parsing, errors ----------------------------------------------------------------------------

def test_dlr_losses_match_the_reference_formulas():
    """Reference: torchattacks' copies of the authors' DLR and targeted DLR losses."""
    z = torch.randn(64, 10, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(1))
    t = (y + 1) % 10
    ta = torchattacks.APGD.__new__(torchattacks.APGD)
    tt = torchattacks.APGDT.__new__(torchattacks.APGDT)
    torch.testing.assert_close(dlr_loss(z, y), ta.dlr_loss(z, y))
    torch.testing.assert_close(dlr_loss_targeted(z, y, t), tt.dlr_loss_targeted(z, y, t))


def test_eps_parsing_and_errors(r2b):
    assert parse_eps("8/255") == pytest.approx(8 / 255) and parse_eps(" 0.5 ") == 0.5 and parse_eps(1) == 1.0
    for bad in ("abc", "1/0", "-1"):
        with pytest.raises(ValueError, match="epsilon"):
            parse_eps(bad)
    with pytest.raises(KeyError, match="known attacks"):
        get_attack("deepfool", eps=0.1)
    with pytest.raises(TypeError, match="parameters"):
        get_attack("pgd", eps=0.1, stepz=3)
    with pytest.raises(ValueError, match="norm"):
        get_attack("cw", norm="linf")
    with pytest.raises(ValueError, match="needs eps"):
        get_attack("pgd")
    x, y = _images(2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        get_attack("fgsm", eps=0.1)(r2b, x * 255, y)
    with pytest.raises(ValueError, match="int64"):
        get_attack("fgsm", eps=0.1)(r2b, x, y.float())
    with pytest.raises(ValueError, match="not trained"):
        get_attack("patch")(r2b, x, y)


# -- per-sample random draws: a sample's result does not depend on its batch -----------------------------------

def test_sample_random_rows_depend_only_on_their_key():
    """Invariants of the counter-based draws: a row is the same whatever rows surround it and however a draw is cut
    into pieces; references: scipy's Kolmogorov-Smirnov tests against U(0, 1) and N(0, 1)."""
    from scipy import stats

    from imgclass.attacks import SampleRandom, sample_keys

    keys = sample_keys(5, torch.arange(64))
    full = SampleRandom(keys, 5)
    part = SampleRandom(keys[10:20], 5)
    a, b = full.uniform(3, 4), part.uniform(3, 4)
    torch.testing.assert_close(a[10:20], b, rtol=0, atol=0)
    s = full.stream()  # one draw made in two pieces equals the draw made at once
    whole = SampleRandom(keys, 5, _state={"draws": s, "shared": 0}).normal(10)
    torch.testing.assert_close(torch.cat([full.normal(4, stream=s), full.normal(6, stream=s, start=4)], 1), whole)
    u = SampleRandom(sample_keys(1, torch.arange(256)), 1).uniform(400, dtype=torch.float64).flatten().numpy()
    z = SampleRandom(sample_keys(2, torch.arange(256)), 2).normal(400, dtype=torch.float64).flatten().numpy()
    assert stats.kstest(u, "uniform").pvalue > 1e-3 and stats.kstest(z, "norm").pvalue > 1e-3
    assert not torch.equal(full.uniform(8), full.uniform(8))  # the next draw is a new one


class _PerSample(torch.nn.Module):
    """The model run one image at a time: its logits for an image cannot depend on the batch (no batched float
    rounding), so any difference between batchings comes from the attack."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return torch.cat([self.model(x[i:i + 1]) for i in range(len(x))])


@pytest.mark.parametrize("name,kw", [
    ("fgsm", {"eps": 8 / 255}), ("pgd", {"eps": 8 / 255, "steps": 5, "restarts": 2}),
    ("pgd", {"eps": 0.5, "norm": "l2", "steps": 5}), ("apgd-ce", {"eps": 8 / 255, "steps": 5, "restarts": 2}),
    ("apgd-t", {"eps": 2 / 255, "steps": 5, "targets": 2}), ("square", {"eps": 2 / 255, "n_queries": 60}),
    ("square", {"eps": 0.3, "norm": "l2", "n_queries": 60}), ("cw", {"steps": 20, "search_steps": 2}),
    ("cw", {"steps": 20, "search_steps": 2, "abort_early": True}),
    ("hsj", {"max_queries": 100, "chunk": 64}),
])
def test_with_sample_keys_a_sample_gets_the_same_result_in_any_batch(r2b, name, kw):
    """Invariant (Captum-style batch invariance): with per-sample keys, attacking 6 images at once or in batches of 4
    and 2 gives each image the same adversarial, up to float rounding (HopSkipJump, which lives on the decision
    boundary, on a model run image by image)."""
    from imgclass.attacks import sample_keys

    x, y = _images(6)
    model = _PerSample(r2b) if name == "hsj" else r2b
    keys = sample_keys(11, torch.arange(6) + 100)
    att = get_attack(name, **kw)
    whole = att(model, x, y, seed=3, keys=keys)
    parts = [att(model, x[s:s + 4], y[s:s + 4], seed=3, keys=keys[s:s + 4]) for s in (0, 4)]
    torch.testing.assert_close(torch.cat([p.adv for p in parts]), whole.adv, rtol=0, atol=1e-6)
    assert torch.equal(torch.cat([p.success for p in parts]), whole.success)


def test_budgets_that_cannot_mean_what_they_say_are_refused(r2b):
    """Invariant of pixel space [0, 1]: a Linf budget above 1 is more than the whole range (8 means 8/255) and an L2
    budget above the image diagonal sqrt(C*H*W) (55.4 for 3x32x32) exceeds any distance between two images."""
    from imgclass.errors import UsageError

    with pytest.raises(UsageError, match="did you mean 8/255"):
        get_attack("pgd", eps="8")
    assert get_attack("pgd", eps=1).eps == 1 and get_attack("pgd", eps=0).eps == 0  # the whole range; the clean point
    x, y = _images(2)
    with pytest.raises(UsageError, match=r"sqrt\(C\*H\*W\) = 55.4"):
        get_attack("pgd", eps=60, norm="l2")(r2b, x, y)
    assert get_attack("pgd", eps=55, norm="l2", steps=1)(r2b, x, y).norm.max() <= 55


def test_l2_pgd_on_channels_last_images_matches_contiguous_ones(r2b):
    """Reference: the same L2 PGD on the same images in contiguous memory. The engine hands images over channels-last
    (CUDA, and the loader's HWC-decoded batches); the attack must accept them (it failed reshaping them) and find
    the same adversarials."""
    x, y = _images(8)
    att = get_attack("pgd", eps=0.5, norm="l2", steps=5, random_start=False)
    cl = att(r2b, x.contiguous(memory_format=torch.channels_last), y, seed=0)
    plain = att(r2b, x, y, seed=0)
    assert torch.equal(cl.success, plain.success)
    assert (cl.adv - plain.adv).abs().max() < 1e-5
