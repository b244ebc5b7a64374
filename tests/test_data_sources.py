"""Dataset sources: every scheme, every pixel format, layouts; references are torchvision, sklearn, arrays."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imgclass.data import DATASET_SOURCES, ZOO_DATASETS, load_dataset
from imgclass.data.sources import DatasetSourceError
from imgclass.errors import UnknownNameError
from imgclass.specs import SpecError

from conftest import mirror_file, unavailable
from helpers import rgb_image, save_png


def _all(ds):
    return [(ds.sample_id(i), ds.label(i), ds.load(i)) for i in range(len(ds))]


@pytest.fixture
def image_folder(tmp_path):
    root = tmp_path / "data"
    for ci, cls in enumerate(["cat", "dog", "bird"]):
        for j in range(3):
            save_png(rgb_image(ci * 10 + j), root / cls / f"{j}.png")
    return root


def test_folder_matches_torchvision_imagefolder(image_folder):
    """Reference: torchvision's ImageFolder on the same flat layout (classes, order, targets, pixels)."""
    from torchvision.datasets import ImageFolder

    ref = ImageFolder(str(image_folder))
    ds = load_dataset(f"folder:{image_folder}")
    assert list(ds.classes.names) == ref.classes
    assert len(ds) == len(ref)
    for i, (path, target) in enumerate(ref.samples):
        assert ds.label(i) == target
        assert Path(path).relative_to(image_folder).as_posix() == ds.sample_id(i)
        expected = torch.from_numpy(np.asarray(ref[i][0])).permute(2, 0, 1)
        assert torch.equal(ds.load(i), expected)


def test_folder_nesting_hidden_files_and_extensions(image_folder):
    save_png(rgb_image(100), image_folder / "cat" / "deep" / "er" / "nested.PNG")
    save_png(rgb_image(101), image_folder / "cat" / ".hidden.png")
    save_png(rgb_image(102), image_folder / ".cache" / "x.png")
    save_png(rgb_image(103), image_folder / "dog" / ".ipynb_checkpoints" / "y.png")
    (image_folder / "dog" / "notes.txt").write_text("not an image, ignored by extension")
    (image_folder / ".DS_Store").write_bytes(b"\0\0")
    ds = load_dataset(str(image_folder))  # a bare directory is inferred as folder:
    assert list(ds.classes.names) == ["bird", "cat", "dog"]
    ids = [ds.sample_id(i) for i in range(len(ds))]
    assert "cat/deep/er/nested.PNG" in ids
    assert not any("/." in i or i.startswith(".") for i in ids)
    assert len(ds) == 10


def _modes_folder(root: Path) -> dict[str, np.ndarray]:
    """Files in many modes; returns the RGB pixels each must decode to."""
    cls = root / "x"
    cls.mkdir(parents=True)
    base = rgb_image(7, (16, 16))
    gray = base[..., 0]
    expected = {}
    Image.fromarray(base).save(cls / "rgb.bmp")
    expected["rgb.bmp"] = base
    Image.fromarray(gray, "L").save(cls / "gray.png")
    expected["gray.png"] = np.repeat(gray[..., None], 3, 2)
    pal = Image.fromarray(base).quantize(colors=16)
    pal.save(cls / "palette.gif")
    expected["palette.gif"] = np.asarray(pal.convert("RGB"))
    rgba = np.dstack([base, np.full((16, 16), 255, np.uint8)])
    rgba[0, 0, 3] = 0  # one transparent pixel: composited on white
    Image.fromarray(rgba, "RGBA").save(cls / "rgba.png")
    e = base.copy()
    e[0, 0] = 255
    expected["rgba.png"] = e
    g16 = (gray.astype(np.uint16) * 257)
    Image.fromarray(g16).save(cls / "gray16.png")  # 16-bit: must scale, not clip
    expected["gray16.png"] = np.repeat(gray[..., None], 3, 2)
    cmyk = Image.fromarray(base).convert("CMYK")
    cmyk.save(cls / "cmyk.tiff")
    expected["cmyk.tiff"] = np.asarray(cmyk.convert("RGB"))
    Image.fromarray(base).save(cls / "lossless.webp", lossless=True)
    expected["lossless.webp"] = base
    bw = Image.fromarray(gray > 128)
    bw.save(cls / "bilevel.png")
    expected["bilevel.png"] = np.repeat(np.where(gray > 128, 255, 0).astype(np.uint8)[..., None], 3, 2)
    Image.fromarray(base).save(cls / "rgb.ppm")
    expected["rgb.ppm"] = base
    return expected


def test_every_pixel_format_comes_out_rgb_uint8(tmp_path):
    """Reference: the pixels written (or Pillow's own RGB conversion for lossy palette/CMYK)."""
    expected = _modes_folder(tmp_path / "modes")
    ds = load_dataset(f"folder:{tmp_path / 'modes'}")
    got = {Path(ds.sample_id(i)).name: ds.load(i) for i in range(len(ds))}
    assert set(got) == set(expected)
    for name, exp in expected.items():
        img = got[name]
        assert img.dtype == torch.uint8 and img.shape == (3, 16, 16), name
        assert np.array_equal(img.permute(1, 2, 0).numpy(), exp), name


def _make_tar(src: Path, dest: Path, mode: str, prefix: str) -> Path:
    with tarfile.open(dest, mode) as tf:
        tf.add(src, arcname=prefix)
    return dest


@pytest.mark.parametrize("mode,suffix", [("w", ".tar"), ("w:gz", ".tar.gz"), ("w:bz2", ".tar.bz2")])
def test_tar_equals_folder(image_folder, tmp_path, mode, suffix):
    """Invariant: a tarball of a folder yields the same ids, labels and pixels as the folder."""
    tar = _make_tar(image_folder, tmp_path / f"d{suffix}", mode, "test")
    a, b = _all(load_dataset(f"folder:{image_folder}")), _all(load_dataset(f"tar:{tar}"))
    assert [x[:2] for x in a] == [x[:2] for x in b]
    assert all(torch.equal(x[2], y[2]) for x, y in zip(a, b))


def test_large_gzip_tar_is_decompressed_once_to_cache(image_folder, tmp_path, monkeypatch):
    from imgclass.data.sources import TarDataset

    tar = _make_tar(image_folder, tmp_path / "d.tar.gz", "w:gz", "")
    monkeypatch.setattr(TarDataset, "MEMORY_LIMIT", 0)
    ds = load_dataset(f"tar:{tar}")
    cached = list((Path(__import__("os").environ["IMGCLASS_HOME"]) / "tar-cache").glob("d.tar.gz.*.tar"))
    assert len(cached) == 1 and ds._blob is None
    ref = _all(load_dataset(f"folder:{image_folder}"))
    assert all(torch.equal(x[2], y[2]) for x, y in zip(ref, _all(ds)))


def test_tar_root_option_and_bad_tar(image_folder, tmp_path):
    tar = _make_tar(image_folder, tmp_path / "d.tar", "w", "a/b")
    assert list(load_dataset(f"tar:{tar}").classes.names) == ["bird", "cat", "dog"]
    assert list(load_dataset(f"tar:{tar}?root=a").classes.names) == ["b"]
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"not a tarball at all" * 100)
    with pytest.raises(DatasetSourceError, match="bad.tar"):
        load_dataset(f"tar:{bad}")


def test_npz_source(tmp_path):
    x = np.stack([rgb_image(i) for i in range(5)])
    y = np.array([0, 1, 2, 1, 0])
    np.savez(tmp_path / "d.npz", images=x, labels=y, class_names=np.array(["a", "b", "c"]))
    ds = load_dataset(f"npz:{tmp_path / 'd.npz'}")
    assert list(ds.classes.names) == ["a", "b", "c"] and len(ds) == 5
    assert torch.equal(ds.load(3), torch.from_numpy(x[3]).permute(2, 0, 1))
    np.savez(tmp_path / "bad.npz", pixels=x)
    with pytest.raises(DatasetSourceError, match="'images' and 'labels'"):
        load_dataset(f"npz:{tmp_path / 'bad.npz'}")
    np.savez(tmp_path / "gray.npz", images=x[..., 0], labels=y)  # NHW gray, no names
    g = load_dataset(f"npz:{tmp_path / 'gray.npz'}")
    assert g.load(0).shape == (3, 32, 32) and not g.classes.known


def _cifar_official_tarball(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    """A tarball in the official CIFAR-10 python format (Python 2 style pickles with bytes keys)."""
    def batch(xs, ys, name):
        d = {b"batch_label": name.encode(), b"labels": [int(v) for v in ys],
             b"data": xs.transpose(0, 3, 1, 2).reshape(len(xs), -1), b"filenames": [b"f.png"] * len(ys)}
        return pickle.dumps(d, protocol=2)

    meta = pickle.dumps({b"label_names": [n.encode() for n in
                                          ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                           "ship", "truck"]], b"num_vis": 3072}, protocol=2)
    files = {"batches.meta": meta, "test_batch": batch(x, y, "testing batch 1 of 1")}
    for i in range(1, 6):
        files[f"data_batch_{i}"] = batch(x[:2], y[:2], f"training batch {i} of 5")
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_cifar10_official_format(tmp_path):
    """Reference: the arrays written into a tarball of the official format."""
    x = np.stack([rgb_image(i) for i in range(6)])
    y = np.array([3, 8, 8, 0, 6, 6])
    tar = _cifar_official_tarball(tmp_path / "cifar-10-python.tar.gz", x, y)
    ds = load_dataset(f"cifar10:{tar}?human_labels=false")
    assert len(ds) == 6 and ds.classes.names[3] == "cat"
    assert [ds.label(i) for i in range(6)] == y.tolist()
    assert all(torch.equal(ds.load(i), torch.from_numpy(x[i]).permute(2, 0, 1)) for i in range(6))
    train = load_dataset(f"cifar10:{tar}?split=train")
    assert len(train) == 10
    with tarfile.open(tar) as tf:
        tf.extractall(tmp_path / "ex", filter="data")
    assert len(load_dataset(f"cifar10:{tmp_path / 'ex'}?human_labels=false")) == 6


def test_cifar10_batches_that_would_run_code_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("open('PWNED','w').write('x')",))

    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    (d / "test_batch").write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(DatasetSourceError, match="refusing"):
        load_dataset(f"cifar10:{tmp_path}?human_labels=false")
    assert not Path("PWNED").exists()


def _write_idx(path: Path, arr: np.ndarray, compress: bool) -> None:
    head = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    raw = head + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_files(tmp_path, compress):
    x = np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    y = np.arange(7) % 10
    ext = ".gz" if compress else ""
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{ext}", x, compress)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{ext}", y, compress)
    ds = load_dataset(f"idx:{tmp_path}")
    assert len(ds) == 7 and list(ds.classes.names) == [str(i) for i in range(10)]
    img = ds.load(4)
    assert img.shape == (3, 28, 28) and torch.equal(img[0], torch.from_numpy(x[4])) and torch.equal(img[0], img[2])


FASHION = Path("/usr/share/datasets/fashion-mnist")


def test_fashion_mnist_from_debian():
    """Reference: the published sizes of Fashion-MNIST (60,000 train / 10,000 test, 10 balanced classes)."""
    if not FASHION.is_dir():
        unavailable("apt package dataset-fashion-mnist is not installed")
    test = load_dataset(f"idx:{FASHION}")
    train = load_dataset(f"idx:{FASHION}?split=train")
    assert len(test) == 10_000 and len(train) == 60_000
    assert test.classes.names[0] == "T-shirt/top" and test.classes.names[9] == "Ankle boot"
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert test.load(0).shape == (3, 28, 28)


def test_digits_matches_sklearn():
    from sklearn.datasets import load_digits

    ref = load_digits()
    ds = load_dataset("digits")
    assert len(ds) == 1797 and np.array_equal(ds.labels, ref.target)
    img = ds.load(5)
    assert img.shape == (3, 8, 8)
    assert np.array_equal(img[0].numpy(), np.rint(ref.images[5] * 255 / 16).astype(np.uint8))


def test_zoo_datasets_from_mirror():
    mirror_file("cifar10-jpeg/test.tar.gz")
    jpeg = load_dataset("zoo:cifar10-jpeg:test")
    assert len(jpeg) == 10_000 and list(jpeg.classes.names)[:2] == ["airplane", "automobile"]
    assert np.bincount(jpeg.labels).tolist() == [1000] * 10
    lossless = load_dataset("zoo:cifar10-lossless:test")
    assert len(lossless) == 1000 and lossless.soft_labels.shape == (1000, 10)
    # CIFAR-10H rows are in official test order: the human majority agrees with the label on ~95%+
    agree = (lossless.soft_labels.argmax(1) == lossless.labels).mean()
    assert agree > 0.93
    inet = load_dataset("zoo:imagenet-samples")
    assert len(inet) == 1000 and len(inet.classes) == 1000 and inet.classes.wnids[0] == "n01440764"
    assert inet.classes.names[0].startswith("tench")
    cue = load_dataset("zoo:cue-conflict")
    assert len(cue) == 1280 and len(cue.classes) == 16


def test_unknown_schemes_and_splits_list_the_known():
    with pytest.raises(SpecError) as e:
        load_dataset("s3:bucket/x")
    for scheme in DATASET_SOURCES:
        assert scheme in str(e.value)
    with pytest.raises(UnknownNameError, match="known zoo datasets: .*cifar10-jpeg"):
        load_dataset("zoo:nope")
    with pytest.raises(SpecError, match="splits"):
        load_dataset("zoo:cifar10-jpeg:validation")
    with pytest.raises(SpecError, match="unknown option"):
        load_dataset("digits?colour=blue")
    assert set(ZOO_DATASETS) >= {"cifar10-jpeg", "cifar10-lossless", "imagenet-samples", "cue-conflict"}


def test_zoo_mnist_is_the_official_test_set():
    """Reference: the official MNIST test set's class counts (LeCun et al.): 980, 1135, 1032, 1010, 982, 892, 958,
    1028, 974, 1009; the files are checked against their SHA-256 by the asset layer."""
    from imgclass import load_dataset

    mirror_file("mnist/t10k-images-idx3-ubyte.gz")
    ds = load_dataset("zoo:mnist:test")
    assert len(ds) == 10_000 and ds.load(0).shape == (3, 28, 28) and ds.label(0) == 7
    assert np.bincount(ds.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_zoo_fashion_mnist_is_debians_files():
    """Reference: the idx: source on Debian's folder (the same files)."""
    from imgclass import load_dataset

    a, b = load_dataset("zoo:fashion-mnist:test"), load_dataset("idx:/usr/share/datasets/fashion-mnist")
    assert len(a) == len(b) == 10_000 and np.array_equal(a.labels, b.labels)
    assert torch.equal(a.load(123), b.load(123)) and a.classes.names == b.classes.names


@pytest.mark.parametrize("kind", ["uniform", "gaussian", "blobs"])
def test_synthetic_ood_sets_are_seeded_and_unlabeled(kind):
    """Invariants: the same seed gives the same images, another seed others; the sets are unlabeled; uniform and
    gaussian pixels centre on 127.5, blobs are binary shapes (0 or 255)."""
    from imgclass import load_dataset

    a = load_dataset(f"synthetic:{kind}?n=20&size=24&seed=3")
    b = load_dataset(f"synthetic:{kind}?n=20&size=24&seed=3")
    c = load_dataset(f"synthetic:{kind}?n=20&size=24&seed=4")
    assert len(a) == 20 and not a.labeled and a.load(0).shape == (3, 24, 24)
    x = torch.stack([a.load(i) for i in range(20)]).float()
    assert torch.equal(x, torch.stack([b.load(i) for i in range(20)]).float())
    assert not torch.equal(x, torch.stack([c.load(i) for i in range(20)]).float())
    if kind == "blobs":
        assert set(x.unique().tolist()) == {0.0, 255.0}
    else:
        assert abs(x.mean().item() - 127.5) < 3
    with pytest.raises(Exception, match="uniform, gaussian and blobs"):
        load_dataset("synthetic:pink")
