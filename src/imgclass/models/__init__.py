"""Model specs -> :class:`Classifier`. One resolver per scheme, registered by decorator.

Schemes: ``timm:NAME``, ``zoo:NAME``, ``file:CKPT``, ``onnx:FILE``, ``tflite:FILE``, ``py:FILE.py:FUNCTION``.
Options after ``?`` set or override the input contract: ``mean``, ``std``, ``scale`` (raw pixel range,
e.g. 255), ``size``, ``crop_pct``, ``interpolation``, ``layout`` (nchw/nhwc) and ``classes``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..data.labels import LabelSpace, named_space
from ..errors import ImgclassError
from ..registry import Registry
from ..specs import Options, Spec, SpecError, parse_spec
from .classifier import IMAGENET_MEAN, IMAGENET_STD, Classifier, ModelConfig

__all__ = [
    "Classifier",
    "ModelConfig",
    "load_model",
    "MODEL_SOURCES",
    "ZOO_MODELS",
    "register_model_source",
    "register_zoo_model",
    "apply_contract_options",
    "ModelLoadError",
]


class ModelLoadError(ImgclassError, RuntimeError):
    """A model cannot be built or its weights cannot be loaded."""


@dataclass
class SourceEntry:
    scheme: str
    build: Callable[[Spec, Options], Classifier]
    help: str


@dataclass
class ZooModel:
    name: str
    build: Callable[[Options], Classifier]
    help: str
    assets: tuple[str, ...] = ()


MODEL_SOURCES: Registry[SourceEntry] = Registry("model source")
ZOO_MODELS: Registry[ZooModel] = Registry("zoo model")


def register_model_source(scheme: str, help: str):
    def deco(fn):
        MODEL_SOURCES[scheme] = SourceEntry(scheme, fn, help)
        return fn
    return deco


def register_zoo_model(name: str, *, help: str, assets: tuple[str, ...] = ()):
    def deco(fn):
        ZOO_MODELS[name] = ZooModel(name, fn, help, assets)
        return fn
    return deco


def _infer_scheme(body: str) -> str | None:
    name = body.lower()
    if name.endswith(".onnx"):
        return "onnx"
    if name.endswith(".tflite"):
        return "tflite"
    if name.endswith((".safetensors", ".pt", ".pth", ".th", ".bin", ".ckpt")):
        return "file"
    return None


def load_model(spec: str | Classifier | nn.Module, *, device: str | None = None, **options) -> Classifier:
    """A :class:`Classifier` from a spec (``timm:resnet50.a1_in1k``, ``zoo:cifar10-resnet20``, ``onnx:net.onnx?...``),
    a Classifier, or a plain ``nn.Module`` whose input contract the options state.

    ``options`` are the spec's options as keyword arguments (``load_model("onnx:net.onnx", layout="nhwc",
    classes="cifar10")``); for a module they are its contract: ``mean``, ``std`` (or ``scale``), ``input_size``
    (or ``size``), ``crop_pct``, ``interpolation``, ``layout`` and ``classes``. A module given without ``mean`` and
    ``std`` is taken as an ImageNet model of torchvision's convention (224 px, ImageNet mean/std, crop 0.875,
    bilinear), and ``Classifier.info['contract']`` says so.
    """
    if isinstance(spec, Classifier):
        clf = spec
        if options:  # the contract options change the given classifier in place
            opts = _options_of(clf.source or "classifier", options)
            override_contract(clf, opts)
            opts.finish()
            check_outputs(clf)
    elif isinstance(spec, nn.Module):
        clf = _from_module(spec, options)
    else:
        s = parse_spec(spec, MODEL_SOURCES, infer=_infer_scheme)
        if options:
            overlap = set(s.options) & set(_option_strings(options))
            if overlap:
                raise SpecError(f"{spec}: option(s) {', '.join(sorted(overlap))} given twice (in the spec and as "
                                "keyword arguments)")
            s = Spec(s.scheme, s.target, {**s.options, **_option_strings(options)}, s.text)
        opts = s.pop_options()
        clf = MODEL_SOURCES[s.scheme].build(s, opts)
        opts.finish()
        clf.source = s.text
    clf.eval()
    if device is not None:
        from ..device import resolve_device

        clf.to(resolve_device(device))
    return clf


def _option_strings(options: dict) -> dict[str, str]:
    """Keyword options as the strings a spec carries: sequences comma-joined, booleans true/false."""
    out = {}
    for k, v in options.items():
        if k == "input_size":
            k = "size"
        if isinstance(v, bool):
            v = "true" if v else "false"
        elif isinstance(v, (list, tuple)):
            v = ",".join(str(x) for x in v)
        elif isinstance(v, LabelSpace):
            raise SpecError(f"option {k}: give class names as a list, a known space name or a labels file")
        out[k] = str(v)
    return out


def _options_of(text: str, options: dict) -> Options:
    return Spec("module", "", _option_strings(options), text).pop_options()


def _from_module(module: nn.Module, options: dict) -> Classifier:
    """Wrap a plain module (pixels normalized inside by the stated contract)."""
    text = options.pop("source", None) or f"module:{type(module).__name__}"
    given = set(_option_strings(options))
    opts = _options_of(text, options)
    if hasattr(module, "pretrained_cfg") and module.pretrained_cfg:  # a timm model knows its contract
        from timm.data import resolve_data_config

        from .checkpoint import config_from_timm
        from .sources import timm_labels

        config, labels, how = config_from_timm(resolve_data_config({}, model=module)), timm_labels(module), \
            "timm's pretrained config"
    else:
        config = ModelConfig((3, 224, 224), IMAGENET_MEAN, IMAGENET_STD, 0.875, "bilinear")
        labels = LabelSpace.anonymous(0)
        how = "stated" if {"mean", "std"} <= given or "scale" in given else \
            "assumed: ImageNet mean/std at 224 px, crop 0.875, bilinear (torchvision's convention); state mean/std"
    config, labels = apply_contract_options(config, labels, opts)
    opts.finish()
    clf = check_outputs(Classifier(module, labels=labels, config=config, source=text, arch=None,
                                    info={"module": f"{type(module).__module__}.{type(module).__qualname__}",
                                          "contract": how}))
    if not clf.labels.known and clf.num_classes == 1000 and "classes" not in given:
        from ..data.labels import imagenet_space

        clf.set_contract(labels=imagenet_space())  # 1,000 outputs in torchvision's convention: ImageNet-1k's order
        clf.info["classes"] = "assumed: ImageNet-1k in the standard sorted-wnid order (1,000 outputs)"
    return clf


def apply_contract_options(config: ModelConfig, labels: LabelSpace, opts: Options) -> tuple[ModelConfig, LabelSpace]:
    """Spec options that override a model's input contract and label space."""
    c = config.input_size[0]
    size = opts.str("size")
    input_size = None
    if size is not None:
        try:
            vals = [int(v) for v in size.split(",")]
        except ValueError:
            raise SpecError(f"{opts.spec.text}: size={size!r} must be N, H,W or C,H,W") from None
        input_size = {1: (c, vals[0], vals[0]), 2: (c, *vals), 3: tuple(vals)}.get(len(vals))
        if input_size is None:
            raise SpecError(f"{opts.spec.text}: size={size!r} must be N, H,W or C,H,W")
        c = input_size[0]
    mean, std = opts.floats("mean", c), opts.floats("std", c)
    scale = opts.float("scale")
    if scale is not None:
        if mean is not None or std is not None:
            raise SpecError(f"{opts.spec.text}: give either scale or mean/std, not both")
        mean, std = (0.0,) * c, (1.0 / scale,) * c
    config = config.replace(input_size=input_size, mean=mean, std=std, crop_pct=opts.float("crop_pct"),
                            interpolation=opts.str("interpolation"), layout=opts.str("layout"))
    classes = opts.str("classes")
    if classes is not None:
        labels = named_space(classes)
    return config, labels


def override_contract(clf: Classifier, opts: Options) -> Classifier:
    """Apply a spec's contract options to an already built Classifier."""
    config, labels = apply_contract_options(clf.config, clf.labels, opts)
    return clf.set_contract(config, labels)


def check_outputs(clf: Classifier) -> Classifier:
    """Run one tiny forward to check the output width against the label space."""
    import torch

    c, h, w = clf.config.input_size
    with torch.no_grad():
        out = clf.eval()(torch.full((1, c, h, w), 0.5))
    if out.dim() != 2:
        raise ModelLoadError(f"{clf.source}: the model returns shape {tuple(out.shape)}, not (N, classes) logits")
    k = out.shape[1]
    if not clf.labels.known and len(clf.labels) != k:
        clf.labels = LabelSpace.anonymous(k)
    elif len(clf.labels) != k:
        raise ModelLoadError(
            f"{clf.source}: the model has {k} outputs but its label space ({clf.labels.tag or 'given classes'}) "
            f"has {len(clf.labels)} names; pass ?classes=... with {k} names"
        )
    return clf


# the source modules register themselves
from . import sources as _sources  # noqa: E402,F401
