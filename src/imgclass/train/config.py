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
}
_AT_LEAST = {"epochs": 1, "batch_size": 1, "accum_steps": 1, "max_steps": 1, "subset": 1, "eval_every": 1,
             "checkpoint_every": 0, "image_size": 1, "adv_steps": 1, "lr": 0.0, "weight_decay": 0.0,
             "warmup_epochs": 0.0, "pad": 0, "mixup": 0.0, "cutmix": 0.0, "kd_temperature": 0.0, "adv_eps": 0.0}
_FRACTIONS = ("label_smoothing", "mix_prob", "mix_switch_prob", "random_erasing", "ema_decay", "kd_alpha")


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
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise UsageError(f"training setting {name} must lie in [0, 1], got {getattr(cfg, name)!r}")


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
