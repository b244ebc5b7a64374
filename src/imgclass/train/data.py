"""Training data: a seeded epoch/batch order and per-sample augmentation on uint8 images.

Every random choice depends only on (seed, epoch, sample index) or (seed, step): the same sample gets
the same crop whichever worker or process loads it, a run resumed mid-epoch continues with exactly the
batches it would have seen, and N processes of batch B see the batches one process of batch N*B sees.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.transforms import v2

from ..errors import UsageError
from ..data.base import ImageDataset, Sample
from ..data.transforms import EvalTransform

__all__ = ["EpochBatchSampler", "TrainView", "MultiViewCollate", "build_augment", "seed_for", "subset_indices"]


def seed_for(*keys: int) -> int:
    """A 32-bit seed from integers (order matters), well mixed."""
    return int(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]).generate_state(1)[0])


def subset_indices(n: int, size: int, seed: int) -> np.ndarray:
    """The training subset of ``size`` of ``n`` images for ``seed``: distinct indices in increasing order (the same
    whatever the number of processes)."""
    if not 0 < size <= n:
        raise UsageError(f"subset={size}: the training set has {n} images")
    return np.sort(np.random.default_rng(seed_for(seed, 15485863)).choice(n, size, replace=False))


@dataclass
class EpochBatchSampler:
    """Local batches of ``(epoch, index)`` pairs for one process.

    Epoch e visits ``permutation(seed, e)``; global step s takes the s-th slice of ``batch_size * world``
    indices and this rank its ``rank``-th part. With ``drop_last`` the last incomplete global batch is dropped.
    Without it, that batch of r images is trained too: rank i takes the i-th of ``world`` nearly equal parts of
    it (the first ``r % world`` ranks one image more), so the union over ranks is still the single-process batch;
    a rank whose part is empty (r < world) gets the batch's first image as a stand-in that the loop weighs 0
    (see :meth:`local_count`). The loop weighs each rank's mean loss by ``local_count * world / global_count``,
    which makes the averaged gradient the mean over the r images, as with one process (with accumulation the
    denominator is all the images of the update).
    """

    n: int
    batch_size: int
    world: int = 1
    rank: int = 0
    seed: int = 0
    epoch: int = 0
    start_step: int = 0
    drop_last: bool = True

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world

    @property
    def steps_per_epoch(self) -> int:
        g = self.global_batch
        return self.n // g if self.drop_last else -(-self.n // g)

    @property
    def dropped(self) -> int:
        """Images of each epoch that no step trains (the incomplete last global batch, with ``drop_last``)."""
        return self.n - self.steps_per_epoch * self.global_batch if self.drop_last else 0

    def global_count(self, step: int) -> int:
        """Images in global step ``step`` (all ranks together)."""
        return min(self.global_batch, self.n - step * self.global_batch)

    def _bounds(self, step: int) -> tuple[int, int]:
        """This rank's part of step ``step`` as positions in the epoch's permutation."""
        q, extra = divmod(self.global_count(step), self.world)  # a full batch: q = batch_size, extra = 0
        lo = step * self.global_batch + self.rank * q + min(self.rank, extra)
        return lo, lo + q + (self.rank < extra)

    def local_count(self, step: int) -> int:
        """Images of step ``step`` that are this rank's own (0 when its batch is only the stand-in)."""
        lo, hi = self._bounds(step)
        return hi - lo

    def __len__(self) -> int:
        return max(0, self.steps_per_epoch - self.start_step)

    def __iter__(self):
        perm = np.random.default_rng(seed_for(self.seed, 7919, self.epoch)).permutation(self.n)
        for s in range(self.start_step, self.steps_per_epoch):
            lo, hi = self._bounds(s)
            part = perm[lo:hi] if hi > lo else perm[s * self.global_batch:s * self.global_batch + 1]
            yield [(self.epoch, int(i)) for i in part]


def build_augment(cfg, size: int) -> v2.Compose:
    """The per-sample training transform of a config, on uint8 (3, H, W) tensors."""
    steps: list = []
    if cfg.crop == "rrc":
        steps.append(v2.RandomResizedCrop(size, scale=tuple(cfg.rrc_scale), antialias=True,
                                          interpolation=v2.InterpolationMode(cfg.interpolation)))
    elif cfg.crop == "pad":
        steps.append(_Resize(size))
        if cfg.pad:
            steps.append(v2.RandomCrop(size, padding=cfg.pad))
    elif cfg.crop == "none":
        steps.append(_Resize(size))
    else:
        raise UsageError(f"crop must be 'pad', 'rrc' or 'none', got {cfg.crop!r}")
    if cfg.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if cfg.auto_augment:
        steps.append(_auto_augment(cfg.auto_augment, cfg))
    if cfg.random_erasing > 0:
        steps.append(v2.RandomErasing(p=cfg.random_erasing, value=0))
    return v2.Compose(steps)


class _Resize:
    """Bring any image to ``size`` x ``size`` with the eval resize/crop (no-op when it already fits)."""

    def __init__(self, size: int):
        self.t = EvalTransform((size, size), 1.0, "bilinear")

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return self.t(img)


class _TimmAugment:
    """timm's RandAugment strings ('rand-m7-mstd0.5-inc1'), which work on PIL images."""

    def __init__(self, spec: str, mean):
        from timm.data.auto_augment import rand_augment_transform

        fill = tuple(int(round(255 * m)) for m in mean)
        self.t = rand_augment_transform(spec, {"translate_const": 100, "img_mean": fill})

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        from PIL import Image

        pil = Image.fromarray(np.ascontiguousarray(img.permute(1, 2, 0).numpy()))
        return torch.from_numpy(np.array(self.t(pil))).permute(2, 0, 1)


def _auto_augment(spec: str, cfg):
    name, _, arg = spec.partition(":")
    if name == "randaugment":
        return v2.RandAugment(magnitude=int(arg) if arg else 9)
    if name == "autoaugment":
        policy = v2.AutoAugmentPolicy.CIFAR10 if (arg or "").lower() == "cifar10" else v2.AutoAugmentPolicy.IMAGENET
        return v2.AutoAugment(policy)
    if name == "trivialaugment":
        return v2.TrivialAugmentWide()
    if spec.startswith("rand-"):
        return _TimmAugment(spec, cfg.mean or (0.485, 0.456, 0.406))
    raise UsageError(f"unknown auto_augment {spec!r}: randaugment[:M], autoaugment[:cifar10], trivialaugment, "
                     "or a timm string such as rand-m7-mstd0.5-inc1")


class TrainView(torch.utils.data.Dataset):
    """``dataset[(epoch, index)]`` -> the augmented sample, seeded by (seed, epoch, index)."""

    def __init__(self, ds: ImageDataset, augment, seed: int):
        self.ds, self.augment, self.seed = ds, augment, seed

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key) -> Sample:
        epoch, index = key
        s = self.ds[index]
        if s.image is not None:
            k = seed_for(self.seed, epoch, index)
            torch.manual_seed(k)
            random.seed(k)
            np.random.seed(k)
            s.image = self.augment(s.image.contiguous())
        return s


class MultiViewCollate:
    """Batches of samples whose image is a list of views (self-supervised pretraining): one uint8 NCHW tensor per
    view position (views of one position share a size; positions may differ, as DINO's global and local crops do),
    then the labels, indices and unreadable files as :class:`imgclass.engine.Collate` gives them."""

    def __call__(self, samples: list[Sample]):
        ok = [s for s in samples if s.image is not None]
        bad = [(s.index, s.path, s.error) for s in samples if s.image is None]
        views = [torch.stack([s.image[v] for s in ok]) for v in range(len(ok[0].image))] if ok else []
        labels = torch.tensor([s.label for s in ok], dtype=torch.long)
        indices = torch.tensor([s.index for s in ok], dtype=torch.long)
        return views, labels, indices, bad
