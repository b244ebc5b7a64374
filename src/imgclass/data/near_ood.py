"""Near-OOD sets built from other datasets: ImageNet images of classes that no CIFAR-10 class covers."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources

import numpy as np
from PIL import Image

from .base import ArrayDataset, ImageDataset
from .labels import CIFAR10, LabelSpace
from .sources import DatasetSourceError

__all__ = ["OverlapClass", "cifar10_imagenet_overlap", "resize_like_cifar", "imagenet_near_ood_cifar10"]

OVERLAP_FILE = "cifar10_imagenet_overlap.tsv"
OVERLAP_COLUMNS = ("index", "wnid", "name", "cifar10_class", "reason")
SPEC = "zoo:imagenet-near-ood-cifar10"


@dataclass(frozen=True)
class OverlapClass:
    """An ImageNet-1k class removed from the near-OOD set, the CIFAR-10 class it overlaps, and why."""

    index: int
    wnid: str
    name: str
    cifar10_class: str
    reason: str


def cifar10_imagenet_overlap() -> tuple[OverlapClass, ...]:
    """The ImageNet-1k classes that overlap a CIFAR-10 class (shipped as ``data/cifar10_imagenet_overlap.tsv``)."""
    text = resources.files(__package__).joinpath(OVERLAP_FILE).read_text(encoding="utf-8")
    reader = csv.reader(text.splitlines(), delimiter="\t")
    header = tuple(next(reader))
    if header != OVERLAP_COLUMNS:
        raise DatasetSourceError(f"{OVERLAP_FILE}: columns {header}, expected {OVERLAP_COLUMNS}")
    rows = tuple(OverlapClass(int(r[0]), r[1], r[2], r[3], r[4]) for r in reader if r)
    bad = [r.name for r in rows if r.cifar10_class not in CIFAR10]
    if bad:
        raise DatasetSourceError(f"{OVERLAP_FILE}: classes {bad} name no CIFAR-10 class")
    return rows


def resize_like_cifar(image: np.ndarray, size: int = 32) -> np.ndarray:
    """``(H, W, 3)`` uint8 -> ``(size, size, 3)`` uint8: the short side to ``size`` with PIL's BOX filter (area
    averaging, antialiased; the filter Chrabaszcz et al. 2017 found best for downsampled ImageNet), then a centre
    crop of the long side."""
    h, w = image.shape[:2]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    small = np.asarray(Image.fromarray(image).resize((nw, nh), Image.Resampling.BOX))
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.ascontiguousarray(small[top:top + size, left:left + size])


def imagenet_near_ood_cifar10(source: ImageDataset, *, size: int = 32) -> ArrayDataset:
    """The images of ``source`` (ImageNet-labelled, e.g. ``zoo:imagenet-samples``) whose class overlaps no CIFAR-10
    class, resized like CIFAR-10 images, as an unlabeled dataset whose ids are the source's sample ids."""
    wnids = source.classes.wnids
    if wnids is None:
        raise DatasetSourceError(f"{SPEC}: {source.spec} has no WordNet ids to match the overlap list against")
    removed = {r.wnid for r in cifar10_imagenet_overlap()}
    unknown = sorted(removed - set(wnids))
    if unknown:
        raise DatasetSourceError(f"{SPEC}: overlap classes {unknown[:5]} are not classes of {source.spec}")
    keep = [i for i, y in enumerate(source.labels.tolist()) if wnids[y] not in removed]
    images = np.empty((len(keep), size, size, 3), dtype=np.uint8)
    for k, i in enumerate(keep):
        # an unreadable file raises ImageError: a broken asset, not a sample to skip silently
        images[k] = resize_like_cifar(source.load(i).permute(1, 2, 0).numpy(), size)
    return ArrayDataset(images, np.full(len(keep), -1, dtype=np.int64), LabelSpace.unlabeled(), spec=SPEC,
                        ids=[source.sample_id(i) for i in keep])
