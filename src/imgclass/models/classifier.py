"""The Classifier contract: float RGB NCHW pixels in [0, 1] in, logits out; normalization inside."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from ..errors import ParameterError, UsageError
from ..data.labels import LabelSpace

__all__ = ["ModelConfig", "Classifier", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelConfig:
    """What a model expects of its input, in the spirit of timm's ``PretrainedCfg``.

    ``mean``/``std`` are in pixel units of [0, 1] (a raw 0..255 model has mean 0, std 1/255).
    Evaluation resizes the short side to ``input_size / crop_pct`` with ``interpolation`` and
    centre-crops ``input_size`` (timm's eval transform); a crop_pct of 1 on an image of the
    input size leaves it untouched. ``layout='nhwc'`` feeds the wrapped module channels-last.
    """

    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    layout: str = "nchw"

    def __post_init__(self):
        if self.layout not in {"nchw", "nhwc"}:
            raise UsageError(f"layout must be 'nchw' or 'nhwc', got {self.layout!r}")
        if len(self.mean) != self.input_size[0] or len(self.std) != self.input_size[0]:
            raise UsageError(f"mean/std need {self.input_size[0]} values, got {self.mean} / {self.std}")
        if any(s <= 0 for s in self.std):
            raise UsageError(f"std must be positive, got {self.std}")
        if not 0 < self.crop_pct <= 1:
            raise UsageError(f"crop_pct must lie in (0, 1], got {self.crop_pct}")

    def replace(self, **kw) -> "ModelConfig":
        return replace(self, **{k: v for k, v in kw.items() if v is not None})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        keep = {k: d[k] for k in ("input_size", "mean", "std", "crop_pct", "interpolation", "layout") if k in d}
        for k in ("input_size", "mean", "std"):
            if k in keep:
                keep[k] = tuple(keep[k])
        return cls(**keep)


class Classifier(nn.Module):
    """Wraps any module that maps (normalized) images to logits.

    ``classifier(x)`` takes float ``(N, 3, H, W)`` pixels in [0, 1] and returns ``(N, K)`` logits in
    the order of ``labels``. ``features(x)`` returns pre-logit features. ``cam_layer`` names the
    module whose activations CAM methods should use.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        labels: LabelSpace,
        config: ModelConfig,
        source: str,
        arch: str | None = None,
        info: dict | None = None,
        cam_layer: str | None = None,
        arch_kwargs: dict | None = None,
    ):
        super().__init__()
        self.model = model
        self.labels = labels
        self.config = config
        self.source = source
        self.arch = arch
        self.arch_kwargs = dict(arch_kwargs or {})  # what build_arch(arch, ...) needs to rebuild the module
        self.info = dict(info or {})
        self._cam_layer = cam_layer
        self._head: nn.Module | None = None
        self.set_contract(config, labels)

    def set_contract(self, config: ModelConfig | None = None, labels: LabelSpace | None = None) -> "Classifier":
        """Replace the input contract and/or label space (the normalization buffers follow)."""
        if labels is not None:
            self.labels = labels
        if config is not None:
            self.config = config
            c = config.input_size[0]
            dev = self.mean.device if hasattr(self, "mean") else None
            self.register_buffer("mean", torch.tensor(config.mean, dtype=torch.float32, device=dev).view(1, c, 1, 1),
                                 persistent=False)
            self.register_buffer("std", torch.tensor(config.std, dtype=torch.float32, device=dev).view(1, c, 1, 1),
                                 persistent=False)
        return self

    # -- the contract -----------------------------------------------------------------------
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return x.permute(0, 2, 3, 1) if self.config.layout == "nhwc" else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.config.input_size[0]:
            raise UsageError(
                f"{self.source}: expected (N, {self.config.input_size[0]}, H, W) pixels in [0, 1], got {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise ParameterError(f"{self.source}: expected float pixels in [0, 1], got {x.dtype} (divide uint8 by 255)")
        out = self.model(self.normalize(x))
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def class_names(self) -> list[str]:
        return list(self.labels.names)

    @property
    def wnids(self) -> list[str | None] | None:
        return None if self.labels.wnids is None else list(self.labels.wnids)

    @property
    def input_size(self) -> tuple[int, int, int]:
        return self.config.input_size

    # -- features and CAM layer ---------------------------------------------------------------
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-logit features: timm's ``forward_head(pre_logits=True)`` where the model has it,
        else the input of the layer that produces the logits (found by tracing one forward)."""
        xn = self.normalize(x)
        m = self.model
        if hasattr(m, "forward_features") and hasattr(m, "forward_head"):
            return m.forward_head(m.forward_features(xn), pre_logits=True)
        head = self._logit_layer()
        captured = {}

        def hook(_mod, inp, _out):
            captured["x"] = inp[0]

        h = head.register_forward_hook(hook)
        try:
            m(xn)
        finally:
            h.remove()
        return captured["x"].flatten(1)

    PRE_LOGITS = "pre_logits"  # the layer name that stands for ``features(x)`` in ``layer_features``

    def layer_names(self) -> list[str]:
        """Names accepted by ``layer_features``: ``pre_logits`` and every named module of the wrapped model."""
        return [self.PRE_LOGITS] + [n for n, _ in self.model.named_modules() if n]

    def layer_features(self, x: torch.Tensor, layers: list[str], *, tokens: str = "mean") -> dict[str, torch.Tensor]:
        """(N, C) features of named modules of the wrapped model (``dict(model.named_modules())[name]``) for pixels
        ``x``, from one forward pass with forward hooks; ``pre_logits`` is ``features(x)``.

        A module's (first tensor) output is reduced to (N, C): 4-D outputs are global-average-pooled over the
        spatial axes (NCHW; NHWC for a model with ``layout='nhwc'``), 3-D token outputs (N, T, C) are averaged over
        the tokens (``tokens='mean'``) or give their first, class token (``tokens='cls'``), others are flattened.
        An unknown name is a UsageError naming it with the close matches.
        """
        if tokens not in {"mean", "cls"}:
            raise UsageError(f"tokens must be 'mean' or 'cls', got {tokens!r}")
        mods = dict(self.model.named_modules())
        unknown = [n for n in layers if n != self.PRE_LOGITS and (not n or n not in mods)]
        if unknown:
            import difflib

            names = self.layer_names()
            close = sorted({c for u in unknown for c in difflib.get_close_matches(u, names, n=3, cutoff=0.5)})
            hint = f"; close: {', '.join(close)}" if close else ""
            raise UsageError(f"{self.source}: no layer named {', '.join(map(repr, unknown))}{hint} (names: "
                             f"{self.PRE_LOGITS} or a module of the model, {len(names) - 1} in all, e.g. "
                             f"{', '.join(n for n in names[1:] if '.' not in n)})")
        nhwc = self.config.layout == "nhwc"

        def pool(out) -> torch.Tensor:
            if isinstance(out, (tuple, list)):
                out = next(o for o in out if torch.is_tensor(o))
            if out.dim() == 4:
                return out.mean((1, 2) if nhwc else (2, 3))
            if out.dim() == 3:
                return out.mean(1) if tokens == "mean" else out[:, 0]
            return out.flatten(1) if out.dim() > 1 else out.view(-1, 1)

        captured: dict[str, torch.Tensor] = {}
        hooks = []
        def hook(name):
            def fn(_mod, _inp, out) -> None:  # returns None: the module's output is left as it is
                if name not in captured:  # a module called twice: its first call
                    captured[name] = pool(out)
            return fn

        for name in dict.fromkeys(n for n in layers if n != self.PRE_LOGITS):
            hooks.append(mods[name].register_forward_hook(hook(name)))
        try:
            if self.PRE_LOGITS in layers:
                captured[self.PRE_LOGITS] = self.features(x)
            if any(n not in captured for n in layers):  # e.g. the logit layer, which features() does not run
                self.forward(x)
        finally:
            for h in hooks:
                h.remove()
        missing = [n for n in layers if n not in captured]
        if missing:
            raise UsageError(f"{self.source}: layer(s) {', '.join(missing)} did not run in the forward pass")
        return {n: captured[n] for n in layers}

    def _trace_leaves(self) -> list[tuple[str, nn.Module, tuple, tuple]]:
        """Leaf modules in execution order with their (first) input and output shapes, from one forward pass."""
        order: list[tuple[str, nn.Module, tuple, tuple]] = []
        hooks = []

        def shape(t) -> tuple:
            return tuple(t.shape) if torch.is_tensor(t) else ()

        for name, mod in self.model.named_modules():
            if len(list(mod.children())) == 0:
                hooks.append(mod.register_forward_hook(
                    lambda mod, i, o, name=name: order.append((name, mod, shape(i[0]) if i else (), shape(o)))
                ))
        try:
            p = next(self.model.parameters(), None)
            dev = p.device if p is not None else torch.device("cpu")
            c, h, w = self.config.input_size
            with torch.no_grad():
                self.forward(torch.full((2, c, h, w), 0.5, device=dev))
        finally:
            for hk in hooks:
                hk.remove()
        return order

    def logit_layer(self) -> nn.Module:
        """The layer that produces the logits from the pre-logit features (a Linear for most models)."""
        return self._logit_layer()

    def _logit_layer(self) -> nn.Module:
        """The last module that maps something else to (N, classes): a Linear, an ONNX MatMul/Gemm..."""
        if self._head is None:
            k = self.num_classes
            cands = [mod for _, mod, shape_in, shape_out in self._trace_leaves()
                     if len(shape_out) == 2 and shape_out[1] == k and shape_in != shape_out]
            if not cands:
                raise RuntimeError(f"{self.source}: cannot find the layer that produces the logits")
            self._head = cands[-1]
        return self._head

    @property
    def cam_layer(self) -> str:
        """Name (in ``self.model``) of the last module with a spatial (N, C, H, W) output, H, W > 1."""
        if self._cam_layer is None:
            cands = [name for name, _, _, shape in self._trace_leaves()
                     if len(shape) == 4 and shape[2] > 1 and shape[3] > 1]
            if not cands:
                raise RuntimeError(f"{self.source}: no layer with a spatial output; give the CAM layer by name")
            self._cam_layer = cands[-1]
        return self._cam_layer

    def weights_sha256(self) -> str | None:
        """SHA-256 of the weights (every state-dict entry's name, dtype, shape and bytes, in order); None for a model
        without any (a runtime wrapper)."""
        import hashlib

        sd = self.model.state_dict()
        if not sd:
            return None
        h = hashlib.sha256()
        for name, t in sd.items():
            t = t.detach().cpu().contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()

    def group(self) -> tuple[str, str]:
        """(key, label) of the runs that count as one model: the training recipe without its seed for a checkpoint
        that imgclass trained (seeds of one recipe are aggregated), else the model source."""
        import hashlib
        import json

        recipe = (self.info.get("meta") or {}).get("recipe") if isinstance(self.info, dict) else None
        if isinstance(recipe, dict) and recipe:
            rest = {k: v for k, v in recipe.items() if k not in ("seed",)}
            key = hashlib.sha256(json.dumps(rest, sort_keys=True, default=str).encode()).hexdigest()[:16]
            label = f"{recipe.get('model') or self.arch} trained on {recipe.get('data')} ({recipe.get('epochs')} epochs)"
            return f"recipe:{key}", label
        return self.source, self.source

    def describe(self) -> dict:
        n_params = sum(p.numel() for p in self.model.parameters())
        return {
            "source": self.source,
            "arch": self.arch,
            "num_classes": self.num_classes,
            "labels": self.labels.tag or ("named" if self.labels.known else "unnamed (index order)"),
            "config": self.config.to_dict(),
            "n_parameters": n_params,
            **({"info": self.info} if self.info else {}),
        }
