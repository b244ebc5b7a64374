"""The self-supervised objectives of imgclass.train.ssl against lightly 1.6.0 (the reference implementation): losses,
heads, the EMA teacher and its schedule on the same inputs; views, RotNet, SimMIM masking and the resume state by
their definitions; and cifar_resnet18, the benchmarks' backbone."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from imgclass.data.labels import LabelSpace
from imgclass.errors import UsageError
from imgclass.models.checkpoint import build_arch, save_checkpoint
from imgclass.models.classifier import Classifier, ModelConfig
from imgclass.train.config import TrainConfig
from imgclass.train.ssl import (METHODS, DINOHead, SSLModel, build_views, byol_loss, dino_loss, dino_teacher_temp,
                                ema_update, momentum_at, nt_xent_loss, projection_head, random_patch_mask,
                                rotations, simmim_loss, patch_normalized)

from helpers import rgb_image

_VIT = {"img_size": 32, "patch_size": 4, "depth": 1, "embed_dim": 48, "num_heads": 3}


@pytest.fixture(autouse=True)
def _threads(single_thread):
    yield


def _clf(arch: str = "cifar_resnet20", seed: int = 0, **kw) -> Classifier:
    torch.manual_seed(seed)
    model = build_arch(arch, 10, **kw)
    return Classifier(model, labels=LabelSpace.anonymous(10), source="test", arch=arch, arch_kwargs=kw,
                      config=ModelConfig((3, 32, 32), (0.49, 0.48, 0.45), (0.25, 0.24, 0.26), 1.0, "bilinear"))


def _ssl(method: str, arch: str = "cifar_resnet20", seed: int = 0, **settings) -> SSLModel:
    kw = _VIT if method == "simmim" else {}
    arch = "timm:vit_tiny_patch16_224" if method == "simmim" else arch
    small = {"ssl_proj_hidden": 64, "ssl_proj_dim": 32, "ssl_dino_out_dim": 128} if method != "simmim" else {}
    cfg = TrainConfig(ssl=method, model=arch, arch_kwargs=kw, **{**small, **settings})
    clf = _clf(arch, seed, **kw)
    torch.manual_seed(seed + 1)
    return SSLModel(clf, cfg)


def _views(n: int, sizes=(32, 32), seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, 3, s, s, generator=g) for s in sizes]


# -- losses against lightly --------------------------------------------------------------------------------------

@pytest.mark.parametrize("temperature", [0.5, 0.1, 0.2])
@pytest.mark.parametrize("n", [2, 7, 32])
def test_nt_xent_equals_lightly(temperature, n):
    """Reference: lightly.loss.NTXentLoss(temperature, memory_bank_size=0, gather_distributed=False), and its
    gradient."""
    from lightly.loss import NTXentLoss

    g = torch.Generator().manual_seed(n)
    z0, z1 = torch.randn(n, 16, generator=g, requires_grad=True), torch.randn(n, 16, generator=g)
    ours = nt_xent_loss(z0, z1, temperature)
    ref = NTXentLoss(temperature=temperature)(z0, z1)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    g_ours, = torch.autograd.grad(ours, z0)
    g_ref, = torch.autograd.grad(NTXentLoss(temperature=temperature)(z0, z1), z0)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-6)


def test_byol_loss_equals_lightly_symmetric_negative_cosine():
    """Reference: lightly's CIFAR-10 benchmark BYOL loss 0.5 (NCS(p0, z1) + NCS(p1, z0)), NCS =
    lightly.loss.NegativeCosineSimilarity(); targets carry no gradient."""
    from lightly.loss import NegativeCosineSimilarity

    g = torch.Generator().manual_seed(1)
    p0, p1, z0, z1 = (torch.randn(9, 24, generator=g) for _ in range(4))
    crit = NegativeCosineSimilarity()
    torch.testing.assert_close(byol_loss(p0, p1, z0, z1), 0.5 * (crit(p0, z1) + crit(p1, z0)))
    p0.requires_grad_(True)
    z0.requires_grad_(True)
    byol_loss(p0, p1, z0, z1).backward()
    assert p0.grad is not None and z0.grad is None


@pytest.mark.parametrize("epoch", [0, 3, 29, 30, 100])
@pytest.mark.parametrize("n_local", [0, 3])
def test_dino_loss_and_center_update_equal_lightly(epoch, n_local):
    """Reference: lightly.loss.DINOLoss(output_dim, warmup_teacher_temp=0.04, teacher_temp=0.07,
    warmup_teacher_temp_epochs=30, student_temp=0.1, center_momentum=0.9) over three steps: centering (with a center
    that has moved), sharpening with the teacher-temperature warmup at ``epoch``, 2 global + local student views,
    and the center's moving average."""
    from lightly.loss import DINOLoss

    d = 64
    ref = DINOLoss(output_dim=d, warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=30,
                   student_temp=0.1, center_momentum=0.9)
    center = torch.zeros(1, 1, d)
    g = torch.Generator().manual_seed(epoch + 10 * n_local)
    for _ in range(3):
        t = [torch.randn(5, d, generator=g) for _ in range(2)]
        s = [torch.randn(5, d, generator=g) for _ in range(2 + n_local)]
        temp = dino_teacher_temp(epoch, warmup_temp=0.04, temp=0.07, warmup_epochs=30)
        ours = dino_loss(t, s, center, temp, 0.1)
        torch.testing.assert_close(ours, ref(t, s, epoch=epoch), rtol=1e-5, atol=1e-6)
        center = center * 0.9 + torch.stack(t).mean(dim=(0, 1), keepdim=True) * 0.1
        torch.testing.assert_close(center, ref.center, rtol=1e-6, atol=1e-7)
    assert float(dino_teacher_temp(0, warmup_temp=0.04, temp=0.07, warmup_epochs=30)) == pytest.approx(0.04)
    assert float(dino_teacher_temp(30, warmup_temp=0.04, temp=0.07, warmup_epochs=30)) == pytest.approx(0.07)


def test_dino_model_forward_equals_lightly_on_its_own_outputs():
    """SSLModel(dino) end to end: the loss equals lightly's DINOLoss on the model's teacher outputs of the 2 global
    views and student outputs of all views (teacher temperature in warmup at epoch 2), and the model's center buffer
    equals lightly's after each of two steps."""
    from lightly.loss import DINOLoss

    cfg_kw = {"ssl_local_crops": 2, "ssl_warmup_teacher_temp": 0.03, "ssl_teacher_temp": 0.05,
              "ssl_teacher_temp_epochs": 4}
    sm = _ssl("dino", **cfg_kw)
    ref = DINOLoss(output_dim=128, warmup_teacher_temp=0.03, teacher_temp=0.05, warmup_teacher_temp_epochs=4,
                   student_temp=0.1, center_momentum=0.9)
    for step in range(2):
        views = _views(6, (32, 32, 16, 16), seed=step)
        with torch.no_grad():
            t_out = [sm.teacher_head(sm.teacher.features(v)) for v in views[:2]]
            s_out = [sm.head(sm.clf.features(v)) for v in views]
            want = ref(t_out, s_out, epoch=2)
            got = sm(views, epoch=2, progress=0.1)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(sm.center, ref.center, rtol=1e-5, atol=1e-7)


def test_dino_center_all_reduces_across_ranks(tmp_path):
    """Under torch.distributed (2 gloo processes, different batches) every rank ends with the center of the mean of
    both ranks' batch centers, as DINO's update_center (and lightly's center_mean) all-reduce it."""
    import torch.multiprocessing as mp

    mp.start_processes(_center_worker, args=(2, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    a, b = (torch.load(tmp_path / f"center{r}.pt", weights_only=True) for r in range(2))
    t = [torch.load(tmp_path / f"t{r}.pt", weights_only=True) for r in range(2)]
    want = 0.1 * (torch.stack(t[0]).mean(dim=(0, 1), keepdim=True) + torch.stack(t[1]).mean(dim=(0, 1), keepdim=True)) / 2
    torch.testing.assert_close(a, want)
    torch.testing.assert_close(b, want)


def _center_worker(rank: int, world: int, folder: str) -> None:
    import torch.distributed as dist

    from imgclass.train.ssl import dino_batch_center

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(rank)
        t = [torch.randn(4, 8, generator=g) for _ in range(2)]
        center = torch.zeros(1, 1, 8) * 0.9 + dino_batch_center(t) * 0.1
        torch.save(t, f"{folder}/t{rank}.pt")
        torch.save(center, f"{folder}/center{rank}.pt")
    finally:
        dist.destroy_process_group()


# -- heads ---------------------------------------------------------------------------------------------------------

def test_heads_equal_lightly_heads_with_the_same_weights():
    """Reference: lightly.models.modules.heads SimCLRProjectionHead(512, 512, 128), BYOLProjectionHead(512, 1024,
    256), BYOLPredictionHead(256, 1024, 256) and the CIFAR-10 benchmark's 2-layer DINOProjectionHead(512, 2048, 256,
    2048, batch_norm=True): the same state-dict keys and shapes load strictly, and give the same outputs (train
    mode: batch statistics) and shapes."""
    from lightly.models.modules import heads

    torch.manual_seed(0)
    x = torch.randn(8, 512)
    pairs = [(heads.SimCLRProjectionHead(512, 512, 128), projection_head("simclr", 512, 512, 128), x),
             (heads.BYOLProjectionHead(512, 1024, 256), projection_head("byol", 512, 1024, 256), x),
             (heads.BYOLPredictionHead(256, 1024, 256), projection_head("byol", 256, 1024, 256), x[:, :256])]
    for ref, ours, inp in pairs:
        ours.load_state_dict(ref.state_dict(), strict=True)
        torch.testing.assert_close(ours(inp), ref(inp))
    assert pairs[0][1](x).shape == (8, 128) and pairs[1][1](x).shape == (8, 256)

    ref = heads.DINOProjectionHead(512, 2048, 256, 2048, batch_norm=True)
    ref.layers = heads.ProjectionHead([(512, 2048, nn.BatchNorm1d(2048), nn.GELU()), (2048, 256, None, None)]).layers
    ours = DINOHead(512, 2048, 256, 2048)
    sd = {k: v for k, v in ref.state_dict().items() if k.startswith("layers.")}
    sd["last_weight"] = ref.last_layer.weight_v.detach().clone()
    ours.load_state_dict(sd, strict=True)
    assert float(ref.last_layer.weight_g.min()) == float(ref.last_layer.weight_g.max()) == 1.0  # norm_last_layer
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-6)
    assert ours(x).shape == (8, 2048)


# -- teacher EMA --------------------------------------------------------------------------------------------------

def test_momentum_schedule_equals_lightly_cosine_schedule():
    """Reference: lightly.utils.scheduler.cosine_schedule(step, max_steps, base, 1) at progress step/(max_steps-1)."""
    from lightly.utils.scheduler import cosine_schedule

    for base in (0.99, 0.996):
        for step in range(0, 50, 7):
            assert momentum_at(base, step / 49) == pytest.approx(cosine_schedule(step, 50, base, 1.0), abs=1e-12)
    assert momentum_at(0.99, 0.0) == pytest.approx(0.99) and momentum_at(0.99, 1.0) == 1.0


@pytest.mark.parametrize("method", ["byol", "dino"])
def test_update_teacher_is_the_ema_of_backbone_and_head(method):
    """Reference: the formula teacher <- m teacher + (1 - m) student with m = 1 - (1 - base)(cos(pi p) + 1)/2, and
    lightly.models.utils.update_momentum on copies of the same modules; the frozen logit layer is left alone."""
    from lightly.models.utils import update_momentum

    sm = _ssl(method, ssl_momentum=0.9)
    head, t_head = (sm.projection, sm.teacher_projection) if method == "byol" else (sm.head, sm.teacher_head)
    with torch.no_grad():  # let student and teacher differ
        for p in list(sm.clf.model.parameters()) + list(head.parameters()):
            p.add_(torch.randn_like(p) * 0.1)
    before = {k: v.clone() for k, v in sm.extra_state_dict().items()}
    ref_backbone, ref_head = copy.deepcopy(sm.teacher), copy.deepcopy(t_head)
    logit = sm.clf.logit_layer()
    logit_before = [p.clone() for p in sm.teacher.logit_layer().parameters()]
    progress = 0.3
    m = 1 - (1 - 0.9) * (math.cos(math.pi * progress) + 1) / 2
    sm.update_teacher(progress)
    logit_ids = {id(p) for p in logit.parameters()}
    student = [p for p in sm.clf.parameters() if id(p) not in logit_ids]
    teacher = [q for p, q in zip(sm.clf.parameters(), sm.teacher.parameters()) if id(p) not in logit_ids]
    prefix = "teacher_projection." if method == "byol" else "teacher_head."
    for (name, q) in [(n, q) for n, q in sm.named_parameters() if n.startswith(prefix)]:
        want = m * before[name] + (1 - m) * dict(head.named_parameters())[name[len(prefix):]]
        torch.testing.assert_close(q, want)
    for p, q, name in zip(student, teacher, [n for n, _ in sm.teacher.named_parameters()]):
        torch.testing.assert_close(q, m * before["teacher." + name] + (1 - m) * p)
    for a, b in zip(sm.teacher.logit_layer().parameters(), logit_before):
        assert torch.equal(a, b)
    # lightly's update_momentum on the same student/teacher pairs
    ref_logit = {id(p) for p in ref_backbone.logit_layer().parameters()}
    with torch.no_grad():
        keep = [p for p in ref_backbone.parameters() if id(p) in ref_logit]
        saved = [p.clone() for p in keep]
        update_momentum(sm.clf, ref_backbone, m)
        for p, s in zip(keep, saved):
            p.copy_(s)
        update_momentum(head, ref_head, m)
    for a, b in zip(ref_backbone.parameters(), sm.teacher.parameters()):
        torch.testing.assert_close(a, b)
    for a, b in zip(ref_head.parameters(), t_head.parameters()):
        torch.testing.assert_close(a, b)


def test_ema_update_in_place():
    s, t = [torch.ones(3)], [torch.zeros(3)]
    ema_update(s, t, 0.75)
    assert torch.equal(t[0], torch.full((3,), 0.25))


# -- views ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method, sizes", [("simclr", [32, 32]), ("byol", [32, 32]), ("dino", [32, 32, 12, 12, 12]),
                                           ("rotnet", [32]), ("simmim", [32])])
def test_views_reproducible_per_seed_with_the_expected_sizes(method, sizes):
    """Invariant: the same torch/random seed gives the same uint8 views (what TrainView relies on), another seed
    different ones; each method makes its number of views at their sizes (DINO: 2 global + ssl_local_crops local)."""
    import random

    cfg = TrainConfig(ssl=method, ssl_local_crops=3, ssl_local_size=12, ssl_blur=(0.5, 0.5, 0.5),
                      ssl_solarize=(0.2, 0.5))
    make = build_views(cfg, 32)
    img = torch.from_numpy(rgb_image(3)).permute(2, 0, 1).contiguous()

    def run(seed):
        torch.manual_seed(seed)
        random.seed(seed)
        return make(img)

    a, b, c = run(5), run(5), run(6)
    assert [v.shape[-1] for v in a] == sizes and all(v.shape[:2] == (3, v.shape[-1]) for v in a)
    assert all(v.dtype == torch.uint8 for v in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert any(not torch.equal(x, y) for x, y in zip(a, c))
    if len(a) > 1:
        assert not torch.equal(a[0], a[1])  # two different augmentations of one image


def test_view_defaults_follow_the_method():
    """The None settings take the method's benchmark default: SimCLR crop scale (0.08, 1) without solarization,
    DINO (0.4, 1) with the second view solarized at p 0.2; jitter saturation 0.8 s (SimCLR) or 0.4 s (BYOL/DINO)."""
    def find(pipeline, kind):
        out = []
        for t in pipeline.transforms:
            out += [t] if isinstance(t, kind) else find(t, kind) if hasattr(t, "transforms") else []
        return out

    from torchvision.transforms import v2

    simclr = build_views(TrainConfig(ssl="simclr"), 32).pipelines
    dino = build_views(TrainConfig(ssl="dino"), 32).pipelines
    assert find(simclr[0], v2.RandomResizedCrop)[0].scale == (0.08, 1.0)
    assert find(dino[0], v2.RandomResizedCrop)[0].scale == (0.4, 1.0)
    assert not find(simclr[1], v2.RandomSolarize) and not find(dino[0], v2.RandomSolarize)
    assert find(dino[1], v2.RandomSolarize)[0].p == 0.2
    cj = find(simclr[0], v2.ColorJitter)[0]
    assert cj.brightness == (0.6, 1.4) and cj.saturation == (0.6, 1.4) and cj.hue == (-0.1, 0.1)
    cj = find(build_views(TrainConfig(ssl="byol"), 32).pipelines[0], v2.ColorJitter)[0]
    assert cj.brightness == (0.6, 1.4) and cj.saturation == (0.8, 1.2)  # BYOL's 0.4 / 0.2


# -- RotNet ------------------------------------------------------------------------------------------------------

def test_rotnet_rotations_and_labels():
    """Reference: torch.rot90 by k quarter turns (counter-clockwise in the H, W plane) for label k, images stacked
    rotation by rotation; the loss is the cross-entropy of the 4-way head on those features."""
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    xs, labels = rotations(x)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert torch.equal(xs[:2], x)
    assert torch.equal(xs[2, :, 0, 0], x[0, :, 0, 3])  # one quarter turn: the top-right corner to the top-left
    assert torch.equal(xs[4], x[0].flip(1).flip(2))
    assert torch.equal(xs[7], torch.rot90(x[1], 3, dims=(1, 2)))
    sm = _ssl("rotnet")
    v = _views(3)[0]
    with torch.no_grad():
        xs, labels = rotations(v)
        want = F.cross_entropy(sm.rotation_head(sm.clf.features(xs)), labels)
        got = sm([v], epoch=0, progress=0.0)
    torch.testing.assert_close(got, want)
    with pytest.raises(UsageError, match="square"):
        rotations(torch.zeros(1, 3, 4, 6))


# -- SimMIM --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ratio", [0.6, 0.5, 0.75, 0.3])
def test_simmim_mask_ratio_is_exact(ratio):
    """SimMIM's MaskGenerator: each mask has exactly ceil(ratio x patches) masked patches, placed differently per
    sample, reproducible under the torch seed."""
    torch.manual_seed(0)
    m = random_patch_mask(16, (4, 4), ratio)
    assert m.shape == (16, 4, 4) and m.dtype == torch.bool
    assert (m.flatten(1).sum(1) == math.ceil(16 * ratio)).all()
    assert len({tuple(r.flatten().tolist()) for r in m}) > 1
    torch.manual_seed(0)
    assert torch.equal(m, random_patch_mask(16, (4, 4), ratio))


def test_simmim_loss_counts_masked_pixels_only():
    """Reference: SimMIM's loss (sum of |x - x_rec| x mask) / (mask.sum() + 1e-5) / channels: changing the
    predictions of unmasked pixels leaves it unchanged; changing a masked pixel changes it."""
    g = torch.Generator().manual_seed(0)
    x, rec = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    mask = (torch.rand(2, 1, 8, 8, generator=g) > 0.5).float()
    loss = simmim_loss(x, rec, mask)
    want = (F.l1_loss(rec, x, reduction="none") * mask).sum() / (mask.sum() + 1e-5) / 3
    torch.testing.assert_close(loss, want)
    other = torch.where(mask.bool(), rec, rec + 5.0)
    torch.testing.assert_close(simmim_loss(x, other, mask), loss)
    other = torch.where(mask.bool(), rec + 1.0, rec)
    assert float(simmim_loss(x, other, mask)) != pytest.approx(float(loss))


@pytest.mark.parametrize("decoder_depth", [0, 2])
def test_simmim_tiny_vit_forward_backward_and_mask_token(decoder_depth):
    """A 1-block ViT (patch 4, 32 px, mask patch 8): the loss backpropagates into the ViT, the mask token and the
    decoder, not into the frozen logit layer; the reconstruction does not depend on the pixels of masked patches
    (their embeddings are replaced by the mask token), and does on unmasked ones; with SimMIM's linear head and
    with transformer decoder blocks."""
    sm = _ssl("simmim", ssl_decoder_depth=decoder_depth)
    v = _views(4)[0]
    torch.manual_seed(3)
    loss = sm([v], epoch=0, progress=0.0)
    loss.backward()
    assert loss.ndim == 0 and float(loss.detach()) > 0
    assert sm.mask_token.grad is not None and sm.mask_token.grad.abs().sum() > 0
    assert all(p.grad is not None for p in sm.trainable_parameters())
    assert all(p.grad is None for p in sm.clf.logit_layer().parameters())

    sm.eval()
    torch.manual_seed(1)
    token_mask = random_patch_mask(4, (4, 4), 0.6).repeat_interleave(2, 1).repeat_interleave(2, 2)
    pixel_mask = token_mask.repeat_interleave(4, 1).repeat_interleave(4, 2).unsqueeze(1)
    with torch.no_grad():
        rec = sm.simmim_reconstruct(v, token_mask)
        assert rec.shape == v.shape
        changed_masked = torch.where(pixel_mask, torch.rand_like(v), v)
        torch.testing.assert_close(sm.simmim_reconstruct(changed_masked, token_mask), rec)
        changed_visible = torch.where(pixel_mask, v, torch.rand_like(v))
        assert not torch.allclose(sm.simmim_reconstruct(changed_visible, token_mask), rec)


def test_simmim_norm_pix_target_equals_maes_formula():
    """Reference: MAE's norm_pix_loss target (models_mae.py: patchify with einsum('nchpwq->nhwpqc'), then
    (target - mean) / (var + 1e-6) ** .5 over each patch's p*p*3 values): ``patch_normalized`` is that target,
    unpatchified; the SimMIM loss with ssl_norm_pix is the L1 loss against it on the masked pixels."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 16, 16, generator=g) * 2 + 0.5
    p = 4
    h = w = 16 // p
    t = torch.einsum("nchpwq->nhwpqc", x.reshape(3, 3, h, p, w, p)).reshape(3, h * w, p * p * 3)
    want = (t - t.mean(dim=-1, keepdim=True)) / (t.var(dim=-1, keepdim=True) + 1.0e-6) ** 0.5
    y = patch_normalized(x, p)
    got = torch.einsum("nchpwq->nhwpqc", y.reshape(3, 3, h, p, w, p)).reshape(3, h * w, p * p * 3)
    torch.testing.assert_close(got, want)

    sm = _ssl("simmim", ssl_norm_pix=True).eval()
    v = _views(2)[0]
    torch.manual_seed(5)
    with torch.no_grad():
        loss = sm([v], epoch=0, progress=0.0)
    torch.manual_seed(5)
    mask = random_patch_mask(2, (4, 4), 0.6).repeat_interleave(2, 1).repeat_interleave(2, 2)
    with torch.no_grad():
        rec = sm.simmim_reconstruct(sm.clf.normalize(v), mask)
    pixel_mask = mask.repeat_interleave(4, 1).repeat_interleave(4, 2).unsqueeze(1).float()
    torch.testing.assert_close(loss, simmim_loss(patch_normalized(sm.clf.normalize(v), 4), rec, pixel_mask))
    assert float(loss) != pytest.approx(float(simmim_loss(sm.clf.normalize(v), rec, pixel_mask)))


@pytest.mark.parametrize("decoder_depth", [0, 1])
def test_simmim_class_token_trains_only_through_decoder_blocks(decoder_depth):
    """Invariant: SimMIM's linear head reads the patch tokens only, so the encoder's output class token gets no
    gradient (its last layer is untrained for a class-token probe); decoder blocks over all tokens give it one."""
    sm = _ssl("simmim", ssl_decoder_depth=decoder_depth)
    out = {}

    def keep(module, inputs, output):
        output.retain_grad()
        out["t"] = output

    handle = sm.clf.model.norm.register_forward_hook(keep)
    torch.manual_seed(3)
    sm([_views(4)[0]], epoch=0, progress=0.0).backward()
    handle.remove()
    cls_grad = out["t"].grad[:, 0].abs().sum()
    assert out["t"].grad[:, 1:].abs().sum() > 0
    assert (cls_grad > 0) == bool(decoder_depth)


def test_simmim_refuses_other_backbones_and_bad_mask_patches():
    with pytest.raises(UsageError, match="Vision Transformer"):
        SSLModel(_clf(), TrainConfig(ssl="simmim"))
    with pytest.raises(UsageError, match="multiple of the ViT patch"):
        _ssl("simmim", ssl_mask_patch=6)
    with pytest.raises(UsageError, match="SimMIM settings"):
        _ssl("simclr", ssl_decoder_depth=2)


# -- the model: parameters, resume state, training -----------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_every_trainable_parameter_gets_a_gradient(method):
    """What DDP needs (no unused parameters): after one backward every trainable parameter has a gradient; the logit
    layer is frozen (requires_grad False) and the teacher receives none."""
    sm = _ssl(method, ssl_local_crops=1, ssl_local_size=16)
    sizes = {"dino": (32, 32, 16), "simclr": (32, 32), "byol": (32, 32)}.get(method, (32,))
    loss = sm(_views(4, sizes), epoch=0, progress=0.0)
    loss.backward()
    params = sm.trainable_parameters()
    assert params and all(p.requires_grad and p.grad is not None for p in params)
    logit = list(sm.clf.logit_layer().parameters())
    assert logit and all(not p.requires_grad for p in logit)
    ids = {id(p) for p in params}
    assert not ids & {id(p) for p in logit}
    if sm.teacher is not None:
        assert all(p.grad is None and not p.requires_grad for p in sm.teacher.parameters())
        assert not ids & {id(p) for p in sm.teacher.parameters()}
    assert {id(p) for p in sm.parameters() if p.requires_grad} == ids


@pytest.mark.parametrize("method", ["byol", "dino", "simclr"])
def test_extra_state_dict_round_trip_gives_the_identical_loss(method):
    """Resume: a model trained a step, saved as backbone weights + extra_state_dict (through torch.save and a
    weights_only load), restored into a fresh model of another seed, gives the identical loss on the same views and
    the identical teacher / center / heads."""
    sm = _ssl(method, seed=0)
    opt = torch.optim.SGD(sm.trainable_parameters(), lr=0.1)
    sizes = (32, 32)
    loss = sm(_views(6, sizes), epoch=1, progress=0.0)
    loss.backward()
    opt.step()
    sm.update_teacher(0.2)
    buf = io.BytesIO()
    torch.save({"model": sm.clf.model.state_dict(), "ssl": sm.extra_state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    fresh = _ssl(method, seed=7)
    fresh.clf.model.load_state_dict(state["model"])
    fresh.load_extra_state_dict(state["ssl"])
    for k, v in sm.extra_state_dict().items():
        assert torch.equal(v, fresh.extra_state_dict()[k]), k
    views = _views(6, sizes, seed=9)
    with torch.no_grad():
        assert torch.equal(sm(views, epoch=2, progress=0.5), fresh(views, epoch=2, progress=0.5))
    with pytest.raises(UsageError, match="does not fit"):
        fresh.load_extra_state_dict({})


def test_simclr_training_steps_reduce_the_loss():
    """Sanity: a few SGD steps on a fixed batch of two random views per image reduce the NT-Xent loss."""
    sm = _ssl("simclr")
    opt = torch.optim.SGD(sm.trainable_parameters(), lr=0.05, momentum=0.9)
    views = _views(16)
    losses = []
    for _ in range(8):
        loss = sm(views, epoch=0, progress=0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0] - 0.1, losses


# -- the backbone ----------------------------------------------------------------------------------------------

def test_cifar_resnet18_is_torchvision_resnet18_with_the_cifar_stem_and_reloads_through_file(tmp_path):
    """Reference: torchvision.models.resnet18 with conv1 = 3x3 stride 1 and no max-pool (same state dict, same
    logits); saved with save_checkpoint, ``load_model("file:...")`` rebuilds it with equal logits."""
    import torchvision

    from imgclass import load_model

    clf = _clf("cifar_resnet18", seed=2, zero_init_last=True).eval()
    tv = torchvision.models.resnet18(num_classes=10)
    tv.conv1, tv.maxpool = nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.Identity()
    tv.load_state_dict(clf.model.state_dict(), strict=True)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(clf.model(clf.normalize(x)), tv.eval()(clf.normalize(x)))
        assert clf.features(x).shape == (3, 512)
        path = save_checkpoint(clf, tmp_path / "r18.safetensors")
        loaded = load_model(f"file:{path}").eval()
        assert loaded.arch == "cifar_resnet18"
        torch.testing.assert_close(loaded(x), clf(x))


@pytest.mark.parametrize("method", METHODS)
def test_losses_stay_float32_under_autocast(method):
    """The loop trains under autocast (float16 on CUDA); the losses (softmax over the DINO prototypes at teacher
    temperature 0.04, NT-Xent similarities) are computed in float32 inside it (checked with CPU bfloat16 autocast)."""
    sm = _ssl(method, ssl_local_crops=1, ssl_local_size=16)
    sizes = {"dino": (32, 32, 16), "simclr": (32, 32), "byol": (32, 32)}.get(method, (32,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = sm(_views(4, sizes), epoch=0, progress=0.0)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    if method == "dino":
        assert sm.center.dtype == torch.float32


@pytest.mark.parametrize("method", ["byol", "dino"])
def test_teacher_runs_in_train_mode_like_lightlys(method):
    """The EMA teacher uses batch statistics (train mode) as in lightly's benchmark models, even when the student
    Classifier was in eval mode when SSLModel was built; building does not move the student's batch-norm statistics
    and gives back the student's mode."""
    clf = _clf().eval()
    stats = {k: v.clone() for k, v in clf.model.state_dict().items() if "running" in k}
    sm = SSLModel(clf, TrainConfig(ssl=method, ssl_proj_hidden=32, ssl_proj_dim=16, ssl_dino_out_dim=64))
    assert not clf.training and all(m.training for m in sm.teacher.modules())
    assert all(torch.equal(v, clf.model.state_dict()[k]) for k, v in stats.items())
