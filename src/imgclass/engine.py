"""The batched evaluation loop shared by every probe.

Images travel as uint8 from the loader workers (decode + the model's resize/crop) to the device,
become float [0, 1] there, and go through the Classifier (normalization inside). Under torchrun
each rank takes every world_size-th *batch* of the same batch list a single process would use, so
batch composition (and thus every logit) is identical, and results are gathered and put back in
dataset order: every sample is counted exactly once.
"""

from __future__ import annotations

import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from .data.base import ImageDataset, Sample
from .data.labels import Alignment, align_labels
from .data.transforms import EvalTransform
from .errors import ImgclassError, UsageError
from .device import resolve_device
from .distributed import DistInfo, all_gather_objects, init_distributed
from .models.classifier import Classifier

__all__ = ["Engine", "Batch", "MapResult", "Predictions", "BadImageError"]


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


class _Collate:
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


class Engine:
    """Runs functions over a dataset in batches on one device, exactly, with progress."""

    def __init__(
        self,
        classifier: Classifier,
        *,
        batch_size: int = 128,
        workers: int | None = None,
        device: str | None = None,
        on_error: str = "skip",
        amp: bool = False,
        channels_last: bool | None = None,
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
        self.amp = bool(amp) and self.device.type == "cuda"
        self.channels_last = self.device.type == "cuda" if channels_last is None else channels_last
        if self.channels_last:
            self.classifier.to(memory_format=torch.channels_last)
        self.progress = progress and self.dist.is_main
        self.transform = EvalTransform.for_model(classifier.config)
        self._cache: dict = {}

    def settings(self) -> dict:
        return {"batch_size": self.batch_size, "workers": self.workers, "device": str(self.device),
                "on_error": self.on_error, "amp": self.amp, "channels_last": self.channels_last,
                "world_size": self.dist.world_size, "transform": self.transform.to_dict()}

    def alignment(self, dataset: ImageDataset) -> Alignment:
        return align_labels(self.classifier.labels, dataset.classes)

    # -- model calls ----------------------------------------------------------------------------
    def to_float(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div_(255.0)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.float16) if self.amp else nullcontext()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Full-width model logits (float32) for float pixels ``x``."""
        with self.autocast():
            out = self.classifier(x)
        return out.float()

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

        ``fn`` returns a dict of tensors whose first dimension is the batch. ``key`` caches the result.
        ``transform`` replaces the model's resize/crop. ``shard=False`` makes every rank process every
        batch in order (for stateful work such as test-time adaptation); results are then not gathered.
        """
        if key is not None and key in self._cache:
            return self._cache[key]
        n = len(dataset)
        starts = list(range(0, n, self.batch_size))
        mine = starts[self.dist.rank::self.dist.world_size] if shard else starts
        batches = [list(range(s, min(s + self.batch_size, n))) for s in mine]
        loader = torch.utils.data.DataLoader(
            _Transformed(dataset, transform or self.transform),
            batch_sampler=batches,
            num_workers=self.workers,
            collate_fn=_Collate(),
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
            self._cache[key] = result
        return result

    def predict(self, dataset: ImageDataset) -> Predictions:
        """Logits of the whole dataset in its own label space (cached per dataset object)."""
        al = self.alignment(dataset)

        def fn(b: Batch) -> dict[str, torch.Tensor]:
            return {"logits": al.apply(self.logits(self.to_float(b.images))), "labels": b.labels}

        out, idx, skipped, secs = self.map(dataset, fn, desc="predicting", key=f"predict:{id(dataset)}")
        c = len(dataset.classes)
        logits = out.get("logits", torch.empty(0, c))
        labels = out.get("labels", torch.empty(0, dtype=torch.long))
        return Predictions(logits, labels, idx, skipped, secs)
