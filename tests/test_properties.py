"""imgclass.diagnose.properties against cleanvision 0.3.7 (``Imagelab(data_path=...).find_issues``): the same PNG
files on both sides (ours decoded by imgclass's own decoder), every score to 1e-6 and every flagged set equal.

Two folders, so that both of cleanvision's odd_size regimes are exercised: the 1,000 lossless CIFAR-10 test
images plus planted ones (all CIFAR images are 32x32, so the sizes' IQR is 0 and every image off 32x32 is odd),
and the ImageNet samples plus planted ones (sizes vary: the 0.5 threshold on the normalized distance).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from conftest import mirror_file
from imgclass.data.decode import decode_image
from imgclass.diagnose.properties import (ISSUE_TYPES, concat_properties, image_properties, property_issues,
                                          property_scores)
from imgclass.errors import UsageError

cleanvision = pytest.importorskip("cleanvision")

TOL = 1e-6
N_IMAGENET = 40  # of the 1,000 samples: sizes from 256x256 to 500x256


def _planted(base: np.ndarray, big: bool) -> dict[str, Image.Image]:
    """Images with one issue each, made from ``base`` (H, W, 3) uint8."""
    h, w = base.shape[:2]
    f = max(h, w) // 2
    rgb = Image.fromarray(base)
    out = {
        "dark": Image.fromarray((base * 0.08).astype(np.uint8)),
        "light": Image.fromarray((255 - (255 - base.astype(np.float64)) * 0.03).astype(np.uint8)),
        # blurred at the scale cleanvision looks at (a copy at most 64 pixels on its longer side)
        "blurred": rgb.resize((max(w // f, 1), max(h // f, 1)), Image.BILINEAR).resize((w, h), Image.BILINEAR),
        "blurred_gauss": rgb.filter(ImageFilter.GaussianBlur(f / 4)),
        "gray": rgb.convert("L"),  # a grayscale file (mode L)
        "flat": Image.fromarray(np.broadcast_to(np.array([150, 120, 90], dtype=np.uint8), base.shape).copy()),
        "flat_gray": Image.fromarray(np.full((h, w), 40, dtype=np.uint8)),
        "tiny": rgb.resize((3, 2)),  # FIND_EDGES copies an image under 3x3
        "one_pixel": rgb.resize((1, 1)),
        "wide": rgb.resize((w * 3, max(h // 4, 1))),  # odd aspect ratio
        "tall_gray": rgb.convert("L").resize((max(w // 5, 1), h * 2)),  # Pillow 13 resizes it vertical pass first
    }
    if big:
        out["odd_small"] = rgb.resize((40, 40))
        out["odd_big"] = rgb.resize((w * 3, h * 3))
    else:
        out["odd_big"] = rgb.resize((300, 280))
    return out


def _folder(tmp_path_factory, name: str, images: dict[str, Image.Image]):
    """Write the images as PNG; (folder, names in cleanvision's sorted order, our (3, H, W) uint8 tensors, modes)."""
    d = tmp_path_factory.mktemp(name)
    names = sorted(images)
    ours, modes = [], []
    for n in names:
        buf = io.BytesIO()
        images[n].save(buf, format="PNG")
        (d / f"{n}.png").write_bytes(buf.getvalue())
        ours.append(torch.from_numpy(decode_image(buf.getvalue(), n)).permute(2, 0, 1).contiguous())
        modes.append(images[n].mode)
    return d, names, ours, np.array(modes)


def _cleanvision(folder, names):
    from cleanvision import Imagelab

    lab = Imagelab(data_path=str(folder))
    lab.find_issues(issue_types={t: {} for t in ISSUE_TYPES}, n_jobs=1, verbose=False)
    issues = lab.issues
    issues.index = [p.rsplit("/", 1)[-1][:-4] for p in issues.index]
    return issues.loc[names]


@pytest.fixture(scope="module")
def cifar_set(tmp_path_factory):
    z = np.load(mirror_file("cifar10-lossless/test-first1000.npz"))
    x = z["images"]
    images = {f"c{i:04d}": Image.fromarray(x[i]) for i in range(len(x))}
    images.update({f"p_{k}": v for k, v in _planted(x[7], big=False).items()})
    folder, names, ours, modes = _folder(tmp_path_factory, "cifar", images)
    return names, ours, modes, _cleanvision(folder, names)


@pytest.fixture(scope="module")
def imagenet_set(tmp_path_factory):
    import imgclass

    ds = imgclass.load_dataset("zoo:imagenet-samples:all")
    images = {}
    for i in range(N_IMAGENET):
        x = ds.load(i).permute(1, 2, 0).numpy()
        gray = (x[..., 0] == x[..., 1]).all() and (x[..., 1] == x[..., 2]).all()  # a grayscale JPEG: keep it L
        images[f"s{i:02d}"] = Image.fromarray(x[..., 0] if gray else x)
    images.update({f"p_{k}": v for k, v in _planted(ds.load(3).permute(1, 2, 0).numpy(), big=True).items()})
    folder, names, ours, modes = _folder(tmp_path_factory, "imagenet", images)
    return names, ours, modes, _cleanvision(folder, names)


def _compare(scores, issues, ref, *, rows=slice(None)):
    for t in ISSUE_TYPES:
        theirs = ref[f"{t}_score"].to_numpy(dtype=np.float64)[rows]
        np.testing.assert_allclose(scores[t][rows], theirs, rtol=0, atol=TOL, err_msg=t)
        flagged = ref[f"is_{t}_issue"].to_numpy(dtype=bool)[rows]
        assert np.array_equal(issues[t][rows], flagged), (t, np.flatnonzero(issues[t][rows] != flagged))


@pytest.mark.slow
def test_cifar_matches_cleanvision_given_file_modes(cifar_set):
    """CIFAR-10 + planted, the grayscale files named (as cleanvision reads PIL's mode): every score and flag equal,
    odd_size in cleanvision's zero-IQR regime (threshold 1.0)."""
    names, ours, modes, ref = cifar_set
    scores = property_scores(ours, grayscale=modes == "L")
    issues = property_issues(scores)
    _compare(scores, issues, ref)
    flagged = {t: {n for n, f in zip(names, issues[t]) if f} for t in ISSUE_TYPES}
    # the planted images are found (and odd_size flags exactly the non-32x32 ones)
    assert {"p_dark", "p_flat_gray"} <= flagged["dark"]
    assert "p_light" in flagged["light"]
    assert {"p_blurred", "p_blurred_gauss"} <= flagged["blurry"]
    assert {"p_gray", "p_flat_gray", "p_tall_gray"} == flagged["grayscale"]
    assert {"p_flat", "p_flat_gray", "p_one_pixel"} <= flagged["low_information"]
    assert flagged["odd_size"] == {"p_tiny", "p_one_pixel", "p_wide", "p_tall_gray", "p_odd_big"}
    assert {"p_wide", "p_tall_gray"} <= flagged["odd_aspect_ratio"]


@pytest.mark.slow
def test_cifar_inferred_grayscale_differs_only_on_equal_channel_rgb_files(cifar_set):
    """Without the file modes, grayscale is inferred from equal channels (cleanvision's rule for an image without a
    mode). cleanvision: an RGB-mode file with equal channels is not grayscale and its entropy is over 768 bins; so
    exactly those 14 CIFAR images differ, on grayscale (0 here, 1 there) and low_information (0.1 log2(3) lower
    here)."""
    names, ours, modes, ref = cifar_set
    scores = property_scores(ours)
    issues = property_issues(scores)
    equal = np.array([bool(((im[0] == im[1]) & (im[1] == im[2])).all()) for im in ours])
    differ = equal & (modes != "L")
    assert differ.sum() == 14 and not differ[1000:].any()
    _compare(scores, issues, ref, rows=~differ)
    assert (scores["grayscale"][differ] == 0).all() and (ref["grayscale_score"].to_numpy()[differ] == 1).all()
    theirs = ref["low_information_score"].to_numpy(dtype=np.float64)[differ]
    expected = np.minimum(theirs, 1) - 0.1 * np.log2(3)
    np.testing.assert_allclose(scores["low_information"][differ], expected, atol=TOL)
    for t in ("dark", "light", "blurry", "odd_size", "odd_aspect_ratio"):
        np.testing.assert_allclose(scores[t][differ], ref[f"{t}_score"].to_numpy(dtype=np.float64)[differ],
                                   atol=TOL)


@pytest.mark.slow
def test_imagenet_matches_cleanvision(imagenet_set):
    """The first 40 ImageNet samples (each resized to 64 on its longer side for blurry) + planted (the tall one
    resized in Pillow 13's vertical-first order), grayscale inferred (the equal-channel files are the mode-L ones):
    every score and flag equal, odd_size in the IQR > 0 regime."""
    names, ours, modes, ref = imagenet_set
    scores = property_scores(ours)
    issues = property_issues(scores)
    _compare(scores, issues, ref)
    flagged = {t: {n for n, f in zip(names, issues[t]) if f} for t in ISSUE_TYPES}
    assert {"p_dark", "p_flat_gray"} <= flagged["dark"]
    assert {"p_gray", "p_flat_gray", "p_tall_gray"} == flagged["grayscale"]
    assert {"p_odd_small", "p_tiny", "p_one_pixel"} <= flagged["odd_size"]
    # no blurry assertion here: at this size the copied border of PIL's FIND_EDGES and the histogram-spread term
    # keep a blurred copy above cleanvision's threshold (its score even rises); the scores match all the same
    assert not any(flagged[t] & {f"s{i:02d}" for i in range(N_IMAGENET)} for t in ("dark", "light", "grayscale"))


@pytest.mark.slow
def test_batches_sizes_and_layouts(imagenet_set):
    """Invariances against the reference run above: properties measured batch by batch and concatenated, the
    images of one size as one (N, 3, H, W) numpy batch, and ``sizes=`` of the originals with the pixels resized
    (odd_size and odd_aspect_ratio from ``sizes``, equal to cleanvision's on the originals)."""
    names, ours, modes, ref = imagenet_set
    whole = property_scores(ours)
    parts = concat_properties([image_properties(ours[i:i + 5]) for i in range(0, len(ours), 5)])
    batched = property_scores(parts)
    for t in (*ISSUE_TYPES, "size"):
        assert np.array_equal(batched[t], whole[t]), t
    same = [i for i, im in enumerate(ours) if tuple(im.shape) == (3, 256, 341)]
    assert len(same) >= 3
    one = image_properties(np.stack([ours[i].numpy() for i in same]))
    sep = image_properties([ours[i] for i in same])
    for k in one:
        assert np.array_equal(one[k], sep[k]), k
    hw = np.array([im.shape[1:] for im in ours])
    small = [torch.nn.functional.interpolate(im[None].float(), size=(24, 24)).round().to(torch.uint8)[0]
             for im in ours]
    resized = property_scores(small, sizes=hw)
    for t in ("odd_size", "odd_aspect_ratio"):
        np.testing.assert_allclose(resized[t], ref[f"{t}_score"].to_numpy(dtype=np.float64), atol=TOL)
        assert np.array_equal(property_issues(resized)[t], ref[f"is_{t}_issue"].to_numpy(dtype=bool))


def test_thresholds_and_errors():
    """Threshold overrides and one-line usage errors (no reference: the rule is ``score < threshold``)."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(6, 3, 20, 30), dtype=np.uint8)
    x[0] //= 8
    s = property_scores(x)
    assert set(s) == set(ISSUE_TYPES) | {"size"}
    assert property_issues(s)["dark"].tolist() == [True] + [False] * 5
    assert not property_issues(s, thresholds={"dark": 0.0})["dark"].any()
    assert property_issues(s, thresholds={"dark": 1.01})["dark"].all()
    # equal sizes: zero IQR, threshold 1.0, nothing is odd
    assert (s["odd_size"] == 1).all() and not property_issues(s)["odd_size"].any()
    with pytest.raises(UsageError, match="no image property"):
        property_issues(s, thresholds={"darkness": 0.3})
    with pytest.raises(UsageError, match="uint8"):
        property_scores(x.astype(np.float32))
    with pytest.raises(UsageError, match=r"\(N, 3, H, W\)"):
        property_scores(x[:, :2])
    with pytest.raises(UsageError, match="sizes"):
        property_scores(x, sizes=np.ones((5, 2)))
    with pytest.raises(UsageError, match="channels differ"):
        property_scores(x, grayscale=np.ones(6, dtype=bool))
    empty = property_scores(np.zeros((0, 3, 8, 8), dtype=np.uint8))
    assert all(len(v) == 0 for v in empty.values())
