"""Dataset specs -> :class:`ImageDataset`. One resolver per scheme, registered by decorator."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..registry import Registry
from ..specs import Options, Spec, SpecError, parse_spec
from .base import ArrayDataset, ImageDataset, ReorderedDataset, Sample, SubsetDataset
from .decode import DEFAULT_MAX_PIXELS, ImageError, decode_image
from .labels import LabelSpace, align_labels, imagenet_space, named_space
from .sources import DatasetSourceError, FolderDataset, TarDataset, load_cifar10, load_digits, load_idx, load_npz

__all__ = [
    "fold_assignment",
    "ImageDataset",
    "ArrayDataset",
    "SubsetDataset",
    "Sample",
    "ImageError",
    "LabelSpace",
    "DatasetSourceError",
    "load_dataset",
    "DATASET_SOURCES",
    "ZOO_DATASETS",
    "train_split_spec",
    "register_dataset_source",
    "register_zoo_dataset",
    "align_labels",
    "decode_image",
]

DATASET_SOURCES: Registry["SourceEntry"] = Registry("dataset source")
ZOO_DATASETS: Registry["ZooDataset"] = Registry("zoo dataset")


@dataclass
class SourceEntry:
    scheme: str
    build: Callable[[Spec, Options], ImageDataset]
    help: str


@dataclass
class ZooDataset:
    name: str
    splits: tuple[str, ...]
    build: Callable[[str, Options], ImageDataset]
    help: str
    assets: tuple[str, ...] = ()


def register_dataset_source(scheme: str, help: str):
    def deco(fn):
        DATASET_SOURCES[scheme] = SourceEntry(scheme, fn, help)
        return fn
    return deco


def register_zoo_dataset(name: str, *, splits: tuple[str, ...], help: str, assets: tuple[str, ...] = ()):
    def deco(fn):
        ZOO_DATASETS[name] = ZooDataset(name, splits, fn, help, assets)
        return fn
    return deco


def _infer_scheme(body: str) -> str | None:
    p = Path(body).expanduser()
    name = p.name.lower()
    if p.is_dir():
        return "folder"
    if name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
        return "tar"
    if name.endswith(".npz"):
        return "npz"
    return None


def load_dataset(spec: str | ImageDataset) -> ImageDataset:
    """Resolve a dataset spec such as ``folder:DIR``, ``tar:x.tar.gz`` or ``zoo:cifar10-jpeg:test``."""
    if isinstance(spec, ImageDataset):
        return spec
    s = parse_spec(spec, DATASET_SOURCES, infer=_infer_scheme)
    opts = s.pop_options()
    fold = _fold_options(s, opts)
    ds = DATASET_SOURCES[s.scheme].build(s, opts)
    opts.finish()
    ds.spec = s.text
    if fold is not None:
        ds = _fold_part(ds, *fold)
        ds.spec = s.text
    return ds


def _fold_options(s: Spec, opts: Options) -> tuple[int, int, str, int] | None:
    """``?folds=K&fold=k&part=train|heldout[&fold_seed=S]`` (any source): one part of a seeded, stratified K-fold
    split, for cross-validated probabilities."""
    k = opts.int("folds")
    if k is None:
        for key in ("fold", "part", "fold_seed"):
            if key in opts:
                raise SpecError(f"{s.text}: option {key} needs folds=K")
        return None
    fold, part, seed = opts.int("fold"), opts.str("part", "heldout"), opts.int("fold_seed", 0)
    if k < 2 or fold is None or not 0 <= fold < k:
        raise SpecError(f"{s.text}: folds=K needs K >= 2 and fold=k with 0 <= k < K")
    if part not in ("train", "heldout"):
        raise SpecError(f"{s.text}: part must be train or heldout, not {part!r}")
    return k, fold, part, seed


def fold_assignment(labels: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """(N,) fold of each sample: within each class a seeded permutation dealt round-robin over the K folds, so each
    fold holds every class in proportion (stratified)."""
    labels = np.asarray(labels)
    out = np.empty(len(labels), dtype=np.int64)
    rng = np.random.default_rng(seed)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        out[idx[rng.permutation(len(idx))]] = np.arange(len(idx)) % k
    return out


def _fold_part(ds: ImageDataset, k: int, fold: int, part: str, seed: int) -> ImageDataset:
    folds = fold_assignment(ds.labels, k, seed)
    return ds.subset(np.flatnonzero((folds == fold) if part == "heldout" else (folds != fold)))


def _max_pixels(opts: Options) -> int:
    return opts.int("max_pixels", DEFAULT_MAX_PIXELS)


def _override_classes(ds: ImageDataset, opts: Options) -> ImageDataset:
    """``?classes=SPACE``: folder names found in SPACE take its metadata (wnids, members); otherwise, with as
    many classes as SPACE has names, the classes are renamed in order."""
    c = opts.str("classes")
    if c is None:
        return ds
    if not ds.labeled:
        raise SpecError(f"{ds.spec}: classes={c} names the classes of class sub-folders, but this dataset is "
                        "unlabeled (a flat folder of images, or labels=none)")
    space = named_space(c)
    lookup = {_norm(n): i for i, n in enumerate(space.names)}
    found = [lookup.get(_norm(n)) for n in ds.classes.names]
    if all(i is not None for i in found):
        ds.classes = LabelSpace(
            tuple(space.names[i] for i in found),
            None if space.wnids is None else tuple(space.wnids[i] for i in found),
            True, space.tag, None if space.members is None else tuple(space.members[i] for i in found))
    elif len(space) == len(ds.classes):
        ds.classes = space
    else:
        missing = [n for n, i in zip(ds.classes.names, found) if i is None]
        raise SpecError(f"{ds.spec}: classes {missing[:10]} are not in classes={c}, and the data has "
                        f"{len(ds.classes)} classes where {c} has {len(space)}")
    return ds


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", " ")


@register_dataset_source("folder", "folder:DIR[?labels=none] - one sub-folder per class (ImageFolder), images at any "
                                   "depth; a flat folder of images (or labels=none) is unlabeled")
def _folder(s: Spec, opts: Options) -> ImageDataset:
    ds = FolderDataset(s.target, spec=s.text, max_pixels=_max_pixels(opts), labels=opts.str("labels", "auto"))
    return _override_classes(ds, opts)


@register_dataset_source("tar", "tar:FILE[?root=DIR&labels=none] - plain or compressed tarball laid out like a folder")
def _tar(s: Spec, opts: Options) -> ImageDataset:
    ds = TarDataset(s.target, root=opts.str("root"), spec=s.text, max_pixels=_max_pixels(opts),
                    labels=opts.str("labels", "auto"))
    return _override_classes(ds, opts)


@register_dataset_source("npz", "npz:FILE - arrays 'images' (NHWC uint8), 'labels', optional 'class_names'")
def _npz(s: Spec, opts: Options) -> ImageDataset:
    return _override_classes(load_npz(s.target, spec=s.text), opts)


@register_dataset_source("cifar10", "cifar10:DIR_OR_TARBALL[?split=test|train] - official CIFAR-10 python batches")
def _cifar10(s: Spec, opts: Options) -> ImageDataset:
    split = opts.str("split", "test")
    ds = load_cifar10(s.target, split=split, spec=s.text)
    if split == "test" and opts.bool("human_labels", True):
        _attach_cifar10h(ds, np.arange(len(ds)), required=False)
    return ds


@register_dataset_source("idx", "idx:DIR[?split=test|train&classes=...] - MNIST/Fashion-MNIST IDX files, gzipped or not")
def _idx(s: Spec, opts: Options) -> ImageDataset:
    c = opts.str("classes")
    return load_idx(s.target, split=opts.str("split", "test"), classes=named_space(c) if c else None, spec=s.text)


@register_dataset_source("digits", "digits - scikit-learn's 8x8 handwritten digits (1,797 images)")
def _digits(s: Spec, opts: Options) -> ImageDataset:
    return load_digits(spec=s.text)


@register_dataset_source("zoo", "zoo:NAME[:SPLIT] - a registered dataset (see `imgclass datasets`)")
def _zoo(s: Spec, opts: Options) -> ImageDataset:
    name, _, split = s.target.partition(":")
    entry = ZOO_DATASETS[name]
    split = split or entry.splits[0]
    if split not in entry.splits:
        raise SpecError(f"zoo:{name} has splits {', '.join(entry.splits)}, not {split!r}")
    return entry.build(split, opts)


def train_split_spec(spec: str | None) -> str | None:
    """``zoo:NAME:SPLIT`` (not the train split itself) -> ``zoo:NAME:train`` when that zoo dataset has a train
    split, else None: where probes take fit statistics or a feature bank from by default."""
    spec = spec or ""
    if spec.startswith("zoo:") and spec.count(":") == 2 and not spec.endswith(":train"):
        name = spec.split(":")[1].split("?")[0]
        if name in ZOO_DATASETS and "train" in ZOO_DATASETS[name].splits:
            return f"zoo:{name}:train"
    return None


# ---------------------------------------------------------------------------------------------
# registered datasets (files resolve through the asset layer)

def _attach_cifar10h(ds: ImageDataset, test_index: np.ndarray, *, required: bool) -> None:
    from ..assets import AssetError, fetch

    try:
        probs = np.load(fetch("cifar10h-probs", download=required), allow_pickle=False)
    except AssetError:
        if required:
            raise
        return
    ds.soft_labels = probs[np.asarray(test_index)].astype(np.float64)
    ds.soft_label_source = "CIFAR-10H (Peterson et al. 2019)"


@register_zoo_dataset("cifar10-jpeg", splits=("test", "train", "test-official"),
                      assets=("cifar10-jpeg-test", "cifar10-jpeg-train", "cifar10-jpeg-test-order"),
                      help="CIFAR-10 as JPEG (q~75): 10,000 test / 50,000 train images; test-official: the test "
                           "images in official order, ids test/<index> (CIFAR-10H and published annotations join)")
def _zoo_cifar10_jpeg(split: str, opts: Options) -> ImageDataset:
    from ..assets import fetch

    if split != "test-official":
        return TarDataset(fetch(f"cifar10-jpeg-{split}"), spec=f"zoo:cifar10-jpeg:{split}",
                          max_pixels=_max_pixels(opts))
    tar = TarDataset(fetch("cifar10-jpeg-test"), spec="zoo:cifar10-jpeg:test", max_pixels=_max_pixels(opts))
    position = {f"test/{name}": k for k, name in enumerate(tar.files)}
    order = fetch("cifar10-jpeg-test-order").read_text().split()
    missing = [m for m in order if m not in position]
    if missing or len(order) != len(tar):
        raise DatasetSourceError(f"zoo:cifar10-jpeg:test-official: the order file does not match the tarball "
                                 f"({len(order)} lines for {len(tar)} images; e.g. {missing[:1]} not in it)")
    ds = ReorderedDataset(tar, [position[m] for m in order], [f"test/{i}" for i in range(len(order))],
                          spec="zoo:cifar10-jpeg:test-official")
    ds.classes = LabelSpace(tar.classes.names, None, True, "cifar10")
    if opts.bool("human_labels", True):
        _attach_cifar10h(ds, np.arange(len(ds)), required=False)
    return ds


@register_zoo_dataset("cifar10-lossless", splits=("test", "train"),
                      assets=("cifar10-lossless-test1000", "cifar10-lossless-train2000", "cifar10h-probs"),
                      help="first 1,000 test / 2,000 train CIFAR-10 images, lossless; test carries CIFAR-10H soft labels")
def _zoo_cifar10_lossless(split: str, opts: Options) -> ImageDataset:
    from ..assets import fetch

    asset = "cifar10-lossless-test1000" if split == "test" else "cifar10-lossless-train2000"
    ds = load_npz(fetch(asset), spec=f"zoo:cifar10-lossless:{split}")
    key = f"{split}_index"
    ds.set_ids([f"{split}/{int(i)}" for i in ds.extra[key]])
    ds.classes = LabelSpace(ds.classes.names, None, True, "cifar10")
    if split == "test" and opts.bool("human_labels", True):
        _attach_cifar10h(ds, ds.extra[key], required=True)
    return ds


@register_zoo_dataset("cifar10", splits=("test", "train"), assets=("cifar10-python",),
                      help="CIFAR-10, official python batches (downloaded from the Toronto site)")
def _zoo_cifar10(split: str, opts: Options) -> ImageDataset:
    from ..assets import fetch

    ds = load_cifar10(fetch("cifar10-python"), split=split, spec=f"zoo:cifar10:{split}")
    if split == "test" and opts.bool("human_labels", True):
        _attach_cifar10h(ds, np.arange(len(ds)), required=False)
    return ds


@register_zoo_dataset("mnist", splits=("test",), assets=("mnist-test-images", "mnist-test-labels"),
                      help="MNIST test set (10,000 gray digits; the far-OOD set of OpenOOD's CIFAR-10 benchmark)")
def _zoo_mnist(split: str, opts: Options) -> ImageDataset:
    from ..assets import fetch

    images = fetch("mnist-test-images")
    labels = fetch("mnist-test-labels")
    if images.parent != labels.parent:
        raise DatasetSourceError(f"zoo:mnist: the images ({images}) and labels ({labels}) are in different folders")
    return load_idx(images.parent, split="test", spec="zoo:mnist:test")


@register_zoo_dataset("imagenet-near-ood-cifar10", splits=("all",), assets=("imagenet-samples",),
                      help="near-OOD set for CIFAR-10 models: the zoo:imagenet-samples images of the ImageNet "
                           "classes that overlap no CIFAR-10 class (data/cifar10_imagenet_overlap.tsv lists the "
                           "removed ones), short side to 32 (PIL BOX) and centre-cropped; unlabeled")
def _zoo_imagenet_near_ood_cifar10(split: str, opts: Options) -> ImageDataset:
    from .near_ood import imagenet_near_ood_cifar10

    return imagenet_near_ood_cifar10(_zoo_imagenet_samples("all", opts))


FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist package


@register_zoo_dataset("fashion-mnist", splits=("test", "train"), assets=(),
                      help="Fashion-MNIST from Debian's dataset-fashion-mnist package (apt-get install it)")
def _zoo_fashion_mnist(split: str, opts: Options) -> ImageDataset:
    from pathlib import Path

    if not Path(FASHION_MNIST_DIR).is_dir():
        raise DatasetSourceError(f"zoo:fashion-mnist: {FASHION_MNIST_DIR} is missing; install Debian's package: "
                                 "apt-get install dataset-fashion-mnist")
    return load_idx(FASHION_MNIST_DIR, split=split, spec=f"zoo:fashion-mnist:{split}")


@register_dataset_source("synthetic", "synthetic:uniform|gaussian|blobs[?n=1000&size=32&seed=0] - seeded noise "
                                      "images (unlabeled; OOD sets)")
def _synthetic(s: Spec, opts: Options) -> ImageDataset:
    n, size, seed = opts.int("n", 1000), opts.int("size", 32), opts.int("seed", 0)
    if n < 1 or size < 1:
        raise SpecError(f"{s.text}: n and size must be positive")
    rng = np.random.default_rng(seed)
    kind = s.target
    if kind == "uniform":  # i.i.d. uniform pixels
        images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    elif kind == "gaussian":  # i.i.d. N(0.5, 0.25^2) pixels, clipped (as in Hendrycks & Gimpel's noise sets)
        images = (np.clip(rng.normal(0.5, 0.25, size=(n, size, size, 3)), 0, 1) * 255).round().astype(np.uint8)
    elif kind == "blobs":  # amorphous shapes with definite edges (Hendrycks et al., Outlier Exposure): binomial
        from scipy.ndimage import gaussian_filter  # noise p=0.7, blurred (sigma 1 pixel), thresholded at 0.75

        x = rng.binomial(1, 0.7, size=(n, size, size, 3)).astype(np.float64)
        x = gaussian_filter(x, sigma=(0, 1, 1, 0))
        images = ((x > 0.75) * 255).astype(np.uint8)
    else:
        raise SpecError(f"{s.text}: synthetic sets are uniform, gaussian and blobs, not {kind!r}")
    return ArrayDataset(images, np.full(n, -1, dtype=np.int64), LabelSpace.unlabeled(), spec=s.text,
                        ids=[f"{kind}/{i}" for i in range(n)])


@register_zoo_dataset("imagenet-samples", splits=("all",), assets=("imagenet-samples",),
                      help="1,000 ImageNet images, one per class (not the validation set)")
def _zoo_imagenet_samples(split: str, opts: Options) -> ImageDataset:
    from ..assets import fetch

    return TarDataset(fetch("imagenet-samples"), spec="zoo:imagenet-samples", max_pixels=_max_pixels(opts))


@register_zoo_dataset("cue-conflict", splits=("all",), assets=("cue-conflict", "cue-conflict-imagenet-indices"),
                      help="1,280 shape/texture cue-conflict stimuli of Geirhos et al. (16 shape classes)")
def _zoo_cue_conflict(split: str, opts: Options) -> ImageDataset:
    from ..assets import fetch

    ds = TarDataset(fetch("cue-conflict"), spec="zoo:cue-conflict", max_pixels=_max_pixels(opts))
    ds.classes = cue_conflict_space(list(ds.classes.names))
    return ds


CUE_CONFLICT_CATEGORIES = ("airplane", "bear", "bicycle", "bird", "boat", "bottle", "car", "cat", "chair", "clock",
                           "dog", "elephant", "keyboard", "knife", "oven", "truck")


def cue_conflict_space(names: list[str]) -> LabelSpace:
    """The 16 cue-conflict categories as superclasses of ImageNet-1k classes (Geirhos et al. 2019 mapping)."""
    from ..assets import fetch

    indices = json.loads(fetch("cue-conflict-imagenet-indices").read_text())
    missing = [n for n in names if n not in indices]
    if missing:
        raise DatasetSourceError(f"cue-conflict categories without an ImageNet mapping: {missing}")
    wnids = imagenet_space().wnids
    members = tuple(tuple(wnids[i] for i in indices[n]) for n in names)
    return LabelSpace(tuple(names), None, True, "cue-conflict-16", members)
