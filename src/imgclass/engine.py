"""The batched evaluation loop shared by every probe.

Images travel as uint8 from the loader workers (decode + the model's resize/crop) to the device,
become float [0, 1] there, and go through the Classifier (normalization inside). Under torchrun
each rank takes every world_size-th *batch* of the same batch list a single process would use, so
batch composition (and thus every logit) is identical, and results are gathered and put back in
dataset order: every sample is counted exactly once.

Predictions (``Engine.logits``) come from a frozen inference copy of the classifier (batch norm folded
into the convolutions, channels-last activations: ``models.fast.inference_copy``) when its logits match
the classifier's on the first images predicted; work that needs gradients or changes the model uses
``Engine.classifier``, the model as loaded. ``amp`` runs them under float16 autocast on CUDA and
bfloat16 autocast on CPUs that compute in bfloat16 natively (AVX512-BF16, AMX, Arm BF16).
"""

from __future__ import annotations

import os
import time
import warnings
import weakref
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data.base import ImageDataset, Sample, SubsetDataset
from .data.labels import Alignment, align_labels
from .data.transforms import EvalTransform
from .errors import ImgclassError, UsageError
from .device import resolve_device
from .distributed import DistInfo, all_gather_objects, init_distributed
from .models.classifier import Classifier

__all__ = ["Engine", "Batch", "MapResult", "Predictions", "BadImageError", "cpu_bfloat16", "resolve_precision"]


class BadImageError(ImgclassError, RuntimeError):
    """Raised with ``on_error='fail'`` at the first file that cannot be decoded."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


@dataclass
class Batch:
    images: torch.Tensor  # (B, 3, H, W) uint8, on the engine's device
    labels: torch.Tensor  # (B,) int64, on the device
    indices: torch.Tensor  # (B,) int64 dataset indices, on the CPU


class MapResult(NamedTuple):
    """Per-sample outputs of ``Engine.map`` in dataset order, with the indices they belong to."""

    outputs: dict[str, torch.Tensor]
    indices: np.ndarray
    skipped: list[dict]
    seconds: float


@dataclass
class Predictions:
    """Logits of every readable sample, in dataset order, in the *dataset's* label space."""

    logits: torch.Tensor  # (N, C) float32
    labels: torch.Tensor  # (N,) int64
    indices: np.ndarray  # (N,) dataset indices
    skipped: list[dict] = field(default_factory=list)  # {index, id, path, reason}
    seconds: float = 0.0


class Collate:
    def __call__(self, samples: list[Sample]):
        ok = [s for s in samples if s.image is not None]
        bad = [(s.index, s.path, s.error) for s in samples if s.image is None]
        if ok:  # stacked as NHWC (the decoders' layout, one copy), handed on as an NCHW channels-last view
            images = torch.stack([s.image.permute(1, 2, 0) for s in ok]).permute(0, 3, 1, 2)
        else:
            images = torch.empty(0, dtype=torch.uint8)
        labels = torch.tensor([s.label for s in ok], dtype=torch.long)
        indices = torch.tensor([s.index for s in ok], dtype=torch.long)
        return images, labels, indices, bad


class _Transformed(torch.utils.data.Dataset):
    def __init__(self, ds: ImageDataset, transform: EvalTransform | None):
        self.ds, self.transform = ds, transform

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> Sample:
        s = self.ds[i]
        if s.image is not None and self.transform is not None:
            try:
                s.image = self.transform(s.image)
            except ValueError as e:
                s.image, s.error, s.path = None, f"cannot resize/crop ({e})", self.ds.sample_id(i)
        return s


def default_workers() -> int:
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, n - 1)) if n > 2 else n


_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16", "sve_bf16")  # x86 AMX / AVX512-BF16; Arm BF16, SVE BF16


def _cpuinfo_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return {w for line in f if line.startswith(("flags", "Features")) for w in line.split(":", 1)[1].split()}
    except OSError:
        return set()


def cpu_bfloat16() -> tuple[bool, str]:
    """Whether this CPU computes in bfloat16 natively (else oneDNN emulates it, slower than float32), and why."""
    if not torch.backends.mkldnn.is_available():
        return False, "torch was built without oneDNN (mkldnn)"
    caps = getattr(torch.cpu, "get_capabilities", None)
    found: list[str] = []
    if caps is not None:
        try:
            c = caps()
            found = [f for f in _BF16_FLAGS if c.get(f) is True]
        except Exception:  # older or unusual builds: fall back to the kernel's flag list
            caps = None
    if caps is None:
        flags = _cpuinfo_flags()
        found = [f for f in _BF16_FLAGS if f in flags]
    if found:
        return True, f"CPU computes bfloat16 natively ({', '.join(found)})"
    return False, "CPU has no native bfloat16 (no avx512_bf16, amx_bf16 or Arm bf16): it would be emulated, slower than float32"


_DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_precision(device: torch.device, amp: bool | str) -> tuple[str, str]:
    """The compute precision for ``amp`` on ``device`` ("float32", "bfloat16" or "float16") and the reason.

    ``amp=True`` is float16 autocast on CUDA and bfloat16 autocast on a CPU with native bfloat16, float32
    elsewhere; a dtype name forces that autocast dtype (e.g. emulated bfloat16, to check its numbers).
    """
    if isinstance(amp, str):
        name = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}.get(amp, amp)
        if name not in _DTYPES:
            raise UsageError(f"amp must be true/false or one of {', '.join(_DTYPES)}, got {amp!r}")
        return name, ("requested" if name != "float32" else "amp off")
    if not amp:
        return "float32", "amp off"
    if device.type == "cuda":
        return "float16", "amp on CUDA: float16 autocast"
    if device.type == "cpu":
        native, why = cpu_bfloat16()
        return ("bfloat16", f"amp on CPU: bfloat16 autocast; {why}") if native else ("float32", f"amp ignored: {why}")
    return "float32", f"amp ignored: no autocast precision chosen for device type {device.type!r}"


_COPY_RTOL, _COPY_ATOL = 1e-3, 1e-4  # the inference copy's logits against the classifier's


def is_depthwise(x: torch.Tensor, weight: torch.Tensor, groups: int) -> bool:
    """A convolution with one filter group per input channel (MobileNets, EfficientNets, ConvNeXt)."""
    return groups > 1 and x.dim() == 4 and groups == x.shape[1] and weight.shape[1] == 1


class _DepthwiseInFloat32(torch.overrides.TorchFunctionMode):
    """Under bfloat16 autocast, depthwise convolutions compute in float32.

    They are memory-bound (a few multiply-adds per value read), so bfloat16 buys them little speed, and the
    precision they lose adds up along a MobileNet: on the Coral MobileNet v2, bfloat16 everywhere flipped 14 of 1,000
    near-tied ImageNet decisions (top-1 -0.7 points), with depthwise convolutions in float32 2 (-0.2 points). Autocast
    has no per-op exclusion, hence this mode around it.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.conv2d and len(args) >= 2:
            groups = args[6] if len(args) > 6 else kwargs.get("groups", 1)
            if is_depthwise(args[0], args[1], groups):
                with torch.autocast(args[0].device.type, enabled=False):
                    args = tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args)
                    return func(*args, **kwargs)
        return func(*args, **kwargs)


@contextmanager
def _bfloat16_autocast(device_type: str):
    with torch.autocast(device_type, dtype=torch.bfloat16), _DepthwiseInFloat32():
        yield


class Engine:
    """Runs functions over a dataset in batches on one device, exactly, with progress.

    ``classifier`` is the model as loaded (moved to the device, evaluation mode): probes that take
    gradients or change a model use it. ``logits`` runs the *predictor*: with ``fast`` (the default), a
    frozen inference copy (batch norm folded, channels-last) made at the first prediction and used if
    its logits match the classifier's on those first images, else the classifier itself. An Engine over
    a model whose weights change after its first prediction needs ``fast=False``. ``amp``: True for
    autocast where it is fast (float16 on CUDA, bfloat16 on CPUs with native bfloat16), or a dtype name
    ("bfloat16", "float16") to force it; logits always leave as float32.
    """

    def __init__(
        self,
        classifier: Classifier,
        *,
        batch_size: int = 128,
        workers: int | None = None,
        device: str | None = None,
        on_error: str = "skip",
        amp: bool | str = False,
        channels_last: bool | None = None,
        fast: bool = True,
        progress: bool = True,
        dist: DistInfo | None = None,
    ):
        if on_error not in {"skip", "fail"}:
            raise UsageError(f"on_error must be 'skip' or 'fail', got {on_error!r}")
        self.device = resolve_device(device)
        self.dist = dist if dist is not None else init_distributed(str(self.device))
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.classifier = classifier.to(self.device).eval()
        self.batch_size = int(batch_size)
        self.workers = default_workers() if workers is None else int(workers)
        self.on_error = on_error
        self.precision, self.precision_reason = resolve_precision(self.device, amp)
        self.amp = self.precision != "float32"
        if amp is True and not self.amp:
            warnings.warn(f"--amp: computing in float32 ({self.precision_reason})", RuntimeWarning, stacklevel=2)
        self.channels_last = self.device.type == "cuda" if channels_last is None else channels_last
        if self.channels_last:
            self.classifier.to(memory_format=torch.channels_last)
        self.fast = bool(fast)
        self.progress = progress and self.dist.is_main
        self.transform = EvalTransform.for_model(classifier.config)
        self._predictor: torch.nn.Module | None = None
        self._copy_info: dict = ({"used": False, "reason": "not made yet: nothing was predicted"} if self.fast
                                 else {"used": False, "reason": "turned off (fast=False, --no-fast)"})
        # per dataset *object* (weakly: an id() is reused once a dataset is collected): {key: MapResult}
        self._cache: weakref.WeakKeyDictionary[ImageDataset, dict[str, MapResult]] = weakref.WeakKeyDictionary()
        self._skipped: weakref.WeakKeyDictionary[ImageDataset, dict[int, dict]] = weakref.WeakKeyDictionary()

    def settings(self) -> dict:
        return {"batch_size": self.batch_size, "workers": self.workers, "device": str(self.device),
                "on_error": self.on_error, "amp": self.amp, "precision": self.precision,
                "precision_reason": self.precision_reason, "channels_last": self.channels_last,
                "inference_copy": dict(self._copy_info),
                "world_size": self.dist.world_size, "transform": self.transform.to_dict()}

    def alignment(self, dataset: ImageDataset) -> Alignment:
        return align_labels(self.classifier.labels, dataset.classes)

    # -- model calls ----------------------------------------------------------------------------
    def to_float(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div_(255.0)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def autocast(self):
        dtype = _DTYPES[self.precision]
        if dtype is None:
            return nullcontext()
        if dtype == torch.bfloat16:
            return _bfloat16_autocast(self.device.type)
        return torch.autocast(self.device.type, dtype=dtype)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Full-width model logits (float32) for float pixels ``x``, from the predictor (see the class)."""
        model = self._predictor if self._predictor is not None else self._make_predictor(x)
        with self.autocast():
            out = model(x)
        return out.float()

    def _make_predictor(self, x: torch.Tensor) -> torch.nn.Module:
        """The inference copy if its float32 logits match the classifier's on (up to 8 of) ``x``, else the classifier.

        On the CPU the copy's convolutions also take their ReLU and residual add as oneDNN post-ops
        (``models.pointwise``); if that copy fails the check, the copy without them is tried.
        """
        self._predictor = self.classifier
        if not self.fast:
            return self._predictor
        from .models import pointwise
        from .models.fast import inference_copy

        fuse = self.device.type == "cpu" and pointwise.available()
        for attempt in ((True, False) if fuse else (False,)):
            with torch.inference_mode(False), torch.no_grad():  # ordinary tensors, even when called in inference mode
                try:
                    copy = inference_copy(self.classifier)
                except Exception as e:  # e.g. a module that cannot be deep-copied
                    self._copy_info = {"used": False, "reason": f"no copy ({type(e).__name__}: {e})"}
                    return self._predictor
                fi = copy.fast_info
                info: dict = {"folded": fi.folded, "channels_last": fi.channels_last, "batch_norms": fi.batch_norms,
                              "batch_norms_left": fi.batch_norms_left, "fused_conv_relu": 0}
                if not (fi.folded or fi.channels_last):  # the copy would compute as the model as loaded does
                    self._copy_info = {"used": False, **info, "reason": fi.reason or "nothing to gain"}
                    return self._predictor
                net = getattr(copy.model, "net", copy.model)  # inside the channels-last wrapper
                if attempt and fi.folded and isinstance(net, torch.fx.GraphModule):
                    info["fused_conv_relu"] = pointwise.fuse_conv_pointwise(net)
                xc = x.detach()[:8].float().clone()
                try:
                    ref, got = self.classifier(xc).float(), copy(xc).float()
                except Exception as e:  # e.g. a fused residual add of unequal shapes
                    ref, got, info["error"] = None, None, f"{type(e).__name__}: {e}"
            same = ref is not None and ref.shape == got.shape
            info.update(max_logit_diff=float((ref - got).abs().max()) if same and ref.numel() else None,
                        check=f"float32 logits of the first {len(xc)} images predicted against the model as "
                              f"loaded, |diff| <= {_COPY_ATOL:g} + {_COPY_RTOL:g} |logit|")
            if same and torch.allclose(got, ref, rtol=_COPY_RTOL, atol=_COPY_ATOL):
                self._predictor, self._copy_info = copy, {"used": True, **info}
                return self._predictor
            self._copy_info = {"used": False, **info, "reason": "its logits differ from the model as loaded"}
        return self._predictor

    # -- the loop ---------------------------------------------------------------------------------
    def map(
        self,
        dataset: ImageDataset,
        fn: Callable[[Batch], dict[str, torch.Tensor]],
        *,
        desc: str = "evaluating",
        grad: bool = False,
        key: str | None = None,
        transform: EvalTransform | None = None,
        shard: bool = True,
    ) -> MapResult:
        """Apply ``fn`` to every batch; return its per-sample outputs concatenated in dataset order,
        the dataset indices they belong to, the skipped files, and the wall time.

        ``fn`` returns a dict of tensors whose first dimension is the batch. ``key`` caches the result for
        this dataset object (a later call with the same dataset and key returns it without a pass).
        ``transform`` replaces the model's resize/crop. ``shard=False`` makes every rank process every
        batch in order (for stateful work such as test-time adaptation); results are then not gathered.
        """
        if key is not None and key in self._cache.get(dataset, {}):
            return self._cache[dataset][key]
        n = len(dataset)
        starts = list(range(0, n, self.batch_size))
        mine = starts[self.dist.rank::self.dist.world_size] if shard else starts
        batches = [list(range(s, min(s + self.batch_size, n))) for s in mine]
        loader = torch.utils.data.DataLoader(
            _Transformed(dataset, transform or self.transform),
            batch_sampler=batches,
            num_workers=self.workers,
            collate_fn=Collate(),
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            prefetch_factor=4 if self.workers > 0 else None,
        )
        outs: dict[str, list[torch.Tensor]] = {}
        idx_parts: list[torch.Tensor] = []
        skipped: list[dict] = []
        t0 = time.perf_counter()
        ctx = torch.enable_grad() if grad else torch.inference_mode()
        total = sum(len(b) for b in batches)
        with tqdm(total=total, desc=desc, unit="img", disable=not self.progress, leave=False, dynamic_ncols=True) as bar:
            for images, labels, indices, bad in loader:
                for index, path, reason in bad:
                    if self.on_error == "fail":
                        raise BadImageError(path or dataset.sample_id(index), reason)
                    skipped.append({"index": int(index), "id": dataset.sample_id(index), "path": path, "reason": reason})
                if len(indices):
                    batch = Batch(images.to(self.device, non_blocking=True), labels.to(self.device), indices)
                    with ctx:
                        res = fn(batch)
                    for k, v in res.items():  # kept on the device: no per-batch synchronisation
                        outs.setdefault(k, []).append(v.detach())
                    idx_parts.append(indices)
                bar.update(len(indices) + len(bad))
        seconds = time.perf_counter() - t0
        local = ({k: torch.cat(v).cpu() for k, v in outs.items()},
                 torch.cat(idx_parts) if idx_parts else torch.empty(0, dtype=torch.long), skipped, seconds)
        parts = all_gather_objects(local, self.dist) if shard else [local]
        idx = torch.cat([p[1] for p in parts])
        order = torch.argsort(idx)
        keys = parts[0][0].keys() if parts[0][0] else next((p[0].keys() for p in parts if p[0]), [])
        merged = {k: torch.cat([p[0][k] for p in parts if k in p[0]])[order] for k in keys}
        all_skipped = sorted((s for p in parts for s in p[2]), key=lambda s: s["index"])
        result = MapResult(merged, idx[order].numpy(), all_skipped, max(p[3] for p in parts))
        if key is not None:
            self._cache.setdefault(dataset, {})[key] = result
        self._note_skipped(dataset, all_skipped)
        return result

    def _note_skipped(self, dataset: ImageDataset, skipped: list[dict]) -> None:
        """Remember unreadable files under the dataset and every dataset it is a subset of (in their indices)."""
        d, idx = dataset, [s["index"] for s in skipped]
        while skipped:
            seen = self._skipped.setdefault(d, {})
            for s, i in zip(skipped, idx):
                seen.setdefault(i, {**s, "index": i})
            if not isinstance(d, SubsetDataset):
                break
            d, idx = d.base, [int(d.indices[i]) for i in idx]

    def predict(self, dataset: ImageDataset) -> Predictions:
        """Logits of the whole dataset in its own label space (cached per dataset object: one pass)."""
        al = self.alignment(dataset)

        def fn(b: Batch) -> dict[str, torch.Tensor]:
            return {"logits": al.apply(self.logits(self.to_float(b.images))), "labels": b.labels}

        return self._as_predictions(dataset, self.map(dataset, fn, desc="predicting", key="predict"))

    @staticmethod
    def _as_predictions(dataset: ImageDataset, r: MapResult) -> Predictions:
        c = len(dataset.classes)
        return Predictions(r.outputs.get("logits", torch.empty(0, c)),
                           r.outputs.get("labels", torch.empty(0, dtype=torch.long)), r.indices, r.skipped, r.seconds)

    def cached_predictions(self, dataset: ImageDataset) -> Predictions | None:
        """The predictions ``predict`` already made for this dataset object, without a pass; None if none."""
        r = self._cache.get(dataset, {}).get("predict")
        return None if r is None else self._as_predictions(dataset, r)

    def skipped_files(self, dataset: ImageDataset) -> list[dict]:
        """Unreadable files met so far by any pass over ``dataset`` or a subset of it (``index`` in ``dataset``)."""
        seen = self._skipped.get(dataset, {})
        return [seen[i] for i in sorted(seen)]
