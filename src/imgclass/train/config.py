"""Training configuration: one dataclass of named, documented settings; recipes are YAML files of them."""

from __future__ import annotations

import ast
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import UsageError

__all__ = ["TrainConfig", "load_recipe", "apply_overrides", "RECIPES_DIR", "list_recipes"]

RECIPES_DIR = Path(__file__).parent / "recipes"


@dataclass
class TrainConfig:
    """Every setting of a training run. ``imgclass train --set KEY=VALUE`` overrides any of them."""

    # -- data ------------------------------------------------------------------------------------
    data: str = ""  # training dataset spec (folder:, tar:, zoo:cifar10-jpeg:train ...)
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
    epochs: int = 30
    batch_size: int = 128  # per process; the global batch is batch_size x processes x accum_steps
    accum_steps: int = 1  # gradient accumulation
    opt: str = "sgd"  # any timm optimizer: sgd (momentum), nesterov, adamw, lamb ...
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    no_wd_norm_bias: bool = True  # no weight decay on normalization parameters and biases (Bag of Tricks)
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

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise UsageError(f"unknown training setting(s) {', '.join(unknown)}; see `imgclass train --list-settings`")
        kw = {}
        for k, v in d.items():
            default = getattr(cls(), k)
            kw[k] = tuple(v) if isinstance(default, tuple) and isinstance(v, list) else v
        return cls(**kw)


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
        raise UsageError(f"no recipe {name_or_path!r}: not a file, and not one of {', '.join(list_recipes())}")
    data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise UsageError(f"{p}: a recipe is a mapping of settings")
    return data


def apply_overrides(settings: dict, overrides: list[str]) -> dict:
    """``["lr=0.05", "mixup=0.2", "arch_kwargs={'width': 32}"]`` -> settings updated (values as literals)."""
    out = dict(settings)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise UsageError(f"--set {item!r}: expected KEY=VALUE")
        try:
            value: Any = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = None if raw.lower() in {"none", "null"} else raw
        out[key.strip()] = value
    return out
