"""Label spaces and their alignment by WordNet id or name (never by hoping indices agree)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch

from ..errors import ImgclassError, UsageError

__all__ = [
    "LabelSpace",
    "LabelAlignmentError",
    "Alignment",
    "align_labels",
    "imagenet_space",
    "named_space",
    "KNOWN_SPACES",
]

WNID_RE = re.compile(r"^n\d{8}$")

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FASHION_MNIST = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DIGITS = [str(i) for i in range(10)]


class LabelAlignmentError(ImgclassError, ValueError):
    """A dataset's classes cannot all be found in a model's label space."""


@dataclass(frozen=True)
class LabelSpace:
    """Names of the classes, in index order, plus WordNet ids where they exist.

    ``known=False`` marks a space whose names are only indices (a bare ONNX model, an IDX file);
    such spaces align by index and only when the sizes agree.
    """

    names: tuple[str, ...]
    wnids: tuple[str | None, ...] | None = None
    known: bool = True
    tag: str | None = None  # 'imagenet-1k', 'cifar10', ... when it is a standard space
    # superclasses: for each class, the wnids of the finer classes it groups (e.g. 16-class cue-conflict)
    members: tuple[tuple[str, ...], ...] | None = None

    def __post_init__(self):
        if self.wnids is not None and len(self.wnids) != len(self.names):
            raise ValueError("wnids and names differ in length")
        if self.members is not None and len(self.members) != len(self.names):
            raise ValueError("members and names differ in length")

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def from_names(cls, names, *, tag: str | None = None) -> "LabelSpace":
        names = tuple(str(n) for n in names)
        if names and all(WNID_RE.match(n) for n in names):
            info = _imagenet_descriptions()
            return cls(tuple(info.get(n, n) for n in names), names, True, tag)
        return cls(names, None, True, tag)

    @classmethod
    def anonymous(cls, n: int) -> "LabelSpace":
        return cls(tuple(str(i) for i in range(n)), None, False, None)

    @classmethod
    def unlabeled(cls) -> "LabelSpace":
        """The classes of a dataset without labels (a flat folder of images): none; every label is -1."""
        return cls((), None, True, "unlabeled")

    @property
    def is_unlabeled(self) -> bool:
        return self.tag == "unlabeled" and not self.names

    def short_names(self) -> list[str]:
        """First synonym of each name ('tench, Tinca tinca' -> 'tench'), for plots and tables."""
        return [n.split(",")[0].strip() for n in self.names]

    def to_dict(self) -> dict:
        d = {"names": list(self.names), "wnids": None if self.wnids is None else list(self.wnids),
             "known": self.known, "tag": self.tag}
        if self.members is not None:
            d["members"] = [list(m) for m in self.members]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LabelSpace":
        members = d.get("members")
        return cls(tuple(d["names"]), None if d.get("wnids") is None else tuple(d["wnids"]),
                   bool(d.get("known", True)), d.get("tag"),
                   None if members is None else tuple(tuple(m) for m in members))


@lru_cache(maxsize=None)
def _imagenet_descriptions() -> dict[str, str]:
    from timm.data import ImageNetInfo

    return ImageNetInfo("imagenet-1k").label_descriptions(as_dict=True)


@lru_cache(maxsize=None)
def imagenet_space(background: bool = False) -> LabelSpace:
    """ImageNet-1k in the standard sorted-wnid order (timm's synset list); optionally with index 0 = background."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    wnids = tuple(info.label_names())
    names = tuple(info.label_descriptions())
    if background:
        return LabelSpace(("background",) + names, (None,) + wnids, True, "imagenet-1k+background")
    return LabelSpace(names, wnids, True, "imagenet-1k")


KNOWN_SPACES = {
    "imagenet": lambda: imagenet_space(False),
    "imagenet1k": lambda: imagenet_space(False),
    "imagenet+background": lambda: imagenet_space(True),
    "imagenet1001": lambda: imagenet_space(True),
    "cifar10": lambda: LabelSpace(tuple(CIFAR10), None, True, "cifar10"),
    "fashion-mnist": lambda: LabelSpace(tuple(FASHION_MNIST), None, True, "fashion-mnist"),
    "mnist": lambda: LabelSpace(tuple(DIGITS), None, True, "mnist"),
    "digits": lambda: LabelSpace(tuple(DIGITS), None, True, "digits"),
    "cue-conflict": lambda: _cue_conflict(),
}


def _cue_conflict() -> LabelSpace:
    from . import CUE_CONFLICT_CATEGORIES, cue_conflict_space

    return cue_conflict_space(list(CUE_CONFLICT_CATEGORIES))


def named_space(value: str) -> LabelSpace:
    """A label space from a ``classes=`` option: a known name, a labels file (one per line) or a comma list."""
    key = value.strip().lower()
    if key in KNOWN_SPACES:
        return KNOWN_SPACES[key]()
    p = Path(value).expanduser()
    if p.is_file():
        lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
        lines = [ln for ln in lines if ln]
        if len(lines) == 1001 and lines[0].lower() in {"background", "dummy", "__background__"}:
            space = imagenet_space(True)
            return LabelSpace(space.names, space.wnids, True, space.tag)
        if len(lines) == 1000 and _normalize(lines[0]) == _normalize(imagenet_space().names[0]):
            return imagenet_space(False)
        return LabelSpace.from_names(lines)
    if "," in value:
        return LabelSpace.from_names([v.strip() for v in value.split(",")])
    raise UsageError(
        f"classes={value!r}: not a known label space ({', '.join(sorted(KNOWN_SPACES))}), "
        "not a labels file, and not a comma-separated list"
    )


def _normalize(name: str) -> str:
    return re.sub(r"[\s_\-/]+", " ", name.split(",")[0].strip().lower()).strip()


@dataclass
class Alignment:
    """Maps each dataset class to one model output column.

    ``index[i]`` is the model output for dataset class i. When the model has more outputs than the
    dataset has classes, evaluation restricts the logits to ``index`` (the ImageNet-A/R subset
    protocol); ``dropped`` names the model classes left out.
    """

    index: torch.Tensor
    method: str  # 'identity' | 'wnid' | 'name' | 'index' | 'group'
    n_model: int
    dropped: list[str] = field(default_factory=list)
    # 'group': the model outputs that make up each dataset class (a superclass of finer model classes)
    groups: list[torch.Tensor] | None = None

    def __post_init__(self):
        self._identity = self.groups is None and self.n_model == len(self.index) and bool(
            (self.index == torch.arange(self.n_model)).all())

    @property
    def is_identity(self) -> bool:
        return self._identity

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Model logits -> logits over the dataset's classes.

        For superclasses the result is log of the mean probability of the member classes (softmax over
        all model outputs), so its argmax is the decision rule of Geirhos et al. (2019).
        """
        if self.groups is not None:
            logp = torch.log_softmax(logits.float(), dim=-1)
            return torch.stack([torch.logsumexp(logp[:, g.to(logits.device)], dim=-1) - math.log(len(g))
                                for g in self.groups], dim=-1)
        return logits if self._identity else logits.index_select(-1, self.index.to(logits.device))

    def to_dict(self) -> dict:
        d = {"method": self.method, "model_classes": self.n_model, "dataset_classes": int(len(self.index)),
             "restricted": not self.is_identity}
        if self.groups is not None:
            d["rule"] = "log of the mean softmax probability over each class's member outputs"
            d["group_sizes"] = [len(g) for g in self.groups]
        if self.dropped:
            d["dropped_model_classes"] = self.dropped[:20] + (["..."] if len(self.dropped) > 20 else [])
            d["n_dropped"] = len(self.dropped)
        return d


def align_labels(model: LabelSpace, data: LabelSpace) -> Alignment:
    """Find, for each dataset class, the model output of the same class."""
    n_model = len(model)
    if data.members is not None:
        return _align_groups(model, data)
    if not model.known or not data.known:
        if n_model != len(data):
            side = "model" if not model.known else "dataset"
            raise LabelAlignmentError(
                f"the {side}'s class names are unknown, so classes can only be matched by index, but the model "
                f"has {n_model} outputs and the dataset {len(data)} classes; name the model's classes with "
                "?classes=... (a known space, a labels file or a comma list)"
            )
        return Alignment(torch.arange(n_model), "index", n_model)

    if model.wnids is not None and data.wnids is not None and all(w is not None for w in data.wnids):
        lookup = {w: j for j, w in enumerate(model.wnids) if w is not None}
        keys, method, shown = list(data.wnids), "wnid", [f"{w} ({n})" for w, n in zip(data.wnids, data.names)]
    else:
        lookup, dup = {}, set()
        for j, n in enumerate(model.names):
            k = _normalize(n)
            if k in lookup:
                dup.add(k)
            lookup[k] = j
        keys, method, shown = [_normalize(n) for n in data.names], "name", list(data.names)
        ambiguous = [s for k, s in zip(keys, shown) if k in dup]
        if ambiguous:
            raise LabelAlignmentError(
                f"dataset classes {ambiguous[:10]} match several model outputs by name; give the model wnids "
                "(e.g. ?classes=imagenet) or a labels file with unique names"
            )
    missing = [s for k, s in zip(keys, shown) if k not in lookup]
    if missing:
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise LabelAlignmentError(
            f"{len(missing)} of the dataset's {len(data)} classes are not among the model's {n_model} outputs "
            f"(matched by {method}): {', '.join(missing[:10])}{more}"
        )
    index = torch.tensor([lookup[k] for k in keys], dtype=torch.long)
    used = set(index.tolist())
    if len(used) != len(index):
        raise LabelAlignmentError("several dataset classes map to the same model output")
    dropped = [model.names[j] for j in range(n_model) if j not in used]
    al = Alignment(index, method, n_model, dropped)
    if al.is_identity:
        al.method = "identity" if method == "name" and list(model.names) == list(data.names) else method
    return al


def _align_groups(model: LabelSpace, data: LabelSpace) -> Alignment:
    if model.wnids is None:
        raise LabelAlignmentError(
            f"the dataset's classes are groups of ImageNet classes ({data.tag or 'superclasses'}), but the model's "
            "outputs carry no WordNet ids; give an ImageNet label space with ?classes=imagenet"
        )
    col = {w: j for j, w in enumerate(model.wnids) if w is not None}
    groups, missing = [], []
    for name, members in zip(data.names, data.members):
        cols = [col[w] for w in members if w in col]
        missing += [f"{w} ({name})" for w in members if w not in col]
        groups.append(torch.tensor(cols, dtype=torch.long))
    if missing:
        raise LabelAlignmentError(
            f"{len(missing)} member classes of the dataset's superclasses are not model outputs: {', '.join(missing[:10])}"
        )
    used = {int(j) for g in groups for j in g}
    dropped = [model.names[j] for j in range(len(model)) if j not in used]
    return Alignment(torch.tensor([int(g[0]) for g in groups]), "group", len(model), dropped, groups)
