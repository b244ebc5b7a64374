"""Duplicate and leakage search (imgclass.diagnose.duplicates) against its references: imagehash.phash on real and
synthetic images, brute-force pair searches, and hand-counted accuracies."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from conftest import mirror_file
from imgclass.diagnose import duplicates as D
from imgclass.diagnose.duplicates import (DEFAULT_MAX_DISTANCE, exact_groups, leakage_accuracy, near_pairs, phash,
                                          pixel_hashes, semantic_pairs)
from imgclass.errors import UsageError

imagehash = pytest.importorskip("imagehash")
Image = pytest.importorskip("PIL.Image")


def ref_phash(img: np.ndarray) -> int:
    """imagehash.phash of one HWC (or HW gray) uint8 image as a PIL image, as an int."""
    a = img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img
    return int(str(imagehash.phash(Image.fromarray(np.ascontiguousarray(a)))), 16)


def ref_phashes(images) -> np.ndarray:
    return np.array([ref_phash(im) for im in images], dtype=np.uint64)


@pytest.fixture(scope="module")
def cifar() -> np.ndarray:
    with np.load(mirror_file("cifar10-lossless/test-first1000.npz")) as z:
        return z["images"]


@pytest.fixture(scope="module")
def cifar_hashes(cifar) -> np.ndarray:
    return phash(cifar)


# -- phash == imagehash.phash ---------------------------------------------------------------------------------------


def test_phash_cifar_matches_imagehash(cifar, cifar_hashes, monkeypatch):
    """Reference: imagehash.phash of each of the 1,000 lossless CIFAR-10 test images (32x32: no resize), in both
    layouts, as numpy and torch, with the numba luma kernel and without."""
    ref = ref_phashes(cifar)
    assert cifar_hashes.dtype == np.uint64 and cifar_hashes.shape == (1000,)
    assert np.array_equal(cifar_hashes, ref)
    assert np.array_equal(phash(torch.from_numpy(cifar).permute(0, 3, 1, 2)), ref)  # NCHW, a strided view
    assert np.array_equal(phash(list(cifar[:50])), ref[:50])
    monkeypatch.setattr(D, "HAVE_NUMBA", False)
    assert np.array_equal(phash(torch.from_numpy(cifar).permute(0, 3, 1, 2)), ref)


def test_phash_imagenet_matches_imagehash(mirror):
    """Reference: imagehash.phash of ImageNet samples (many sizes around 256 x 340: Pillow's LANCZOS resize), given
    as a list of (3, H, W) tensors from the dataset, and as one batch of same-sized crops."""
    from imgclass import load_dataset

    ds = load_dataset("zoo:imagenet-samples:all")
    ims = [ds.load(i) for i in range(0, len(ds), 5)]
    hwc = [x.permute(1, 2, 0).numpy() for x in ims]
    assert np.array_equal(phash(ims), ref_phashes(hwc))
    crops = torch.stack([x[:, :224, :200] for x in ims[:16]])
    assert np.array_equal(phash(crops), ref_phashes(list(crops.permute(0, 2, 3, 1).numpy())))


@pytest.mark.parametrize("shape", [(32, 32), (31, 33), (37, 51), (100, 32), (32, 77), (8, 8), (1, 1), (5, 300),
                                   (257, 383)])
def test_phash_synthetic_matches_imagehash(shape):
    """Reference: imagehash.phash of synthetic RGB and gray images of odd sizes, including flat and symmetric
    images whose DCT coefficients tie with the median (float rounding decides those bits)."""
    rng = np.random.default_rng(sum(shape))
    h, w = shape
    rgb = rng.integers(0, 256, (8, h, w, 3), dtype=np.uint8)
    rgb[1] = 128  # flat
    rgb[2] = rgb[2, ..., :1]  # gray as RGB
    rgb[3] = 0
    rgb[3, : h // 2] = 255  # two bands
    rgb[4] = np.minimum(np.arange(w), np.arange(w)[::-1])[None, :, None].astype(np.uint8)  # mirror-symmetric
    rgb[5] = np.uint8(255)
    assert np.array_equal(phash(rgb, layout="hwc"), ref_phashes(rgb))
    assert np.array_equal(phash(np.ascontiguousarray(rgb.transpose(0, 3, 1, 2)), layout="chw"), ref_phashes(rgb))
    gray = rgb[..., 0]
    ref = ref_phashes(gray)
    assert np.array_equal(phash(gray), ref)  # (N, H, W)
    assert np.array_equal(phash(gray[:, None], layout="chw"), ref)  # (N, 1, H, W)
    assert np.array_equal(phash(list(gray)), ref)  # (H, W) each


def test_phash_mixed_list_keeps_order():
    """Reference: imagehash.phash, image by image, of a list mixing sizes, layouts and gray."""
    rng = np.random.default_rng(3)
    hwc = [rng.integers(0, 256, s, dtype=np.uint8) for s in [(40, 30, 3), (32, 32, 3), (40, 30, 3), (64, 48)]]
    given = [hwc[0], torch.from_numpy(hwc[1]).permute(2, 0, 1), hwc[2], hwc[3]]
    assert np.array_equal(phash(given), ref_phashes(hwc))


def test_phash_input_errors():
    with pytest.raises(UsageError, match="layout"):
        phash(np.zeros((2, 3, 8, 3), np.uint8))
    x = np.random.default_rng(1).integers(0, 256, (2, 3, 8, 3), dtype=np.uint8)  # a torch tensor is channels-first
    assert np.array_equal(phash(torch.from_numpy(x)), phash(x, layout="chw"))
    with pytest.raises(UsageError, match="uint8"):
        phash(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(UsageError, match="channels"):
        phash(np.zeros((2, 8, 8, 4), np.uint8), layout="hwc")
    assert phash(np.zeros((0, 32, 32, 3), np.uint8)).shape == (0,)


# -- exact duplicates -----------------------------------------------------------------------------------------------


def test_pixel_hashes_identity_and_one_pixel(cifar):
    """Reference: the definition: equal pixels and shape give equal digests (in any layout); one changed pixel, or
    the same bytes in another shape, give different ones."""
    x = cifar[:20].copy()
    x[7] = x[3]
    x[12, 5, 9, 1] ^= 1
    h = pixel_hashes(x)
    assert h.shape == (20, 2) and h.dtype == np.uint64
    assert np.array_equal(h[7], h[3])
    assert not np.array_equal(h[12], pixel_hashes(cifar[12:13])[0])
    assert len({tuple(r) for r in h.tolist()}) == 19
    assert np.array_equal(pixel_hashes(torch.from_numpy(x).permute(0, 3, 1, 2)), h)
    assert np.array_equal(pixel_hashes(list(x)), h)
    flat = x[:1].reshape(1, 16, 64, 3)  # same bytes, another shape
    assert not np.array_equal(pixel_hashes(flat)[0], h[0])


def brute_groups(keys) -> list[list[int]]:
    groups: dict = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    return sorted(g for g in groups.values() if len(g) > 1)


def test_exact_groups_against_brute_force(cifar):
    """Reference: a dict of index lists keyed by the hash (Python), on hashes with planted duplicates."""
    rng = np.random.default_rng(0)
    h = rng.integers(0, 50, 300).astype(np.uint64)  # many collisions
    got = exact_groups(h)
    assert [g.tolist() for g in got] == brute_groups(h.tolist())
    x = cifar[:100].copy()
    for a, b in [(3, 50), (3, 77), (10, 11), (99, 0)]:
        x[b] = x[a]
    ph = pixel_hashes(x)
    assert [g.tolist() for g in exact_groups(ph)] == brute_groups([tuple(r) for r in ph.tolist()])
    assert [g.tolist() for g in exact_groups(ph)] == [[0, 99], [3, 50, 77], [10, 11]]
    assert exact_groups(np.zeros(0, np.uint64)) == []


# -- near duplicates by Hamming distance ------------------------------------------------------------------------------


def brute_pairs(h1, h2=None, max_distance=4):
    """All pairs with Python's bin(x ^ y).count('1')."""
    a = [int(v) for v in h1]
    b = a if h2 is None else [int(v) for v in h2]
    out = []
    for i, x in enumerate(a):
        for j in range(i + 1 if h2 is None else 0, len(b)):
            d = bin(x ^ b[j]).count("1")
            if d <= max_distance:
                out.append((i, j, d))
    return out


def planted(rng, n, base=None, flips=(0, 1, 2, 3, 5, 8)):
    """n random 64-bit hashes, some of them copies (of base, or of themselves) with a few bits flipped."""
    h = rng.integers(0, 2 ** 63, n, dtype=np.int64).astype(np.uint64) | (rng.integers(0, 2, n).astype(np.uint64)
                                                                          << np.uint64(63))
    src = h if base is None else base
    for k in range(0, n, 3):
        v = int(src[rng.integers(len(src))])
        for bit in rng.choice(64, int(rng.choice(flips)), replace=False):
            v ^= 1 << int(bit)
        h[k] = v
    return h


@pytest.mark.parametrize("numba", [True, False])
@pytest.mark.parametrize("max_distance", [0, 3, 8])
def test_near_pairs_against_brute_force(monkeypatch, numba, max_distance):
    """Reference: brute_pairs (Python's popcount of every XOR), within one set and between two, for several chunk
    sizes, in the numba kernel and the numpy path."""
    monkeypatch.setattr(D, "HAVE_NUMBA", numba and D.HAVE_NUMBA)
    rng = np.random.default_rng(max_distance)
    h1 = planted(rng, 250)
    h2 = planted(rng, 180, base=h1)
    for args, ref in [((h1,), brute_pairs(h1, None, max_distance)),
                      ((h1, h2), brute_pairs(h1, h2, max_distance))]:
        assert len(ref) >= 5
        for chunk in (1, 7, 64, 4096):
            i, j, d = near_pairs(*args, max_distance=max_distance, chunk=chunk)
            assert i.dtype == np.int64 and j.dtype == np.int64 and d.dtype == np.uint8
            assert list(zip(i.tolist(), j.tolist(), d.tolist())) == ref, chunk


def test_near_pairs_signed_input_and_errors():
    """Reference: brute_pairs; int64 hashes are read as their bits."""
    h = planted(np.random.default_rng(5), 60)
    i, j, d = near_pairs(h.view(np.int64), max_distance=5)
    assert list(zip(i.tolist(), j.tolist(), d.tolist())) == brute_pairs(h, None, 5)
    assert all(len(a) == 0 for a in near_pairs(h[:0]))
    with pytest.raises(UsageError, match="max_distance"):
        near_pairs(h, max_distance=65)
    with pytest.raises(UsageError, match="64-bit"):
        near_pairs(h.astype(np.float64))


def test_near_duplicates_that_matter(cifar, cifar_hashes):
    """Reference: the changed copies themselves: each lossless CIFAR-10 test image against its JPEG (quality 75)
    re-encoding, a brightened copy (x1.1), and a 32->36->32 bicubic round trip, must fall within
    DEFAULT_MAX_DISTANCE almost always; different images of the set must not (every pair checked)."""
    from PIL import ImageEnhance

    def jpeg(a):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "JPEG", quality=75)
        return np.asarray(Image.open(buf).convert("RGB"))

    def brighter(a):
        return np.asarray(ImageEnhance.Brightness(Image.fromarray(a)).enhance(1.1))

    def resized(a):
        return np.asarray(Image.fromarray(a).resize((36, 36), Image.BICUBIC).resize((32, 32), Image.BICUBIC))

    seen = {}
    for name, fn in [("jpeg75", jpeg), ("brighter", brighter), ("resized", resized)]:
        d = np.bitwise_count(cifar_hashes ^ phash(np.stack([fn(a) for a in cifar])))
        seen[name] = (float(np.median(d)), float(np.percentile(d, 99)), int(d.max()))
        assert np.median(d) <= 2 and np.mean(d <= DEFAULT_MAX_DISTANCE) >= 0.99, (name, np.bincount(d))
    print("hamming to the original (median, p99, max):", seen)
    i, j, d = near_pairs(cifar_hashes, max_distance=16)
    print("pairs of different images by distance:", np.bincount(d, minlength=17).tolist())
    assert d.min() > DEFAULT_MAX_DISTANCE + 2


# -- near duplicates by feature cosine --------------------------------------------------------------------------------


def brute_cosine(f1, f2=None):
    a = f1 / np.linalg.norm(f1, axis=1, keepdims=True)
    b = a if f2 is None else f2 / np.linalg.norm(f2, axis=1, keepdims=True)
    return a @ b.T


def features(rng, n, d, base=None, noise=0.05):
    f = rng.normal(size=(n, d))
    src = f if base is None else base
    for k in range(0, n, 4):  # near copies
        f[k] = src[rng.integers(len(src))] * rng.uniform(0.5, 2) + rng.normal(size=d) * noise * rng.uniform(0, 3)
    return f


def assert_same_pairs(got, ref_mask, s, thr):
    """got == the pairs of ref_mask, but for pairs within 1e-5 of the threshold (float32 against float64); the
    cosines match; sorted by (i, j) without repeats."""
    i, j, v = got
    gs = set(zip(i.tolist(), j.tolist()))
    rs = {(int(a), int(b)) for a, b in zip(*np.nonzero(ref_mask))}
    fuzzy = {p for p in gs ^ rs if abs(s[p] - thr) < 1e-5}
    assert gs - fuzzy == rs - fuzzy
    np.testing.assert_allclose(v, s[i, j], atol=1e-5)
    di, dj = np.diff(i), np.diff(j)
    assert np.all((di > 0) | ((di == 0) & (dj > 0)))


@pytest.mark.parametrize("chunk", [1, 13, 64, 4096])
def test_semantic_pairs_against_brute_force(chunk):
    """Reference: the float64 numpy cosine matrix of the normalized rows, thresholded (within: i < j)."""
    rng = np.random.default_rng(chunk)
    f1 = features(rng, 150, 24)
    f2 = features(rng, 90, 24, base=f1)
    s11, s12 = brute_cosine(f1), brute_cosine(f1, f2)
    thr = 0.95
    got = semantic_pairs(f1, min_cosine=thr, chunk=chunk)
    assert len(got[0]) > 10 and got[2].dtype == np.float32
    assert_same_pairs(got, np.triu(s11 >= thr, 1), s11, thr)
    got = semantic_pairs(torch.from_numpy(f1).float(), f2, min_cosine=thr, chunk=chunk)
    assert len(got[0]) > 10
    assert_same_pairs(got, s12 >= thr, s12, thr)


def brute_top_k(s, k, thr, within):
    keep = np.zeros_like(s, dtype=bool)
    for i in range(len(s)):
        cand = [(-s[i, j], j) for j in range(s.shape[1]) if s[i, j] >= thr and not (within and i == j)]
        for _, j in sorted(cand)[:k]:
            keep[i, j] = True
    if within:
        keep = np.triu(keep | keep.T, 1)
    return keep


@pytest.mark.parametrize("chunk", [5, 32, 4096])
def test_semantic_pairs_top_k_against_brute_force(chunk):
    """Reference: each row's k most similar rows (cosine >= threshold) from the float64 matrix; within one set a pair
    stays when either is among the other's k."""
    rng = np.random.default_rng(7)
    f1 = features(rng, 80, 8, noise=0.3)
    f2 = features(rng, 60, 8, base=f1, noise=0.3)
    s11, s12 = brute_cosine(f1), brute_cosine(f1, f2)
    for k in (1, 3):
        assert_same_pairs(semantic_pairs(f1, min_cosine=0.5, top_k=k, chunk=chunk), brute_top_k(s11, k, 0.5, True),
                          s11, 0.5)
        assert_same_pairs(semantic_pairs(f1, f2, min_cosine=0.5, top_k=k, chunk=chunk),
                          brute_top_k(s12, k, 0.5, False), s12, 0.5)


def test_semantic_pairs_errors():
    with pytest.raises(UsageError, match="as many features"):
        semantic_pairs(np.ones((3, 4)), np.ones((3, 5)))
    with pytest.raises(UsageError, match="top_k"):
        semantic_pairs(np.ones((3, 4)), top_k=0)


# -- leakage ---------------------------------------------------------------------------------------------------------


def test_leakage_accuracy_hand_counted():
    """Reference: counted by hand: 10 test samples, 7 correct; 3 leaked (all correct): 7/10 overall, 3/3 leaked,
    4/7 on the rest, a gap of 0.7 - 4/7."""
    correct = np.array([1, 1, 0, 1, 0, 1, 1, 0, 1, 1], dtype=bool)
    leaked = np.array([0, 3, 9])
    r = leakage_accuracy(correct, leaked)
    assert r["n"] == 10 and r["n_leaked"] == 3
    assert r["accuracy"] == pytest.approx(0.7) and r["accuracy_leaked"] == 1.0
    assert r["accuracy_without"] == pytest.approx(4 / 7) and r["gap"] == pytest.approx(0.7 - 4 / 7)
    mask = np.zeros(10, dtype=bool)
    mask[leaked] = True
    assert leakage_accuracy(correct.astype(int), mask) == r
    none = leakage_accuracy(correct, np.zeros(0, dtype=np.int64))
    assert none["accuracy_leaked"] is None and none["gap"] == 0.0
    with pytest.raises(UsageError):
        leakage_accuracy(correct, np.array([10]))
