"""The dataset contract: random access to uint8 RGB images, labels and stable sample ids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..errors import UsageError
from .decode import ImageError
from .labels import LabelSpace

__all__ = ["ImageDataset", "Sample", "SubsetDataset", "ArrayDataset"]


@dataclass
class Sample:
    """One item as the loader sees it: the image, or the reason it could not be read."""

    index: int
    label: int
    image: torch.Tensor | None  # (3, H, W) uint8, often a view of HWC memory
    error: str | None = None
    path: str | None = None


class ImageDataset(torch.utils.data.Dataset):
    """Base class of every dataset source.

    Subclasses implement ``__len__``, ``label(i)``, ``sample_id(i)`` and ``load(i)`` (uint8 ``(3, H, W)``
    RGB tensor, or :class:`ImageError`). ``labels`` gives all labels without decoding anything.
    """

    spec: str = ""
    classes: LabelSpace
    # (N, C) human label distribution aligned with the dataset's samples and classes, where known
    soft_labels: np.ndarray | None = None
    soft_label_source: str | None = None

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def label(self, i: int) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def sample_id(self, i: int) -> str:
        return str(i)

    def load(self, i: int) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def labels(self) -> np.ndarray:
        return np.fromiter((self.label(i) for i in range(len(self))), dtype=np.int64, count=len(self))

    @property
    def labeled(self) -> bool:
        """False for a dataset without labels (a flat folder of images; every label is -1)."""
        return not self.classes.is_unlabeled

    def __getitem__(self, i: int) -> Sample:
        try:
            return Sample(i, self.label(i), self.load(i))
        except ImageError as e:
            return Sample(i, self.label(i), None, e.reason, e.path)

    def subset(self, indices: Sequence[int]) -> "SubsetDataset":
        return SubsetDataset(self, indices)

    def files_sha256(self) -> str:
        """SHA-256 of the sample list (each sample's id and label, in order): two runs on the same files agree."""
        import hashlib

        h = hashlib.sha256()
        for i, y in enumerate(self.labels.tolist()):
            h.update(f"{self.sample_id(i)}\t{y}\n".encode())
        return h.hexdigest()

    def describe(self) -> dict:
        return {"spec": self.spec, "n_samples": len(self), "n_classes": len(self.classes), "labeled": self.labeled,
                "classes": self.classes.to_dict(), "soft_labels": self.soft_label_source}


class SubsetDataset(ImageDataset):
    """A view of some samples of another dataset (ids, labels and soft labels carried along)."""

    def __init__(self, base: ImageDataset, indices: Sequence[int]):
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        self.classes = base.classes
        self.spec = base.spec
        self.soft_labels = None if base.soft_labels is None else base.soft_labels[self.indices]
        self.soft_label_source = base.soft_label_source

    def __len__(self) -> int:
        return len(self.indices)

    def label(self, i: int) -> int:
        return self.base.label(int(self.indices[i]))

    @property
    def labels(self) -> np.ndarray:
        return self.base.labels[self.indices]

    def sample_id(self, i: int) -> str:
        return self.base.sample_id(int(self.indices[i]))

    def load(self, i: int) -> torch.Tensor:
        return self.base.load(int(self.indices[i]))


class ReorderedDataset(SubsetDataset):
    """Some samples of another dataset in another order, under ids of their own (e.g. official CIFAR-10 indices)."""

    def __init__(self, base: ImageDataset, indices: Sequence[int], ids: Sequence[str], *, spec: str = ""):
        super().__init__(base, indices)
        if len(ids) != len(self.indices):
            raise ValueError(f"{len(ids)} ids for {len(self.indices)} samples")
        self._ids = [str(i) for i in ids]
        self.spec = spec or base.spec

    def sample_id(self, i: int) -> str:
        return self._ids[i]


class ArrayDataset(ImageDataset):
    """Images already in memory: ``(N, H, W, 3)`` or ``(N, H, W)`` uint8 arrays."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: LabelSpace, *, spec: str = "",
                 ids: Sequence[str] | None = None):
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise UsageError(f"{spec or 'array dataset'}: images must be uint8, got {images.dtype}")
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
            raise UsageError(f"{spec or 'array dataset'}: images must be NHWC with 1, 3 or 4 channels, got {images.shape}")
        labels = np.asarray(labels).astype(np.int64).reshape(-1)
        if len(labels) != len(images):
            raise UsageError(f"{spec}: {len(images)} images but {len(labels)} labels")
        if classes.is_unlabeled:
            if len(labels) and (labels != -1).any():
                raise UsageError(f"{spec}: an unlabeled dataset's labels must all be -1")
        elif len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise UsageError(f"{spec}: labels must lie in [0, {len(classes)}), found {labels.min()}..{labels.max()}")
        self.images = images
        self._labels = labels
        self.classes = classes
        self.spec = spec
        self._ids = list(ids) if ids is not None else None

    def __len__(self) -> int:
        return len(self._labels)

    def label(self, i: int) -> int:
        return int(self._labels[i])

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def sample_id(self, i: int) -> str:
        return self._ids[i] if self._ids is not None else str(i)

    def set_ids(self, ids: Sequence[str]) -> None:
        """Name the samples (stable ids such as ``test/17``); one id per image."""
        ids = [str(i) for i in ids]
        if len(ids) != len(self):
            raise ValueError(f"{self.spec}: {len(ids)} ids for {len(self)} images")
        self._ids = ids

    def load(self, i: int) -> torch.Tensor:
        img = self.images[i]
        c = img.shape[-1]
        if c == 1:
            img = np.repeat(img, 3, axis=2)
        elif c == 4:  # composite on white, as for files
            rgb = img[..., :3].astype(np.float32)
            a = img[..., 3:4].astype(np.float32) / 255.0
            img = np.rint(rgb * a + 255.0 * (1 - a)).astype(np.uint8)
        return torch.from_numpy(img.copy()).permute(2, 0, 1)  # own memory, (3, H, W) view of HWC
