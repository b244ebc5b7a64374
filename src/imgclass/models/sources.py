"""The model sources behind each spec scheme, and the registered (zoo) models."""

from __future__ import annotations

import importlib.util
import sys
from contextlib import contextmanager, nullcontext
from functools import lru_cache
from pathlib import Path

from torch import nn

from ..data.labels import LabelSpace, imagenet_space, named_space
from ..specs import Options, Spec, SpecError
from . import (ZOO_MODELS, ModelLoadError, check_outputs, apply_contract_options, override_contract,
               register_model_source, register_zoo_model)
from .checkpoint import CheckpointError, config_from_timm, classifier_from_checkpoint, load_state_dict_file
from .classifier import IMAGENET_MEAN, IMAGENET_STD, Classifier, ModelConfig

# ---------------------------------------------------------------------------------------------- timm


def timm_labels(model: nn.Module) -> LabelSpace:
    """ImageNet label spaces of timm models, by timm's own subset inference; else unnamed."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(model)
    if subset == "imagenet-1k":
        return imagenet_space()
    if subset is not None:
        info = ImageNetInfo(subset)
        return LabelSpace(tuple(info.label_descriptions()), tuple(info.label_names()), True, subset)
    return LabelSpace.anonymous(getattr(model, "num_classes", 0) or 0)


@register_model_source("timm", "timm:NAME[?pretrained=false&checkpoint=FILE&test_size=true] - any timm model")
def _timm(s: Spec, opts: Options) -> Classifier:
    import timm
    from timm.data import resolve_data_config

    name = s.target
    pretrained = opts.bool("pretrained", True)
    checkpoint = opts.str("checkpoint")
    use_test_size = opts.bool("test_size", False)
    num_classes = opts.int("num_classes")
    kwargs = {"num_classes": num_classes} if num_classes is not None else {}
    load_weights = pretrained and checkpoint is None
    offline = nullcontext()
    if load_weights and not _hub_reachable():  # no network: the cache or a fast, clear error (not a minute of retries)
        if not _timm_weights_cached(name):
            raise ModelLoadError(_timm_weights_hint(name, ConnectionError(
                f"{_hub_host()} cannot be reached and the weights are not in the local cache")))
        offline = _hub_offline()
    try:
        with offline:
            model = timm.create_model(name, pretrained=load_weights, **kwargs)
    except RuntimeError as e:
        if "Unknown model" in str(e) or "Invalid pretrained tag" in str(e):
            raise ModelLoadError(f"timm has no model {name!r} ({e})") from None
        raise ModelLoadError(_timm_weights_hint(name, e)) from None
    except Exception as e:  # hub/network errors come in many types
        raise ModelLoadError(_timm_weights_hint(name, e)) from None
    if checkpoint is not None:
        sd = load_state_dict_file(Path(checkpoint).expanduser(), trust=opts.bool("trust", False))
        try:
            model.load_state_dict(sd)
        except RuntimeError as e:
            raise CheckpointError(f"{checkpoint}: weights do not fit timm:{name}: {str(e)[:500]}") from None
    cfg = resolve_data_config({}, model=model, use_test_size=use_test_size)
    config = config_from_timm(cfg)
    config, labels = apply_contract_options(config, timm_labels(model), opts)
    arch = "timm:" + name.split(".")[0]
    clf = Classifier(model, labels=labels, config=config, source=s.text, arch=arch,
                     info={"pretrained": bool(pretrained and checkpoint is None), "checkpoint": checkpoint,
                           "pretrained_tag": getattr(model, "pretrained_cfg", {}).get("tag")})
    return check_outputs(clf)


def _hub_host() -> str:
    from urllib.parse import urlparse

    import huggingface_hub.constants as hf

    return urlparse(hf.ENDPOINT).hostname or "huggingface.co"


def _hub_port() -> int:
    from urllib.parse import urlparse

    import huggingface_hub.constants as hf

    u = urlparse(hf.ENDPOINT)
    return u.port or (80 if u.scheme == "http" else 443)


@lru_cache(maxsize=1)
def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection (once per process); False in HF_HUB_OFFLINE mode."""
    import socket

    import huggingface_hub.constants as hf

    if hf.is_offline_mode():
        return False
    try:
        socket.create_connection((_hub_host(), _hub_port()), timeout=timeout).close()
        return True
    except OSError:
        return False


def _timm_weights_cached(name: str) -> bool:
    """Whether timm would find ``name``'s pretrained weights without the network (hub cache or torch hub folder)."""
    import os
    from urllib.parse import urlparse

    import torch
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(name)
    except Exception:  # an unknown name: timm.create_model says so itself
        return True
    if cfg is None:
        return True
    if cfg.file and Path(cfg.file).is_file():
        return True
    if cfg.hf_hub_id:
        for fn in filter(None, (cfg.hf_hub_filename, "model.safetensors", "pytorch_model.bin")):
            if isinstance(try_to_load_from_cache(cfg.hf_hub_id, fn), str):
                return True
    if cfg.url:
        return (Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path)).is_file()
    return False


@contextmanager
def _hub_offline():
    """huggingface_hub in offline mode for one call: cached files without a request for each."""
    import huggingface_hub.constants as hf

    old = hf.HF_HUB_OFFLINE
    hf.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hf.HF_HUB_OFFLINE = old


def _timm_weights_hint(name: str, e: Exception) -> str:
    return (
        f"timm:{name}: pretrained weights could not be loaded ({type(e).__name__}: {str(e)[:300]}). Offline? "
        f"timm reads huggingface_hub's cache (HF_HOME; set HF_HUB_OFFLINE=1 to use it without network), or "
        f"give weights with ?checkpoint=FILE, or build without weights with ?pretrained=false"
    )


# ---------------------------------------------------------------------------------------------- file


@register_model_source("file", "file:CKPT[?arch=NAME&trust=true&key=K] - safetensors + metadata, or a state dict")
def _file(s: Spec, opts: Options) -> Classifier:
    clf = classifier_from_checkpoint(
        s.target, arch=opts.str("arch"), trust=opts.bool("trust", False), key=opts.str("key"), source=s.text
    )
    return check_outputs(override_contract(clf, opts))


# ---------------------------------------------------------------------------------------------- onnx


def _onnx_input_layout(path: Path) -> tuple[tuple[int, ...] | None, str]:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    inputs = [i for i in m.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ModelLoadError(f"{path}: expected one image input, found {len(inputs)}")
    dims = [d.dim_value if d.dim_value > 0 else None for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4:
        return None, "nchw"
    _, a, b, c = dims
    if c in (1, 3) and a not in (1, 3):
        return (c, a, b), "nhwc"
    return (a, b, c), "nchw"


@register_model_source("onnx", "onnx:FILE[?mean=..&std=..&layout=nhwc&classes=..] - converted with onnx2torch")
def _onnx(s: Spec, opts: Options) -> Classifier:
    try:
        import onnx2torch
    except ImportError:
        raise ModelLoadError("onnx: models need the onnx extra: pip install 'imgclass[onnx]'") from None
    path = Path(s.target).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"{s.text}: {path} does not exist")
    shape, layout = _onnx_input_layout(path)
    try:
        module = onnx2torch.convert(str(path))
    except Exception as e:
        raise ModelLoadError(f"{path}: onnx2torch cannot convert this model ({type(e).__name__}: {e})") from None
    c = shape[0] if shape and shape[0] else 3
    input_size = (c, shape[1] or 224, shape[2] or 224) if shape else (3, 224, 224)
    config = ModelConfig(input_size, (0.0,) * c, (1.0,) * c, 1.0, "bilinear", layout)
    config, labels = apply_contract_options(config, LabelSpace.anonymous(0), opts)
    clf = Classifier(module, labels=labels, config=config, source=s.text, arch=None, info={"file": str(path)})
    return check_outputs(clf)


# ---------------------------------------------------------------------------------------------- tflite


@register_model_source(
    "tflite", "tflite:FILE[?runtime=true&quant=simulate&classes=..] - float PyTorch rebuild of a TFLite model"
)
def _tflite(s: Spec, opts: Options) -> Classifier:
    from .tflite import tflite_classifier

    path = Path(s.target).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"{s.text}: {path} does not exist")
    clf = tflite_classifier(path, runtime=opts.bool("runtime", False), quant=opts.str("quant", "float"),
                            source=s.text)
    override_contract(clf, opts)
    if not clf.labels.known:
        clf.set_contract(labels=_labels_beside(path, clf.num_classes) or clf.labels)
    return check_outputs(clf)


def _labels_beside(path: Path, n: int) -> LabelSpace | None:
    """A labels file next to the model with one line per output (e.g. Coral's imagenet_labels.txt)."""
    for cand in sorted(path.parent.glob("*labels*.txt")):
        lines = [ln for ln in cand.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        if len(lines) == n:
            return named_space(str(cand))
    return None


# ---------------------------------------------------------------------------------------------- py


@register_model_source("py", "py:FILE.py:FUNCTION - a function returning an nn.Module or a Classifier")
def _py(s: Spec, opts: Options) -> Classifier:
    file, sep, func = s.target.rpartition(":")
    if not sep or not file.endswith(".py"):
        raise SpecError(f"{s.text}: expected py:FILE.py:FUNCTION")
    path = Path(file).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"{s.text}: {path} does not exist")
    mod_name = f"imgclass_user_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)
    if not hasattr(module, func):
        raise ModelLoadError(f"{s.text}: {path} defines no {func!r}")
    obj = getattr(module, func)()
    if isinstance(obj, Classifier):
        return check_outputs(override_contract(obj, opts))
    if not isinstance(obj, nn.Module):
        raise ModelLoadError(f"{s.text}: {func}() returned {type(obj).__name__}, not an nn.Module or Classifier")
    if hasattr(obj, "pretrained_cfg") and obj.pretrained_cfg:
        from timm.data import resolve_data_config

        config, labels = config_from_timm(resolve_data_config({}, model=obj)), timm_labels(obj)
    else:
        config, labels = ModelConfig(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)), LabelSpace.anonymous(0)
    config, labels = apply_contract_options(config, labels, opts)
    return check_outputs(Classifier(obj, labels=labels, config=config, source=s.text, info={"file": str(path)}))


# ---------------------------------------------------------------------------------------------- zoo


@register_model_source("zoo", "zoo:NAME - a registered pretrained model (see `imgclass models`)")
def _zoo(s: Spec, opts: Options) -> Classifier:
    clf = ZOO_MODELS[s.target].build(opts)
    return check_outputs(override_contract(clf, opts))


def _cifar_resnet_zoo(depth: int):
    def build(opts: Options) -> Classifier:
        from ..assets import fetch
        from .cifar_resnet import CifarResNet

        model = CifarResNet(depth, 10)
        path = fetch(f"cifar10-resnet{depth}-weights")
        model.load_state_dict(load_state_dict_file(path))
        config = ModelConfig((3, 32, 32), IMAGENET_MEAN, IMAGENET_STD, 1.0, "bilinear")
        labels = named_space("cifar10")
        return Classifier(model, labels=labels, config=config, source=f"zoo:cifar10-resnet{depth}",
                          arch=f"cifar_resnet{depth}", info={"weights": str(path), "paper": "He et al. 2016"},
                          cam_layer="layer3")
    return build


for _depth in (20, 32, 44, 56):
    register_zoo_model(f"cifar10-resnet{_depth}", assets=(f"cifar10-resnet{_depth}-weights",),
                       help=f"CIFAR-10 ResNet-{_depth} (He et al. 2016), published weights (akamaster)")(
        _cifar_resnet_zoo(_depth))


def _onnx_zoo(asset: str, options: str):
    def build(opts: Options) -> Classifier:
        from ..assets import fetch
        from ..specs import parse_spec
        from . import MODEL_SOURCES

        inner = parse_spec(f"onnx:{fetch(asset)}?{options}", MODEL_SOURCES)
        io = inner.pop_options()
        clf = _onnx(inner, io)
        io.finish()
        return clf
    return build


_CIFAR_MEAN, _CIFAR_STD = "0.4914,0.4822,0.4465", "0.2471,0.2435,0.2616"
for _name, _asset, _opts, _help in [
    ("vnncomp-resnet-2b", "vnncomp-resnet-2b", f"mean={_CIFAR_MEAN}&std={_CIFAR_STD}&classes=cifar10",
     "CIFAR-10 ResNet, PGD-trained at 2/255 (VNN-COMP 2021); published clean 69.25%, PGD 54.82%"),
    ("vnncomp-cifar-base-kw", "vnncomp-cifar-base-kw", "mean=0.485,0.456,0.406&std=0.225&classes=cifar10",
     "robust CIFAR-10 convnet, eps 2/255 (VNN-COMP 2021 oval21)"),
    ("vnncomp-cifar-wide-kw", "vnncomp-cifar-wide-kw", "mean=0.485,0.456,0.406&std=0.225&classes=cifar10",
     "robust CIFAR-10 convnet, wide, eps 2/255 (VNN-COMP 2021 oval21)"),
    ("vnncomp-cifar-deep-kw", "vnncomp-cifar-deep-kw", "mean=0.485,0.456,0.406&std=0.225&classes=cifar10",
     "robust CIFAR-10 convnet, deep, eps 2/255 (VNN-COMP 2021 oval21)"),
    ("vnncomp-cifar10-small", "vnncomp-cifar10-small", "layout=nhwc&classes=cifar10",
     "standard CIFAR-10 convnet, small, NHWC (VNN-COMP 2021 marabou)"),
    ("vnncomp-cifar10-medium", "vnncomp-cifar10-medium", "layout=nhwc&classes=cifar10",
     "standard CIFAR-10 convnet, medium, NHWC (VNN-COMP 2021 marabou)"),
]:
    register_zoo_model(_name, assets=(_asset,), help=_help)(_onnx_zoo(_asset, _opts))


def _tflite_zoo(asset: str, labels_asset: str | None, options: str):
    def build(opts: Options) -> Classifier:
        from ..assets import fetch
        from ..specs import parse_spec
        from . import MODEL_SOURCES

        extra = f"&classes={fetch(labels_asset)}" if labels_asset else ""
        inner = parse_spec(f"tflite:{fetch(asset)}?{options}{extra}".replace("?&", "?"), MODEL_SOURCES)
        io = inner.pop_options()
        for k in ("runtime", "quant"):
            if k in opts:
                io.set(k, opts.str(k))
        clf = _tflite(inner, io)
        io.finish()
        return clf
    return build


for _name, _asset, _opts in [
    ("coral-mobilenet-v1-0.25-128", "coral-mobilenet-v1-0.25-128-quant", ""),
    ("coral-mobilenet-v1-0.5-160", "coral-mobilenet-v1-0.5-160-quant", ""),
    ("coral-mobilenet-v1-0.75-192", "coral-mobilenet-v1-0.75-192-quant", ""),
    ("coral-mobilenet-v2-1.0-224", "coral-mobilenet-v2-1.0-224-quant", ""),
    ("coral-tf2-mobilenet-v2-1.0-224", "coral-tf2-mobilenet-v2-1.0-224-ptq", ""),
]:
    register_zoo_model(_name, assets=(_asset, "coral-imagenet-labels"),
                       help=f"ImageNet {_name[6:]} (uint8 TFLite, Coral), rebuilt in PyTorch; ?runtime=true for TFLite")(
        _tflite_zoo(_asset, "coral-imagenet-labels", _opts))

for _name, _asset, _opts in [
    ("mlperf-tiny-resnet8", "mlperf-tiny-pretrainedresnet", "scale=255&classes=cifar10"),
    ("mlperf-tiny-resnet8-int8", "mlperf-tiny-pretrainedresnet-quant", "classes=cifar10"),
]:
    register_zoo_model(_name, assets=(_asset,), help=f"MLPerf Tiny CIFAR-10 ResNet-8 ({_asset}), TFLite rebuilt in PyTorch")(
        _tflite_zoo(_asset, None, _opts))
