"""Self-supervised pretraining objectives: SimCLR, BYOL, DINO, RotNet and SimMIM on a Classifier's backbone.

:func:`build_views` makes the per-sample views (uint8, seeded by the training data's per-sample seeding);
:class:`SSLModel` holds the backbone (``clf``), the method's heads and, for BYOL and DINO, an EMA teacher, and
returns the loss of a batch of views. The losses and heads are our own, written to equal lightly's
(``NTXentLoss``, ``NegativeCosineSimilarity``, ``DINOLoss``, ``SimCLRProjectionHead``, ``BYOLProjectionHead``,
``DINOProjectionHead``, ``update_momentum``, ``cosine_schedule``) on the same inputs, which the tests check: lightly is
not a runtime dependency. Defaults follow lightly's CIFAR-10 benchmark (see the settings in ``config.py``).

References: SimCLR (Chen et al. 2020), BYOL (Grill et al. 2020), DINO (Caron et al. 2021), RotNet (Gidaris et al.
2018), SimMIM (Xie et al. 2022).
"""

from __future__ import annotations

import copy
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

from ..errors import UsageError

__all__ = ["METHODS", "build_views", "SSLModel", "nt_xent_loss", "byol_loss", "dino_loss", "dino_teacher_temp",
           "simmim_loss", "patch_normalized", "momentum_at", "ema_update", "random_patch_mask", "projection_head"]

METHODS = ("simclr", "byol", "dino", "rotnet", "simmim")

# method defaults of the settings that are None in the config (lightly's CIFAR-10 benchmark, else the paper)
_PROJ_HIDDEN = {"simclr": 512, "byol": 1024, "dino": 2048}
_PROJ_DIM = {"simclr": 128, "byol": 256, "dino": 256}
_GLOBAL_SCALE = {"simclr": (0.08, 1.0), "byol": (0.08, 1.0), "dino": (0.4, 1.0)}
_SOLARIZE = {"simclr": (0.0, 0.0), "byol": (0.0, 0.2), "dino": (0.0, 0.2)}


def _method(cfg) -> str:
    if cfg.ssl not in METHODS:
        raise UsageError(f"ssl must be one of {', '.join(METHODS)}, got {cfg.ssl!r}")
    if cfg.ssl != "simmim" and (cfg.ssl_norm_pix or cfg.ssl_decoder_depth):
        raise UsageError(f"ssl_norm_pix and ssl_decoder_depth are SimMIM settings; ssl={cfg.ssl} does not use them")
    return cfg.ssl


# -- views --------------------------------------------------------------------------------------------------------

def _blur(size: int, p: float) -> list:
    """Gaussian blur with probability p, sigma in [0.1, 2] and a kernel of ~10% of the side (SimCLR)."""
    if p <= 0:
        return []
    k = max(3, int(0.1 * size) // 2 * 2 + 1)
    return [v2.RandomApply([v2.GaussianBlur(k, sigma=(0.1, 2.0))], p=p)]


def _two_view_pipeline(cfg, method: str, size: int, scale, blur: float, solarize: float) -> v2.Compose:
    """RandomResizedCrop, flip, colour jitter (p=0.8), grayscale, blur, solarize, as lightly's SimCLR / BYOL / DINO
    transforms order them, on uint8 tensors."""
    s = cfg.ssl_color_jitter
    sat = 0.8 * s if method == "simclr" else 0.4 * s
    steps = [v2.RandomResizedCrop(size, scale=tuple(scale), antialias=True),
             v2.RandomHorizontalFlip()]
    if s > 0:
        steps.append(v2.RandomApply([v2.ColorJitter(0.8 * s, 0.8 * s, sat, 0.2 * s)], p=0.8))
    if cfg.ssl_gray_prob > 0:
        steps.append(v2.RandomGrayscale(p=cfg.ssl_gray_prob))
    steps += _blur(size, blur)
    if solarize > 0:
        steps.append(v2.RandomSolarize(threshold=128, p=solarize))
    return v2.Compose(steps)


class _Views:
    """uint8 (3, H, W) -> a list of uint8 views, one per pipeline (picklable for DataLoader workers)."""

    def __init__(self, pipelines: list[Callable]):
        self.pipelines = pipelines

    def __call__(self, img: torch.Tensor) -> list[torch.Tensor]:
        return [p(img) for p in self.pipelines]

    def __len__(self) -> int:
        return len(self.pipelines)


def build_views(cfg, size: int) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """The per-sample view maker of ``cfg.ssl``: uint8 (3, H, W) in, a list of uint8 (3, h, w) views out, all
    randomness from torch's global RNG (which :class:`imgclass.train.data.TrainView` seeds per sample).

    simclr / byol: 2 views at ``size`` (BYOL's asymmetric blur / solarize by view); dino: 2 global views at ``size``
    plus ``ssl_local_crops`` local views at ``ssl_local_size``; rotnet: 1 view (pad 4, random crop, flip);
    simmim: 1 view (RandomResizedCrop(size, scale=(0.67, 1)), flip, as SimMIM)."""
    from .data import _Resize

    method = _method(cfg)
    if method == "rotnet":
        return _Views([v2.Compose([_Resize(size), v2.RandomCrop(size, padding=4), v2.RandomHorizontalFlip()])])
    if method == "simmim":
        return _Views([v2.Compose([v2.RandomResizedCrop(size, scale=(0.67, 1.0), ratio=(3 / 4, 4 / 3),
                                                        antialias=True), v2.RandomHorizontalFlip()])])
    scale = cfg.ssl_global_crop_scale or _GLOBAL_SCALE[method]
    solarize = cfg.ssl_solarize if cfg.ssl_solarize is not None else _SOLARIZE[method]
    blur = cfg.ssl_blur
    views = [_two_view_pipeline(cfg, method, size, scale, blur[i], solarize[i]) for i in (0, 1)]
    if method == "dino":
        local = _two_view_pipeline(cfg, method, cfg.ssl_local_size, cfg.ssl_local_scale, blur[2], 0.0)
        views += [local] * cfg.ssl_local_crops
    return _Views(views)


# -- heads --------------------------------------------------------------------------------------------------------

class _MLP(nn.Module):
    """Blocks of Linear (no bias where a batch norm follows), batch norm, non-linearity: lightly's ProjectionHead
    (same layer order and state-dict keys ``layers.N.*``)."""

    def __init__(self, blocks: list[tuple[int, int, bool, type | None]]):
        super().__init__()
        layers: list[nn.Module] = []
        for d_in, d_out, bn, act in blocks:
            layers.append(nn.Linear(d_in, d_out, bias=not bn))
            if bn:
                layers.append(nn.BatchNorm1d(d_out))
            if act is not None:
                layers.append(act())
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def projection_head(kind: str, d_in: int, hidden: int, d_out: int, *, bn: bool = True) -> nn.Module:
    """simclr: Linear-BN-ReLU-Linear-BN (lightly SimCLRProjectionHead, 2 layers, batch norm); byol (also the
    predictor): Linear-BN-ReLU-Linear (BYOLProjectionHead / BYOLPredictionHead). ``bn=False``: the same without
    batch norm (biases instead)."""
    if kind == "simclr":
        return _MLP([(d_in, hidden, bn, nn.ReLU), (hidden, d_out, bn, None)])
    if kind == "byol":
        return _MLP([(d_in, hidden, bn, nn.ReLU), (hidden, d_out, False, None)])
    raise ValueError(kind)


class DINOHead(nn.Module):
    """DINO's head as lightly's CIFAR-10 benchmark builds it: Linear-BN-GELU-Linear to the bottleneck, l2
    normalization, then a weight-normalized linear layer with its norm fixed to 1 (``norm_last_layer``): each
    output row of ``last_weight`` is normalized, which equals lightly's ``weight_norm`` with ``weight_g`` = 1
    (kept as a plain parameter so the head deep-copies and loads with ``weights_only``)."""

    def __init__(self, d_in: int, hidden: int, bottleneck: int, d_out: int, *, bn: bool = True):
        super().__init__()
        self.layers = _MLP([(d_in, hidden, bn, nn.GELU), (hidden, bottleneck, False, None)]).layers
        self.last_weight = nn.Parameter(torch.empty(d_out, bottleneck))
        for m in self.layers:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02, a=-2, b=2)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.kaiming_uniform_(self.last_weight, a=math.sqrt(5))  # nn.Linear's init, as lightly's last layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.layers(x), dim=-1, p=2)
        return F.linear(x, F.normalize(self.last_weight, dim=1))


# -- losses (equal to lightly's on the same inputs; tests/test_ssl_methods.py) -----------------------------------

class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for this rank's part (all-reduce, then this rank's slice;
    works on gloo, which has no reduce-scatter), so a loss over gathered embeddings back-propagates into every
    rank's own batch: lightly's GatherLayer."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world = torch.distributed.get_world_size()
        parts = [torch.empty_like(x) for _ in range(world)]
        torch.distributed.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        torch.distributed.all_reduce(grad)
        n = grad.shape[0] // torch.distributed.get_world_size()
        r = torch.distributed.get_rank()
        return grad[r * n:(r + 1) * n]


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and \
        torch.distributed.get_world_size() > 1


def nt_xent_loss(z0: torch.Tensor, z1: torch.Tensor, temperature: float, *, gather: bool | None = None
                 ) -> torch.Tensor:
    """SimCLR's NT-Xent: each of the 2N views against its positive and the other 2N - 2 views (lightly NTXentLoss).

    Under torchrun (``gather`` None: whenever torch.distributed runs with several processes) the negatives are the
    views of every process's batch, gathered with gradients, as in SimCLR and lightly's ``gather_distributed=True``:
    each process's loss is the mean over its own 2n rows, so the processes' average (DDP's) is the loss of one
    process holding the whole batch, and N processes x batch B train as one process x batch N*B. Every process must
    hold the same number of views (the training loop keeps drop_last under torchrun)."""
    n = z0.shape[0]
    z0, z1 = F.normalize(z0, dim=1), F.normalize(z1, dim=1)
    if gather is None:
        gather = _distributed()
    if gather:
        a0, a1 = _GatherWithGrad.apply(z0), _GatherWithGrad.apply(z1)
        offset = torch.distributed.get_rank() * n
    else:
        a0, a1, offset = z0, z1, 0
    m = a0.shape[0]
    own = torch.zeros(n, m, dtype=torch.bool, device=z0.device)
    own[torch.arange(n), torch.arange(n) + offset] = True  # a view against itself is not a negative
    l00 = (z0 @ a0.t() / temperature).masked_fill(own, float("-inf"))
    l01 = z0 @ a1.t() / temperature
    l10 = z1 @ a0.t() / temperature
    l11 = (z1 @ a1.t() / temperature).masked_fill(own, float("-inf"))
    logits = torch.cat([torch.cat([l01, l00], 1), torch.cat([l10, l11], 1)])
    target = (torch.arange(n, device=z0.device) + offset).repeat(2)  # the positive: column i of the other view
    return F.cross_entropy(logits, target)


def byol_loss(p0: torch.Tensor, p1: torch.Tensor, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
    """Symmetric BYOL loss as lightly's CIFAR-10 benchmark: 0.5 (NCS(p0, z1) + NCS(p1, z0)), NCS the mean negative
    cosine similarity (lightly NegativeCosineSimilarity); the targets z are the teacher's (no gradient)."""
    def ncs(a, b):
        return -F.cosine_similarity(a, b, dim=1, eps=1e-8).mean()

    return 0.5 * (ncs(p0, z1.detach()) + ncs(p1, z0.detach()))


def dino_teacher_temp(epoch: int, *, warmup_temp: float, temp: float, warmup_epochs: int) -> torch.Tensor:
    """DINO's teacher temperature: linear from ``warmup_temp`` to ``temp`` over ``warmup_epochs``, then ``temp``
    (lightly DINOLoss's ``teacher_temp_schedule``, same float32 linspace)."""
    if epoch < warmup_epochs:
        return torch.linspace(warmup_temp, temp, warmup_epochs)[epoch]
    return torch.tensor(temp)


def dino_loss(teacher_out: list[torch.Tensor], student_out: list[torch.Tensor], center: torch.Tensor,
              teacher_temp: torch.Tensor | float, student_temp: float) -> torch.Tensor:
    """DINO's cross-entropy between the centred, sharpened teacher softmax of each global view and the student's
    log-softmax of every other view, averaged over the pairs and the batch (lightly DINOLoss, without the center
    update: see :func:`dino_batch_center`)."""
    t = torch.stack(teacher_out)
    s = torch.stack(student_out)
    t_prob = F.softmax((t - center) / torch.as_tensor(teacher_temp, device=t.device), dim=-1)
    s_log = F.log_softmax(s / student_temp, dim=-1)
    loss = -torch.einsum("tbd,sbd->ts", t_prob, s_log)
    loss = loss * (1 - torch.eye(*loss.shape, device=loss.device, dtype=loss.dtype))  # not a view with itself
    n_terms = loss.numel() - min(loss.shape)
    return loss.sum() / (n_terms * t.shape[1])


@torch.no_grad()
def dino_batch_center(teacher_out: list[torch.Tensor]) -> torch.Tensor:
    """The mean teacher output over views and batch, all-reduced across ranks under torch.distributed (DINO's
    ``update_center``), shape (1, 1, D)."""
    t = torch.stack(teacher_out)
    c = t.mean(dim=(0, 1), keepdim=True)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(c)
        c = c / torch.distributed.get_world_size()
    return c


def momentum_at(base: float, progress: float) -> float:
    """The EMA momentum after ``progress`` (0..1) of the run: cosine from ``base`` to 1 (BYOL; equals lightly's
    ``cosine_schedule(step, max_steps, base, 1)`` at progress = step / (max_steps - 1))."""
    p = min(max(progress, 0.0), 1.0)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * p) + 1.0) / 2.0


@torch.no_grad()
def ema_update(student: list[torch.Tensor], teacher: list[torch.Tensor], m: float) -> None:
    """teacher <- m teacher + (1 - m) student, in place (lightly ``update_momentum``)."""
    torch._foreach_mul_(teacher, m)
    torch._foreach_add_(teacher, student, alpha=1.0 - m)


def random_patch_mask(batch: int, grid: tuple[int, int], ratio: float, *, device=None) -> torch.Tensor:
    """(batch, gh, gw) bool masks, each with exactly ceil(ratio * gh * gw) masked patches at uniformly random places
    (SimMIM's MaskGenerator), drawn from torch's global (CPU) RNG."""
    n = grid[0] * grid[1]
    count = int(math.ceil(n * ratio))
    order = torch.rand(batch, n).argsort(dim=1)
    mask = torch.zeros(batch, n, dtype=torch.bool)
    mask.scatter_(1, order[:, :count], True)
    return mask.view(batch, *grid).to(device)


def simmim_loss(x: torch.Tensor, x_rec: torch.Tensor, pixel_mask: torch.Tensor) -> torch.Tensor:
    """SimMIM's L1 reconstruction loss on the masked pixels only: sum |x - x_rec| over masked pixels and channels /
    (masked pixels + 1e-5) / channels (the paper's code). ``pixel_mask`` is (N, 1, H, W) in {0, 1}."""
    rec = F.l1_loss(x_rec, x, reduction="none")
    return (rec * pixel_mask).sum() / (pixel_mask.sum() + 1e-5) / x.shape[1]


def patch_normalized(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(N, C, H, W) -> the same pixels with each ``patch`` x ``patch`` patch (all channels together) shifted and
    scaled to mean 0 and unit (unbiased) variance, eps 1e-6 (MAE's ``norm_pix_loss`` target)."""
    n, c, h, w = x.shape
    t = x.reshape(n, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 1, 3, 5).reshape(
        n, h // patch, w // patch, -1)
    t = (t - t.mean(dim=-1, keepdim=True)) / (t.var(dim=-1, keepdim=True) + 1e-6) ** 0.5
    return t.reshape(n, h // patch, w // patch, c, patch, patch).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)


# -- the model ----------------------------------------------------------------------------------------------------

def _full_precision(t: torch.Tensor):
    """Losses in float32 even inside the loop's autocast region (softmax over 2048 prototypes, similarities / 0.04)."""
    return torch.autocast(device_type=t.device.type, enabled=False)


def _frozen_copy(module: nn.Module) -> nn.Module:
    """The EMA teacher's copy: no gradients, in train mode like the student (batch norm on batch statistics, as
    lightly's benchmark models run their teachers), whatever mode the student happened to be in."""
    teacher = copy.deepcopy(module).train()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


class SSLModel(nn.Module):
    """The backbone ``clf`` (a Classifier; its logit layer frozen and unused) plus the heads of ``cfg.ssl``;
    ``forward(views, epoch=, progress=)`` returns the loss. Under torchrun the loop wraps this module in DDP."""

    def __init__(self, clf, cfg):
        super().__init__()
        self.method = _method(cfg)
        self.cfg = cfg
        self.clf = clf
        was_training = clf.training
        clf.eval()  # the probing forwards must not move batch-norm statistics
        try:
            logit = clf.logit_layer()
            p = next(clf.parameters())
            c, h, w = clf.config.input_size
            with torch.no_grad():
                dim = int(clf.features(torch.full((2, c, h, w), 0.5, device=p.device)).shape[1])
        finally:
            clf.train(was_training)
        for q in logit.parameters():
            q.requires_grad_(False)
        self._logit_ids = {id(q) for q in logit.parameters()}
        self.feature_dim = dim
        m = self.method
        hidden = cfg.ssl_proj_hidden or _PROJ_HIDDEN.get(m, 0)
        out = cfg.ssl_proj_dim or _PROJ_DIM.get(m, 0)
        self.teacher = None
        if m == "simclr":
            self.projection = projection_head("simclr", dim, hidden, out, bn=cfg.ssl_head_bn)
        elif m == "byol":
            self.projection = projection_head("byol", dim, hidden, out, bn=cfg.ssl_head_bn)
            self.prediction = projection_head("byol", out, hidden, out, bn=cfg.ssl_head_bn)
            self.teacher = _frozen_copy(clf)
            self.teacher_projection = _frozen_copy(self.projection)
        elif m == "dino":
            self.head = DINOHead(dim, hidden, out, cfg.ssl_dino_out_dim, bn=cfg.ssl_head_bn)
            self.teacher = _frozen_copy(clf)
            self.teacher_head = _frozen_copy(self.head)
            self.register_buffer("center", torch.zeros(1, 1, cfg.ssl_dino_out_dim))
        elif m == "rotnet":
            self.rotation_head = nn.Linear(dim, 4)
        elif m == "simmim":
            self._init_simmim(clf, cfg)
        self.to(next(clf.parameters()).device)

    # -- SimMIM ------------------------------------------------------------------------------------------------
    def _init_simmim(self, clf, cfg) -> None:
        try:
            from timm.models.vision_transformer import VisionTransformer
        except ImportError:  # pragma: no cover - timm is a dependency
            VisionTransformer = ()
        vit = clf.model
        if not isinstance(vit, VisionTransformer):
            raise UsageError(f"ssl=simmim needs a timm Vision Transformer backbone (e.g. model "
                             f"timm:vit_tiny_patch16_224 with arch_kwargs {{img_size: 32, patch_size: 4}}), got "
                             f"{type(vit).__name__} ({clf.source})")
        if clf.config.layout != "nchw":
            raise UsageError("ssl=simmim needs the model's nchw input layout")
        if getattr(vit, "dynamic_img_size", False):
            raise UsageError("ssl=simmim needs a ViT with a fixed image size (dynamic_img_size=False)")
        patch = vit.patch_embed.patch_size
        patch = patch[0] if isinstance(patch, (tuple, list)) else int(patch)
        size = clf.config.input_size[1]
        mp = cfg.ssl_mask_patch
        if mp % patch or size % mp:
            raise UsageError(f"ssl_mask_patch={mp} must be a multiple of the ViT patch ({patch}) and divide the "
                             f"image size ({size})")
        self.vit_patch = patch
        self.mask_token = nn.Parameter(torch.zeros(1, 1, vit.embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.decoder_blocks = None
        if cfg.ssl_decoder_depth:
            from timm.models.vision_transformer import Block
            heads = vit.blocks[0].attn.num_heads if len(vit.blocks) else 1
            self.decoder_blocks = nn.Sequential(*(Block(vit.embed_dim, heads, mlp_ratio=4.0, qkv_bias=True)
                                                  for _ in range(cfg.ssl_decoder_depth)),
                                                nn.LayerNorm(vit.embed_dim))
            for m in self.decoder_blocks.modules():  # MAE's decoder initialization (xavier-uniform linears)
                if isinstance(m, nn.Linear):
                    nn.init.xavier_uniform_(m.weight)
                    nn.init.zeros_(m.bias)
        self.decoder = nn.Sequential(nn.Conv2d(vit.embed_dim, patch * patch * 3, 1), nn.PixelShuffle(patch))

    def simmim_reconstruct(self, x: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """Normalized pixels ``x`` (N, 3, H, W) and a (N, H/p, W/p) bool mask of ViT tokens -> the reconstruction:
        masked tokens' embeddings replaced by the mask token before position embedding and the blocks, a 1x1 conv
        decoder and pixel shuffle back to (N, 3, H, W) (SimMIM); with ``ssl_decoder_depth`` transformer blocks over
        all tokens first (MAE's deeper decoder)."""
        vit = self.clf.model
        t = vit.patch_embed(x)  # (N, L, D)
        w = token_mask.flatten(1).unsqueeze(-1).to(t.dtype)
        t = t * (1 - w) + self.mask_token.to(t.dtype) * w
        t = vit._pos_embed(t)
        t = vit.patch_drop(t)
        t = vit.norm_pre(t)
        t = vit.blocks(t)
        t = vit.norm(t)
        if self.decoder_blocks is not None:  # the class token takes part, so the encoder's last layer trains it too
            t = self.decoder_blocks(t)
        t = t[:, vit.num_prefix_tokens:]
        n, gh, gw = token_mask.shape
        z = t.transpose(1, 2).reshape(n, -1, gh, gw)
        return self.decoder(z)

    def _simmim(self, view: torch.Tensor) -> torch.Tensor:
        x = self.clf.normalize(view)
        n, _, h, w = x.shape
        mp, p = self.cfg.ssl_mask_patch, self.vit_patch
        mask = random_patch_mask(n, (h // mp, w // mp), self.cfg.ssl_mask_ratio, device=x.device)
        r = mp // p
        token_mask = mask.repeat_interleave(r, 1).repeat_interleave(r, 2)
        x_rec = self.simmim_reconstruct(x, token_mask)
        pixel_mask = token_mask.repeat_interleave(p, 1).repeat_interleave(p, 2).unsqueeze(1)
        with _full_precision(x_rec):
            target = patch_normalized(x.float(), p) if self.cfg.ssl_norm_pix else x.float()
            return simmim_loss(target, x_rec.float(), pixel_mask.float())

    # -- the interface the training loop calls ------------------------------------------------------------------
    def forward(self, views: list[torch.Tensor], *, epoch: int, progress: float) -> torch.Tensor:
        """Float pixels in [0, 1], one NCHW tensor per view position -> the scalar loss (float32)."""
        m, cfg = self.method, self.cfg
        f = self.clf.features
        if m == "simclr":
            z0, z1 = (self.projection(f(v)) for v in views[:2])
            with _full_precision(z0):
                return nt_xent_loss(z0.float(), z1.float(), cfg.ssl_temperature)
        if m == "byol":
            p0, p1 = (self.prediction(self.projection(f(v))) for v in views[:2])
            with torch.no_grad():
                z0, z1 = (self.teacher_projection(self.teacher.features(v)) for v in views[:2])
            with _full_precision(p0):
                return byol_loss(p0.float(), p1.float(), z0.float(), z1.float())
        if m == "dino":
            with torch.no_grad():
                t_out = [self.teacher_head(self.teacher.features(v)).float() for v in views[:2]]
            s_out = [self.head(f(v)).float() for v in views]
            temp = dino_teacher_temp(epoch, warmup_temp=cfg.ssl_warmup_teacher_temp, temp=cfg.ssl_teacher_temp,
                                     warmup_epochs=cfg.ssl_teacher_temp_epochs)
            with _full_precision(s_out[0]):
                loss = dino_loss(t_out, s_out, self.center, temp, cfg.ssl_student_temp)
                if self.training:
                    c = cfg.ssl_center_momentum
                    self.center.copy_(self.center * c + dino_batch_center(t_out) * (1 - c))
            return loss
        if m == "rotnet":
            x, labels = rotations(views[0])
            return F.cross_entropy(self.rotation_head(f(x)).float(), labels)
        return self._simmim(views[0])

    @torch.no_grad()
    def update_teacher(self, progress: float) -> None:
        """BYOL / DINO: EMA of the backbone and head into the teacher, momentum cosine from ``ssl_momentum`` to 1
        over the run (``progress`` = updates done / total updates); a no-op for the other methods."""
        if self.teacher is None:
            return
        mom = momentum_at(self.cfg.ssl_momentum, progress)
        head, t_head = ((self.projection, self.teacher_projection) if self.method == "byol"
                        else (self.head, self.teacher_head))
        pairs = [(p, q) for p, q in zip(self.clf.parameters(), self.teacher.parameters())
                 if id(p) not in self._logit_ids]  # the unused logit layer stays as it is
        pairs += list(zip(head.parameters(), t_head.parameters()))
        ema_update([p.detach() for p, _ in pairs], [q.detach() for _, q in pairs], mom)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The backbone's parameters without its logit layer, and the method's heads (not the teacher)."""
        teacher_ids = set()
        for name in ("teacher", "teacher_projection", "teacher_head"):
            mod = getattr(self, name, None)
            if mod is not None:
                teacher_ids |= {id(p) for p in mod.parameters()}
        return [p for p in self.parameters() if id(p) not in self._logit_ids and id(p) not in teacher_ids]

    def extra_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything but the backbone (``clf.*``): heads, teacher, DINO center, as plain tensors."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("clf.")}

    def load_extra_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`extra_state_dict` gave (the backbone is restored with the model's own weights)."""
        own = self.extra_state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise UsageError(f"the resume state does not fit ssl={self.method}: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        with torch.no_grad():
            for k, v in state.items():
                own[k].copy_(v)


def rotations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RotNet's batch: every image rotated by 0, 90, 180 and 270 degrees (counter-clockwise, ``torch.rot90`` in the
    (H, W) plane), stacked rotation by rotation, and the labels 0..3 (Gidaris et al. 2018)."""
    if x.shape[2] != x.shape[3]:
        raise UsageError(f"rotnet needs square views, got {tuple(x.shape[2:])}")
    n = x.shape[0]
    xs = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])
    return xs, torch.arange(4, device=x.device).repeat_interleave(n)
