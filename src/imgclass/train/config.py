"""Training configuration: one dataclass of named, documented settings; recipes are YAML files of them."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import UsageError, unknown_name
from ..settings import parse_flat_sets

__all__ = ["TrainConfig", "load_recipe", "apply_overrides", "resolve_settings", "RECIPES_DIR", "list_recipes"]

RECIPES_DIR = Path(__file__).parent / "recipes"


@dataclass
class TrainConfig:
    """Every setting of a training run. ``imgclass train --set KEY=VALUE`` overrides any of them."""

    # -- data ------------------------------------------------------------------------------------
    data: str = ""  # training dataset spec (folder:, tar:, zoo:cifar10-jpeg:train ...)
    subset: int | None = None  # train on a random subset of this many training images (seeded by `seed`)
    val_data: str | None = None  # validation dataset spec, evaluated with the same probes as `imgclass eval`
    image_size: int | None = None  # training/eval input side; default: the model's own
    mean: tuple[float, ...] | None = None  # normalization inside the model; default by dataset (CIFAR or ImageNet)
    std: tuple[float, ...] | None = None
    crop_pct: float = 1.0  # eval crop fraction stored in the checkpoint (0.875 for ImageNet recipes)
    interpolation: str = "bilinear"
    # -- model -----------------------------------------------------------------------------------
    model: str = "cifar_resnet20"  # an architecture (cifar_resnet20, cifar_resnet9, timm:resnet50) or a model spec
    arch_kwargs: dict = field(default_factory=dict)  # e.g. {width: 32} or timm's {drop_path_rate: 0.05}
    zero_init_last: bool = True  # zero the last BN gamma of each residual block (Goyal et al. 2017)
    sync_bn: bool = False  # SyncBatchNorm under torchrun (CUDA)
    # -- optimisation ----------------------------------------------------------------------------
    epochs: int = 30  # the length of the learning-rate schedule (and of the run, unless max_steps stops it first)
    max_steps: int | None = None  # stop after this many optimizer updates in total (schedule still spans `epochs`)
    batch_size: int = 128  # per process; the global batch is batch_size x processes x accum_steps
    accum_steps: int = 1  # gradient accumulation
    drop_last: bool = True  # drop each epoch's last incomplete global batch; false: train it too (a smaller update)
    opt: str = "sgd"  # any timm optimizer: sgd (momentum), nesterov, adamw, lamb ...
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    no_wd_norm_bias: bool = True  # no weight decay on normalization parameters and biases (Bag of Tricks)
    layer_decay: float | None = None  # layer-wise lr decay for fine-tuning (BEiT, MAE, SimMIM): the head keeps lr,
    #   each block below it lr x decay^depth (timm's param_groups_layer_decay; models with a group_matcher)
    sched: str = "cosine"  # timm scheduler: cosine, step, multistep, plateau, poly, tanh
    warmup_epochs: float = 0.0
    warmup_lr: float = 1e-5
    min_lr: float = 0.0
    decay_milestones: tuple[int, ...] = (90, 180, 270)  # for sched=multistep
    clip_grad: float | None = None  # max gradient norm
    loss: str = "ce"  # ce, or bce (binary cross-entropy on (mixed) one-hot targets, ResNet strikes back)
    label_smoothing: float = 0.0
    # -- augmentation (on uint8 images, per sample, seeded by (seed, epoch, sample)) -------------
    crop: str = "pad"  # pad: pad 4 + random crop (CIFAR); rrc: RandomResizedCrop (ImageNet); none
    pad: int = 4
    rrc_scale: tuple[float, float] = (0.08, 1.0)
    hflip: bool = True
    auto_augment: str | None = None  # randaugment[:M], rand-m7-mstd0.5-inc1 (timm), autoaugment, trivialaugment
    random_erasing: float = 0.0  # probability
    mixup: float = 0.0  # mixup alpha (0 = off)
    cutmix: float = 0.0  # cutmix alpha (0 = off)
    mix_prob: float = 1.0
    mix_switch_prob: float = 0.5
    # -- weight averaging --------------------------------------------------------------------------
    ema: bool = False
    ema_decay: float = 0.9998
    # -- distillation ------------------------------------------------------------------------------
    teacher: str | None = None  # any model spec (zoo:cifar10-resnet56 ...)
    kd: str = "soft"  # soft (Hinton et al.) | function_matching (Beyer et al. 2022: same view, KL only)
    kd_temperature: float = 4.0
    kd_alpha: float = 0.9  # weight of the distillation term in 'soft'
    # -- adversarial training ---------------------------------------------------------------------
    adv: str | None = None  # pgd (Madry et al.) | trades (Zhang et al.)
    adv_eps: float = 8 / 255  # Linf, pixel units
    adv_steps: int = 10
    adv_step_size: float | None = None  # default 2.5 * eps / steps
    trades_beta: float = 6.0
    advprop: bool = False  # auxiliary batch norm for adversarial examples (Xie et al. 2020), clean+adv loss
    # -- self-supervised pretraining ---------------------------------------------------------------
    # Defaults follow lightly's CIFAR-10 benchmark (docs "Benchmarks", cifar10_benchmark.py: ResNet-18 with the CIFAR
    # stem, 200 epochs, batch 128, blur off at 32 px) where it sets a value, else the method's paper; None = the
    # method's own default, named in the comment. Implementation: imgclass.train.ssl.
    ssl: str | None = None  # none | simclr | byol | dino | rotnet | simmim (labels unused; kNN monitor validates)
    ssl_proj_hidden: int | None = None  # projection MLP hidden width; None: 512 SimCLR, 1024 BYOL (also the
    #   predictor's), 2048 DINO (lightly benchmark: SimCLRProjectionHead(512, 512, 128), BYOLProjectionHead(512,
    #   1024, 256), DINOProjectionHead(512, 2048, 256, 2048, batch_norm=True) with 2 layers)
    ssl_proj_dim: int | None = None  # projection output; None: 128 SimCLR, 256 BYOL and DINO (DINO's bottleneck)
    ssl_temperature: float = 0.5  # SimCLR NT-Xent temperature (lightly NTXentLoss default, used by the benchmark)
    ssl_momentum: float = 0.99  # BYOL/DINO teacher EMA momentum at the start, cosine-increased to 1 by the end of
    #   the run (lightly benchmark: m=0.99; BYOL's cosine schedule to 1, as lightly's cosine_schedule(.., 0.99, 1))
    ssl_dino_out_dim: int = 2048  # DINO head output dimension (lightly benchmark: DINOLoss(output_dim=2048))
    ssl_teacher_temp: float = 0.04  # DINO teacher temperature after warmup (DINO / lightly DINOLoss default)
    ssl_warmup_teacher_temp: float = 0.04  # DINO teacher temperature at epoch 0, linear to ssl_teacher_temp
    ssl_teacher_temp_epochs: int = 30  # DINO teacher-temperature warmup epochs (DINO / lightly DINOLoss default)
    ssl_student_temp: float = 0.1  # DINO student temperature (DINO / lightly DINOLoss default)
    ssl_center_momentum: float = 0.9  # DINO center EMA momentum (DINO / lightly DINOLoss default)
    ssl_local_crops: int = 0  # DINO local views (lightly benchmark on 32 px CIFAR: n_local_views=0; DINO: 6-10)
    ssl_local_size: int = 16  # DINO local crop side (DINO: 96 of 224; ~half the 32 px global crop here)
    ssl_local_scale: tuple[float, float] = (0.05, 0.4)  # DINO local crop area range (DINO / lightly DINOTransform)
    ssl_global_crop_scale: tuple[float, float] | None = None  # RandomResizedCrop area range of the global views;
    #   None: (0.08, 1) SimCLR and BYOL (lightly SimCLRTransform / BYOLView min_scale), (0.4, 1) DINO (DINOTransform)
    ssl_color_jitter: float = 0.5  # colour-jitter strength s, applied with p=0.8: ColorJitter(0.8s, 0.8s, 0.8s, 0.2s)
    #   for SimCLR, (0.8s, 0.8s, 0.4s, 0.2s) for BYOL/DINO (s=0.5: BYOL's 0.4/0.4/0.2/0.1); lightly benchmark
    #   SimCLRTransform(cj_strength=0.5), DINOTransform(cj_strength=0.5); SimCLR paper B.9: s=0.5 on CIFAR-10
    ssl_head_bn: bool = True  # batch norm in the SimCLR / BYOL / DINO heads (lightly's heads). Under torchrun each
    # process normalizes over its own batch unless sync_bn (CUDA) is on; false: heads without batch norm, for which
    # N processes x batch B equal one process x batch N*B exactly (with a backbone without batch norm)
    ssl_gray_prob: float = 0.2  # RandomGrayscale probability (SimCLR, BYOL, DINO; lightly transforms' default)
    ssl_blur: tuple[float, float, float] = (0.0, 0.0, 0.0)  # Gaussian-blur probability of view 1, view 2 and DINO's
    #   local views (lightly benchmark: blur off on CIFAR; papers on ImageNet: SimCLR .5 .5, BYOL 1 .1, DINO 1 .1 .5)
    ssl_solarize: tuple[float, float] | None = None  # solarization probability of view 1 and view 2; None: 0, 0
    #   for SimCLR, 0, 0.2 for BYOL and DINO (BYOL Table 6; lightly BYOLView2Transform / DINOTransform)
    ssl_mask_ratio: float = 0.6  # SimMIM: fraction of mask patches masked (SimMIM default, Xie et al. 2022)
    ssl_mask_patch: int = 8  # SimMIM mask-patch side in pixels, a multiple of the ViT patch (SimMIM: 32 = 2 ViT
    #   patches of 16 at 224 px; the same 2 patches of 4 at 32 px)
    ssl_norm_pix: bool = False  # SimMIM: regress each ViT patch's pixels normalized by that patch's own mean and
    #   standard deviation (MAE's norm_pix_loss, He et al. 2022 Table 1d) instead of the normalized image's pixels
    ssl_decoder_depth: int = 0  # SimMIM: transformer blocks (the encoder's width and heads) over all tokens, class
    #   token included, before the linear pixel predictor; 0 = SimMIM's linear head. MAE (Table 1a) finds a deeper
    #   decoder leaves the encoder's last layer more abstract (linear probe 65.5 -> 73.5, fine-tuning unchanged)
    knn_k: int = 200  # online kNN monitor: neighbours (lightly benchmark knn_k=200; InstDisc, Wu et al. 2018)
    knn_t: float = 0.1  # online kNN monitor: temperature of the similarity weights (lightly benchmark knn_t=0.1)
    knn_bank: int | None = 10000  # monitor bank: a seeded subset of this many training images; none = all
    # -- engineering -------------------------------------------------------------------------------
    seed: int = 0
    device: str | None = None  # default: cuda if available
    amp: bool = True  # float16 autocast (CUDA only)
    channels_last: bool = True  # NHWC memory layout (faster on CUDA and on CPU with oneDNN)
    workers: int | None = None
    checkpoint_every: int = 0  # also checkpoint every N optimizer steps (0: at epoch ends only)
    eval_every: int = 1  # epochs between validations
    probes: tuple[str, ...] = ("accuracy", "calibration")
    tensorboard: bool = True

    def __post_init__(self):
        _check(self)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Settings by name; an unknown name is an error that offers the close ones, a bad value a usage error."""
        known = [f.name for f in dataclasses.fields(cls)]
        for k in d:
            if k not in known:
                raise unknown_name("training setting", k, known,
                                   extra=" (`imgclass train --list-settings` shows them with their values)")
        return cls(**d)


# -- checking values ------------------------------------------------------------------------------------------
# Settings come from YAML and --set as plain values; every one is checked against its declared type (ints are
# accepted for floats, lists for tuples), and the ones with a fixed set of choices against those, so that a
# mistake is one usage error (exit 2) before any work, not a traceback from inside the run.

_CHOICES = {
    "crop": ("pad", "rrc", "none"),
    "loss": ("ce", "bce"),
    "kd": ("soft", "function_matching"),
    "adv": (None, "pgd", "trades"),
    "sched": ("cosine", "step", "multistep", "plateau", "poly", "tanh"),
    "ssl": (None, "simclr", "byol", "dino", "rotnet", "simmim"),
}
_AT_LEAST = {"epochs": 1, "batch_size": 1, "accum_steps": 1, "max_steps": 1, "subset": 1, "eval_every": 1,
             "checkpoint_every": 0, "image_size": 1, "adv_steps": 1, "lr": 0.0, "weight_decay": 0.0,
             "warmup_epochs": 0.0, "pad": 0, "mixup": 0.0, "cutmix": 0.0, "kd_temperature": 0.0, "adv_eps": 0.0,
             "ssl_proj_hidden": 1, "ssl_proj_dim": 1, "ssl_dino_out_dim": 1, "ssl_temperature": 1e-3,
             "ssl_teacher_temp": 1e-3, "ssl_warmup_teacher_temp": 1e-3, "ssl_student_temp": 1e-3,
             "ssl_teacher_temp_epochs": 0, "ssl_local_crops": 0, "ssl_local_size": 1, "ssl_color_jitter": 0.0,
             "ssl_mask_patch": 1, "ssl_decoder_depth": 0, "knn_k": 1, "knn_t": 1e-3, "knn_bank": 1}
_FRACTIONS = ("label_smoothing", "mix_prob", "mix_switch_prob", "random_erasing", "ema_decay", "kd_alpha",
              "ssl_momentum", "ssl_center_momentum", "ssl_gray_prob", "ssl_mask_ratio", "ssl_blur", "ssl_solarize",
              "ssl_local_scale", "ssl_global_crop_scale")  # a list setting: each value; none: not checked


def _type_name(t) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a text", dict: "a mapping",
             type(None): "none"}
    if t in names:
        return names[t]
    origin = typing.get_origin(t)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(t))
    if origin is tuple:
        return "a list"
    return getattr(t, "__name__", str(t))


def _coerce(value: Any, t) -> tuple[bool, Any]:
    """(fits, value converted to the field's type) for the few types TrainConfig uses."""
    origin = typing.get_origin(t)
    if origin in (typing.Union, types.UnionType):
        for a in typing.get_args(t):
            ok, v = _coerce(value, a)
            if ok:
                return True, v
        return False, value
    if t is type(None):
        return value is None, value
    if t is bool:
        return isinstance(value, bool), value
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if t is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if t is str:
        return isinstance(value, str), value
    if t is dict:
        return isinstance(value, dict), value
    if origin is tuple:
        args = typing.get_args(t)
        item_t = args[0] if len(args) == 2 and args[1] is Ellipsis else None
        if isinstance(value, str) and item_t is str:  # probes=accuracy,calibration
            value = tuple(v.strip() for v in value.split(",") if v.strip())
        if not isinstance(value, (list, tuple)):
            return False, value
        if item_t is None and len(args) != len(value):
            return False, value
        out = []
        for i, v in enumerate(value):
            ok, v = _coerce(v, item_t if item_t is not None else args[i])
            if not ok:
                return False, value
            out.append(v)
        return True, tuple(out)
    return True, value


def _check(cfg: "TrainConfig") -> None:
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        ok, value = _coerce(value, hints[f.name])
        if not ok:
            example = " such as {'width': 32}" if hints[f.name] is dict else ""
            raise UsageError(f"training setting {f.name}: expected {_type_name(hints[f.name])}{example}, "
                             f"got {value!r}")
        setattr(cfg, f.name, value)
    for name, choices in _CHOICES.items():
        value = getattr(cfg, name)
        if value not in choices:
            shown = [str(c).lower() if c is None else c for c in choices]
            raise unknown_name(f"{name} value", value, shown)
    for name, low in _AT_LEAST.items():
        value = getattr(cfg, name)
        if value is not None and value < low:
            raise UsageError(f"training setting {name} must be at least {low}, got {value!r}")
    for name in _FRACTIONS:
        value = getattr(cfg, name)
        if value is not None and not all(0.0 <= v <= 1.0 for v in (value if isinstance(value, tuple) else (value,))):
            raise UsageError(f"training setting {name} must lie in [0, 1], got {value!r}")
    if cfg.layer_decay is not None and not 0.0 < cfg.layer_decay <= 1.0:
        raise UsageError(f"training setting layer_decay must lie in (0, 1], got {cfg.layer_decay!r}")


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def load_recipe(name_or_path: str | None) -> dict:
    """A recipe's settings: a shipped recipe by name (``cifar10-resnet20``) or a YAML file path."""
    if not name_or_path:
        return {}
    p = Path(name_or_path)
    if not p.is_file():
        p = RECIPES_DIR / f"{name_or_path}.yaml"
    if not p.is_file():
        raise unknown_name("recipe", name_or_path, list_recipes(), extra=" (or give a YAML file)")
    data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise UsageError(f"{p}: a recipe is a mapping of settings")
    return data


def apply_overrides(settings: dict, overrides: list[str]) -> dict:
    """``["lr=0.05", "mixup=0.2", "arch_kwargs={'width': 32}"]`` -> settings updated; values parsed by the shared
    ``--set`` parser (:func:`imgclass.settings.parse_flat_sets`)."""
    return {**settings, **parse_flat_sets(overrides)}


def resolve_settings(recipe: str | None = None, sets: list[str] = (), *, command_line: dict | None = None
                     ) -> tuple["TrainConfig", dict[str, str]]:
    """The config of defaults < recipe < command line (DATA, --model, --val) < ``--set``, and where each setting
    that is not a default came from (``"recipe"``, ``"command line"`` or ``"--set"``)."""
    settings, origin = {}, {}
    layers = (("recipe", load_recipe(recipe)), ("command line", {k: v for k, v in (command_line or {}).items() if v}),
              ("--set", parse_flat_sets(sets)))
    for where, values in layers:
        settings.update(values)
        origin.update({k: where for k in values})
    return TrainConfig.from_dict(settings), origin
