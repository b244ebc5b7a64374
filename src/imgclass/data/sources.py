"""Dataset sources: folder, tar, npz, cifar10 (official batches), idx (MNIST format), digits."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from ..errors import ImgclassError
from .base import ArrayDataset, ImageDataset
from .decode import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageError, decode_image
from .labels import CIFAR10, DIGITS, FASHION_MNIST, LabelSpace

__all__ = [
    "FolderDataset",
    "TarDataset",
    "load_npz",
    "load_cifar10",
    "load_idx",
    "load_digits",
    "DatasetSourceError",
]


class DatasetSourceError(ImgclassError, ValueError):
    """A dataset source cannot be opened (missing path, wrong layout, bad format)."""


def _hidden(parts) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _member_name(m: tarfile.TarInfo) -> str:
    return m.name[2:] if m.name.startswith("./") else m.name


def _to_tensor(rgb: np.ndarray) -> torch.Tensor:
    # a (3, H, W) view of the HWC array: no transposing copy here; batches are stacked channels-last
    return torch.from_numpy(rgb).permute(2, 0, 1)


class _FileDataset(ImageDataset):
    """Shared logic of folder and tar sources: a sorted list of (relative path, class index)."""

    files: list[str]
    targets: np.ndarray
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __len__(self) -> int:
        return len(self.files)

    def label(self, i: int) -> int:
        return int(self.targets[i])

    @property
    def labels(self) -> np.ndarray:
        return self.targets

    def sample_id(self, i: int) -> str:
        return self.files[i]

    def _read(self, i: int) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def _display_path(self, i: int) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def load(self, i: int) -> torch.Tensor:
        path = self._display_path(i)
        try:
            data = self._read(i)
        except OSError as e:
            raise ImageError(path, f"cannot read file ({e})") from None
        return _to_tensor(decode_image(data, path, max_pixels=self.max_pixels))


def _index_by_class(rel_paths: list[str], spec: str, labels: str = "auto"
                    ) -> tuple[list[str], np.ndarray, LabelSpace]:
    """ImageFolder semantics: the first path component is the class, files may nest below it.

    ``labels='none'`` (or ``'auto'`` when no image sits in a sub-folder but some sit at the top) gives an
    unlabeled dataset of every image at any depth: no classes, every label -1.
    """
    if labels not in ("auto", "folders", "none"):
        raise DatasetSourceError(f"{spec}: labels={labels!r} must be auto, folders or none")
    images = [rp for rp in rel_paths if _is_image_name(rp) and not _hidden(PurePosixPath(rp).parts)]
    by_class: dict[str, list[str]] = {}
    for rp in images:
        parts = PurePosixPath(rp).parts
        if len(parts) >= 2:
            by_class.setdefault(parts[0], []).append(rp)
    if labels == "none" or (labels == "auto" and not by_class and images):
        files = sorted(images)
        return files, np.full(len(files), -1, dtype=np.int64), LabelSpace.unlabeled()
    if not by_class:
        raise DatasetSourceError(
            f"{spec}: no images in class sub-folders (expected <class>/<...>/<image> with one of "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    class_names = sorted(by_class)
    files, targets = [], []
    for ci, c in enumerate(class_names):
        for rp in sorted(by_class[c]):
            files.append(rp)
            targets.append(ci)
    return files, np.asarray(targets, dtype=np.int64), LabelSpace.from_names(class_names)


class FolderDataset(_FileDataset):
    """``folder:DIR``: one sub-folder per class, images at any depth below it, hidden files ignored.

    A flat folder of images (none in sub-folders) is an unlabeled dataset; ``labels='none'`` makes any folder one
    (every image at any depth, no classes), ``labels='folders'`` insists on class sub-folders.
    """

    def __init__(self, root: str | os.PathLike, *, spec: str = "", max_pixels: int = DEFAULT_MAX_PIXELS,
                 labels: str = "auto"):
        self.root = Path(root).expanduser()
        self.spec = spec or f"folder:{root}"
        self.max_pixels = max_pixels
        if not self.root.is_dir():
            raise DatasetSourceError(f"{self.spec}: {self.root} is not a directory")
        rel = []
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            base = Path(dirpath).relative_to(self.root)
            rel.extend((base / f).as_posix() for f in filenames if not f.startswith("."))
        self.files, self.targets, self.classes = _index_by_class(rel, self.spec, labels)

    def _display_path(self, i: int) -> str:
        return str(self.root / self.files[i])

    def _read(self, i: int) -> bytes:
        with open(self.root / self.files[i], "rb") as f:
            return f.read()


class TarDataset(_FileDataset):
    """``tar:FILE``: a (possibly compressed) tarball laid out like a folder.

    A plain tar is read in place (members by offset, nothing extracted). A compressed one is
    decompressed once: into memory when small, else into one plain tar in the cache. A single
    top-level folder above the class folders (``test/<class>/...``) is recognised and skipped;
    ``root`` names it explicitly.
    """

    MEMORY_LIMIT = 1 << 30  # compressed tarballs below this are held decompressed in memory

    def __init__(self, path: str | os.PathLike, *, root: str | None = None, spec: str = "",
                 max_pixels: int = DEFAULT_MAX_PIXELS, labels: str = "auto"):
        self.path = Path(path).expanduser()
        self.spec = spec or f"tar:{path}"
        self.max_pixels = max_pixels
        if not self.path.is_file():
            raise DatasetSourceError(f"{self.spec}: {self.path} does not exist")
        self._blob: bytes | None = None
        self._fh = None
        self._fh_pid = None
        try:
            members = self._index()
        except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as e:
            raise DatasetSourceError(f"{self.spec}: {self.path} is not a readable tarball ({e})") from None
        names = list(members)
        prefix = self._root_prefix(names, root)
        rel = [n[len(prefix):] for n in names if n.startswith(prefix)]
        self.files, self.targets, self.classes = _index_by_class(rel, self.spec, labels)
        self._offsets = np.asarray([members[prefix + f][0] for f in self.files], dtype=np.int64)
        self._sizes = np.asarray([members[prefix + f][1] for f in self.files], dtype=np.int64)
        self._prefix = prefix

    def _root_prefix(self, names: list[str], root: str | None) -> str:
        if root is not None:
            root = root.strip("/")
            return root + "/" if root else ""
        prefix = ""
        images = [PurePosixPath(n).parts for n in names if _is_image_name(n) and not _hidden(PurePosixPath(n).parts)]
        while images and all(len(p) >= 3 for p in images) and len({p[0] for p in images}) == 1:
            prefix += images[0][0] + "/"
            images = [p[1:] for p in images]
        return prefix

    def _index(self) -> dict[str, tuple[int, int]]:
        compressed = self._compression()
        if compressed is None:
            source = self.path
        elif self.path.stat().st_size < self.MEMORY_LIMIT:
            buf = io.BytesIO()
            source = None
        else:
            source = self._decompressed_cache()
        if source is not None:
            self._source = source
            with tarfile.open(source, "r:") as tf:
                return {_member_name(m): (m.offset_data, m.size) for m in tf if m.isfile()}
        members = {}
        with tarfile.open(self.path, "r|*") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                f = tf.extractfile(m)
                data = f.read() if f is not None else b""
                members[_member_name(m)] = (buf.tell(), len(data))
                buf.write(data)
        self._blob = buf.getvalue()
        self._source = None
        return members

    def _compression(self) -> str | None:
        with open(self.path, "rb") as f:
            head = f.read(6)
        if head[:2] == b"\x1f\x8b":
            return "gz"
        if head[:3] == b"BZh":
            return "bz2"
        if head[:6] == b"\xfd7zXZ\x00":
            return "xz"
        return None

    def _decompressed_cache(self) -> Path:
        from ..assets import home_dir

        st = self.path.stat()
        key = hashlib.sha1(f"{self.path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
        dest = home_dir() / "tar-cache" / f"{self.path.name}.{key}.tar"
        if not dest.is_file():
            from tqdm.auto import tqdm

            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_suffix(".part")
            with tarfile.open(self.path, "r|*") as src, tarfile.open(tmp, "w:") as out:
                for m in tqdm(src, desc=f"decompressing {self.path.name}", unit="file"):
                    out.addfile(m, src.extractfile(m) if m.isfile() else None)
            os.replace(tmp, dest)
        return dest

    def _display_path(self, i: int) -> str:
        return f"{self.path}:{self._prefix}{self.files[i]}"

    def _read(self, i: int) -> bytes:
        off, size = int(self._offsets[i]), int(self._sizes[i])
        if self._blob is not None:
            return self._blob[off:off + size]
        if self._fh is None or self._fh_pid != os.getpid():  # one handle per (worker) process
            self._fh = open(self._source, "rb")
            self._fh_pid = os.getpid()
        self._fh.seek(off)
        return self._fh.read(size)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_fh"] = None
        return state


def load_npz(path: str | os.PathLike, *, spec: str = "") -> ArrayDataset:
    """``npz:FILE``: keys ``images`` (NHWC uint8) and ``labels``, optional ``class_names``."""
    spec = spec or f"npz:{path}"
    p = Path(path).expanduser()
    if not p.is_file():
        raise DatasetSourceError(f"{spec}: {p} does not exist")
    try:
        with np.load(p, allow_pickle=False) as z:
            if "images" not in z.files or "labels" not in z.files:
                raise DatasetSourceError(f"{spec}: {p} needs arrays 'images' and 'labels', has {z.files}")
            images, labels = z["images"], z["labels"]
            names = [str(n) for n in z["class_names"]] if "class_names" in z.files else None
            extra = {k: z[k] for k in z.files if k not in {"images", "labels", "class_names"}}
    except ValueError as e:  # object arrays need pickle, which we refuse
        raise DatasetSourceError(f"{spec}: {p} cannot be read without pickle ({e}); store strings as unicode arrays") from None
    labels = np.asarray(labels).astype(np.int64)
    classes = LabelSpace.from_names(names) if names is not None else LabelSpace.anonymous(int(labels.max()) + 1)
    ds = ArrayDataset(images, labels, classes, spec=spec)
    ds.extra = extra
    return ds


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only; anything else is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("builtins", "bytes"), ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only plain data is allowed)")


def _safe_unpickle(data: bytes, where: str) -> dict:
    try:
        obj = _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:
        raise DatasetSourceError(f"{where}: not a CIFAR batch file ({e})") from None
    if not isinstance(obj, dict):
        raise DatasetSourceError(f"{where}: not a CIFAR batch file (top level is {type(obj).__name__})")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def load_cifar10(path: str | os.PathLike, *, split: str = "test", spec: str = "") -> ArrayDataset:
    """``cifar10:DIR`` or ``cifar10:cifar-10-python.tar.gz``: the official python batches."""
    spec = spec or f"cifar10:{path}"
    p = Path(path).expanduser()
    if split not in {"train", "test"}:
        raise DatasetSourceError(f"{spec}: split must be 'train' or 'test', got {split!r}")
    wanted = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
    files: dict[str, bytes] = {}
    if p.is_dir():
        base = p / "cifar-10-batches-py" if (p / "cifar-10-batches-py").is_dir() else p
        for w in wanted + ["batches.meta"]:
            if (base / w).is_file():
                files[w] = (base / w).read_bytes()
    elif p.is_file():
        try:
            with tarfile.open(p, "r:*") as tf:
                for m in tf:
                    if m.isfile() and PurePosixPath(m.name).name in set(wanted) | {"batches.meta"}:
                        files[PurePosixPath(m.name).name] = tf.extractfile(m).read()
        except tarfile.TarError as e:
            raise DatasetSourceError(f"{spec}: {p} is not a tarball ({e})") from None
    else:
        raise DatasetSourceError(f"{spec}: {p} does not exist")
    missing = [w for w in wanted if w not in files]
    if missing:
        raise DatasetSourceError(f"{spec}: {p} lacks the official batch file(s) {', '.join(missing)}")
    images, labels = [], []
    for w in wanted:
        d = _safe_unpickle(files[w], f"{p}:{w}")
        x = np.asarray(d[b"data" if b"data" in d else "data"], dtype=np.uint8)
        y = d.get("labels", d.get(b"labels"))
        images.append(x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(y, dtype=np.int64))
    names = CIFAR10
    if "batches.meta" in files:
        meta = _safe_unpickle(files["batches.meta"], f"{p}:batches.meta")
        raw = meta.get("label_names")
        if raw is not None:
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in raw]
    x, y = np.concatenate(images), np.concatenate(labels)
    ds = ArrayDataset(x, y, LabelSpace(tuple(names), None, True, "cifar10"), spec=spec,
                      ids=[f"{split}/{i}" for i in range(len(y))])
    return ds


def _read_idx(path: Path) -> np.ndarray:
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DatasetSourceError(f"{path}: not an IDX file (bad magic number)")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise DatasetSourceError(f"{path}: unknown IDX data type 0x{raw[2]:02x}")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=dtypes[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DatasetSourceError(f"{path}: IDX header says {shape} but holds {data.size} values")
    return data.reshape(shape)


def load_idx(path: str | os.PathLike, *, split: str = "test", classes: LabelSpace | None = None,
             spec: str = "") -> ArrayDataset:
    """``idx:DIR``: MNIST-format IDX files (``train``/``t10k`` images and labels, gzipped or not)."""
    spec = spec or f"idx:{path}"
    p = Path(path).expanduser()
    if not p.is_dir():
        raise DatasetSourceError(f"{spec}: {p} is not a directory")
    prefix = {"test": ("t10k", "test"), "train": ("train",)}.get(split)
    if prefix is None:
        raise DatasetSourceError(f"{spec}: split must be 'train' or 'test', got {split!r}")

    def find(kind: str) -> Path:
        for f in sorted(p.iterdir()):
            n = f.name.lower()
            if n.startswith(prefix) and kind in n and "idx" in n:
                return f
        raise DatasetSourceError(f"{spec}: no {split} {kind} IDX file in {p} (looked for {prefix[0]}-{kind}-idx*)")

    images, labels = _read_idx(find("images")), _read_idx(find("labels"))
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DatasetSourceError(f"{spec}: images must be uint8 (N, H, W), got {images.dtype} {images.shape}")
    if classes is None:
        classes = LabelSpace(tuple(FASHION_MNIST), None, True, "fashion-mnist") if "fashion" in str(p).lower() \
            else LabelSpace(tuple(DIGITS), None, True, "mnist")
    return ArrayDataset(images, labels.astype(np.int64), classes, spec=spec,
                        ids=[f"{split}/{i}" for i in range(len(labels))])


def load_digits(*, spec: str = "digits") -> ArrayDataset:
    """scikit-learn's 8x8 digits (1,797 images, values 0..16 scaled to 0..255)."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    images = np.rint(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return ArrayDataset(images, d.target, LabelSpace(tuple(DIGITS), None, True, "digits"), spec=spec)
