"""``file:`` checkpoints: safetensors + JSON metadata, and plain state dicts loaded without running code.

Metadata (stored in the safetensors header under ``imgclass``, or in a ``<name>.json`` beside the
file) names the architecture, the label space and the input contract, so a checkpoint is a model on
its own. Architectures are strings: ``cifar_resnet20`` (our small archs) or ``timm:<name>``.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..data.labels import LabelSpace
from ..errors import ImgclassError
from ..files import atomic_write
from ..registry import Registry
from .classifier import Classifier, ModelConfig

__all__ = [
    "ARCHS",
    "register_arch",
    "build_arch",
    "save_checkpoint",
    "read_checkpoint",
    "load_state_dict_file",
    "UnsafeCheckpointError",
    "CheckpointError",
]

FORMAT = "imgclass-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ImgclassError, RuntimeError):
    """A checkpoint file cannot be read or does not match its architecture."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle checkpoint would run code when loaded; refused unless the user opts in."""


ARCHS: Registry[Callable[..., nn.Module]] = Registry("architecture")


def register_arch(name: str):
    def deco(fn):
        ARCHS[name] = fn
        return fn
    return deco


def _cifar_builder(depth: int):
    def build(num_classes: int = 10, **kw) -> nn.Module:
        from .cifar_resnet import CifarResNet

        return CifarResNet(depth, num_classes, **kw)
    return build


for _d in (20, 32, 44, 56, 110):
    register_arch(f"cifar_resnet{_d}")(_cifar_builder(_d))


@register_arch("lenet")
def _lenet(num_classes: int = 10, in_chans: int = 3, width: int = 6, **kw) -> nn.Module:
    """LeNet-5 style convnet (LeCun et al. 1998) for small images; no normalization layers."""
    w = width
    return nn.Sequential(
        nn.Conv2d(in_chans, w, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(w, 16 * w // 6, 5), nn.ReLU(), nn.AdaptiveAvgPool2d(5), nn.Flatten(),
        nn.Linear(16 * w // 6 * 25, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes),
    )


@register_arch("cifar_resnet9")
def _resnet9(num_classes: int = 10, **kw) -> nn.Module:
    from .cifar_resnet import ResNet9

    return ResNet9(num_classes, **kw)


@register_arch("cifar_resnet18")
def _resnet18_cifar(num_classes: int = 10, **kw) -> nn.Module:
    """torchvision's ResNet-18 with the CIFAR stem (3x3 stride-1 conv, no max-pool)."""
    from .cifar_resnet import CifarResNet18

    return CifarResNet18(num_classes, **kw)


def build_arch(arch: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Instantiate an architecture by name, randomly initialised."""
    if arch.startswith("timm:"):
        import timm

        return timm.create_model(arch[5:], pretrained=False, num_classes=num_classes, **kwargs)
    if arch not in ARCHS:
        raise CheckpointError(
            f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHS))}, or timm:<model name>"
        )
    return ARCHS[arch](num_classes=num_classes, **kwargs)


def save_checkpoint(classifier: Classifier, path: str | os.PathLike, *, extra: dict | None = None,
                    arch_kwargs: dict | None = None, state_dict: dict | None = None) -> Path:
    """Write ``classifier`` as safetensors with its metadata, atomically (temp file, then rename).
    ``arch_kwargs`` default to the classifier's own (``classifier.arch_kwargs``)."""
    from safetensors.torch import save_file

    if classifier.arch is None:
        raise CheckpointError(f"{classifier.source}: the classifier has no registered architecture name to save")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = state_dict if state_dict is not None else classifier.model.state_dict()
    sd = {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "arch": classifier.arch,
        "arch_kwargs": dict(arch_kwargs if arch_kwargs is not None else getattr(classifier, "arch_kwargs", {})),
        "labels": classifier.labels.to_dict(),
        "config": classifier.config.to_dict(),
        "extra": extra or {},
    }
    return atomic_write(path, writer=lambda tmp: save_file(sd, tmp, metadata={"imgclass": json.dumps(meta)}))


def _sidecar(path: Path) -> dict | None:
    for cand in (path.with_suffix(".json"), path.with_name(path.name + ".json")):
        if cand.is_file():
            try:
                return json.loads(cand.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{cand}: invalid JSON metadata ({e})") from None
    return None


def load_state_dict_file(path: Path, *, trust: bool = False, key: str | None = None) -> dict[str, torch.Tensor]:
    """A state dict from a ``.pt/.pth/.th/.bin`` file, loaded with ``weights_only=True``.

    Containers such as ``{'state_dict': ...}`` or ``{'model': ...}`` are unwrapped and DataParallel /
    torch.compile prefixes stripped. Pickles that would import code are refused unless ``trust``.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsafeCheckpointError(
            f"refused to load {path}: the pickle asks to run code or build objects that are not plain weights "
            f"({first[:300]}). Nothing from it was executed. If you trust this file, add ?trust=true to the spec."
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from None
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    if key is not None:
        if key not in obj:
            raise CheckpointError(f"{path}: has no entry {key!r} (entries: {', '.join(map(str, obj))})")
        obj = obj[key]
    elif not all(torch.is_tensor(v) for v in obj.values()):
        for k in ("state_dict", "model_state_dict", "model", "net", "module"):
            if isinstance(obj.get(k), dict):
                obj = obj[k]
                break
        else:
            raise CheckpointError(f"{path}: no state dict found (entries: {', '.join(map(str, obj))}); pass ?key=...")
    sd = {k: v for k, v in obj.items() if torch.is_tensor(v)}
    for prefix in ("module.", "_orig_mod.", "model."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def read_checkpoint(path: str | os.PathLike, *, trust: bool = False, key: str | None = None
                    ) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Weights and metadata (or ``None``) of a checkpoint file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    meta = None
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
            sd = load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
        if "imgclass" in header:
            try:
                meta = json.loads(header["imgclass"])
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{path}: invalid imgclass metadata ({e})") from None
    else:
        sd = load_state_dict_file(path, trust=trust, key=key)
    side = _sidecar(path)
    if side is not None:
        meta = {**(meta or {}), **side}
    return sd, meta


def classifier_from_checkpoint(path: str | os.PathLike, *, arch: str | None = None, trust: bool = False,
                               key: str | None = None, source: str = "") -> Classifier:
    """Build a Classifier from a checkpoint and its metadata (``arch`` may come from the spec)."""
    sd, meta = read_checkpoint(path, trust=trust, key=key)
    meta = meta or {}
    arch = arch or meta.get("arch")
    if arch is None:
        raise CheckpointError(
            f"{path}: no metadata names the architecture; add ?arch=NAME (e.g. arch=cifar_resnet20 or "
            f"arch=timm:resnet18)"
        )
    labels = LabelSpace.from_dict(meta["labels"]) if "labels" in meta else None
    if labels is None and "class_names" in meta:
        labels = LabelSpace.from_names(meta["class_names"])
    num_classes = len(labels) if labels is not None else _guess_num_classes(sd)
    model = build_arch(arch, num_classes, **meta.get("arch_kwargs", {}))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit {arch}: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    if "config" in meta:
        config = ModelConfig.from_dict(meta["config"])
    elif arch.startswith("timm:"):
        from timm.data import resolve_data_config

        config = config_from_timm(resolve_data_config({}, model=model))
    elif arch.startswith("cifar_"):
        from .classifier import IMAGENET_MEAN, IMAGENET_STD

        config = ModelConfig((3, 32, 32), IMAGENET_MEAN, IMAGENET_STD, 1.0, "bilinear")
    else:
        config = ModelConfig()
    if labels is None:
        labels = LabelSpace.anonymous(num_classes)
    return Classifier(model, labels=labels, config=config, source=source or f"file:{path}", arch=arch,
                      arch_kwargs=meta.get("arch_kwargs", {}),
                      info={"checkpoint": str(path), **({"meta": meta["extra"]} if meta.get("extra") else {})})


def _guess_num_classes(sd: dict[str, torch.Tensor]) -> int:
    linear = [v for k, v in sd.items() if k.endswith("weight") and v.dim() == 2]
    if not linear:
        raise CheckpointError("cannot tell the number of classes from the weights; add ?classes=...")
    return int(linear[-1].shape[0])


def config_from_timm(cfg: dict) -> ModelConfig:
    return ModelConfig(tuple(cfg["input_size"]), tuple(cfg["mean"]), tuple(cfg["std"]),
                       float(cfg.get("crop_pct") or 1.0), cfg.get("interpolation", "bicubic"))
