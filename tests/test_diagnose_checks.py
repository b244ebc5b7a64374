"""The data checks of `imgclass diagnose` end to end on a folder with planted problems: duplicates and leakage,
image properties (against cleanvision on the same files), outliers and slices."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from imgclass.diagnose import diagnose
from imgclass.results import load

from conftest import mirror_file

NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _png(arr: np.ndarray, path, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr)
    (img.convert(mode) if mode else img).save(path)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """60 CIFAR-10 test images as PNG in class folders, plus: an exact copy of image 0, a JPEG (q75) copy of
    image 1, a brightened copy of image 2, a dark, a gray-mode and an odd-sized image; a 'training' folder of 30
    other images holding a copy of test image 3."""
    root = tmp_path_factory.mktemp("planted")
    src = np.load(mirror_file("cifar10-lossless/test-first1000.npz"))
    imgs, labels = src["images"], src["labels"]
    # images whose three channels differ (an RGB file of equal channels is gray to us, not to cleanvision)
    colour = [i for i in range(len(imgs)) if not (np.array_equal(imgs[i][..., 0], imgs[i][..., 1])
                                                  and np.array_equal(imgs[i][..., 1], imgs[i][..., 2]))]
    test, train = colour[:60], colour[100:130]
    data, against = root / "test", root / "train"
    for i in test:
        _png(imgs[i], data / NAMES[labels[i]] / f"{i:04d}.png")
    a, b, c, d = test[:4]
    _png(imgs[a], data / NAMES[labels[a]] / "copy-of-a.png")
    buf = io.BytesIO()
    Image.fromarray(imgs[b]).save(buf, format="JPEG", quality=75)
    (data / NAMES[labels[b]] / "jpeg-of-b.jpg").write_bytes(buf.getvalue())
    ImageEnhance.Brightness(Image.fromarray(imgs[c])).enhance(1.08).save(data / NAMES[labels[c]] / "bright-of-c.png")
    _png((imgs[test[5]] * 0.08).astype(np.uint8), data / NAMES[labels[test[5]]] / "dark.png")
    _png(imgs[test[6]], data / NAMES[labels[test[6]]] / "gray.png", mode="L")
    _png(np.asarray(Image.fromarray(imgs[test[7]]).resize((96, 24))), data / NAMES[labels[test[7]]] / "odd.png")
    for i in train:
        _png(imgs[i], against / NAMES[labels[i]] / f"{i:04d}.png")
    _png(imgs[d], against / NAMES[labels[d]] / "leaked.png")
    out = root / "out"
    res = diagnose(f"folder:{data}", models=["zoo:cifar10-resnet20"], against=f"folder:{against}",
                   checks=["duplicates", "image_properties", "outliers", "slices"],
                   check_params={"slices": {"min_support": 3, "min_gap": 0.05, "alpha": 1.0}},
                   out=out, progress=False, store=False)
    return {"root": root, "data": data, "against": against, "out": out, "res": res, "ids": (a, b, c, d),
            "derived": (test[5], test[6], test[7]), "labels": labels}


def _name(planted, i: int) -> str:
    return f"{NAMES[planted['labels'][i]]}/{i:04d}.png"


def test_duplicates_and_leakage_find_the_planted_pairs(planted):
    """Reference: the planted copies. The exact copy is an exact pair, the JPEG and brightened copies near pairs,
    the copy in the training folder a leak; nothing else pairs up (the other 57 test images are distinct CIFAR
    images); the accuracy without the leaked image is recomputed from the model's per-sample predictions."""
    res, (a, b, c, d) = planted["res"], planted["ids"]
    dup = res["probes"]["duplicates"]
    pairs = {(q["kind"], q["where"], frozenset((q["sample_id"], q["partner"]))) for q in dup["pairs"]}
    la = planted["labels"]
    assert ("exact", "within", frozenset((_name(planted, a), f"{NAMES[la[a]]}/copy-of-a.png"))) in pairs
    assert ("near", "within", frozenset((_name(planted, b), f"{NAMES[la[b]]}/jpeg-of-b.jpg"))) in pairs
    assert ("near", "within", frozenset((_name(planted, c), f"{NAMES[la[c]]}/bright-of-c.png"))) in pairs
    assert ("exact", "against", frozenset((_name(planted, d), f"{NAMES[la[d]]}/leaked.png"))) in pairs
    involved = {s for _, _, p in pairs for s in p}
    e, f, g = planted["derived"]  # the dark, gray and odd-sized images are made from these: pairs too
    planted_names = {_name(planted, i) for i in (a, b, c, d, e, f, g)} | {
        f"{NAMES[la[a]]}/copy-of-a.png", f"{NAMES[la[b]]}/jpeg-of-b.jpg", f"{NAMES[la[c]]}/bright-of-c.png",
        f"{NAMES[la[d]]}/leaked.png", f"{NAMES[la[e]]}/dark.png", f"{NAMES[la[f]]}/gray.png", f"{NAMES[la[g]]}/odd.png"}
    assert involved <= planted_names
    assert dup["n_leaked"] == 1
    probs = planted["res"]["rescoring"]
    acc = dup["leakage_accuracy"]
    assert acc["n_leaked"] == 1 and acc["accuracy"] == probs["accuracy"]
    n = acc["n"]
    leaked_right = acc["accuracy_leaked"]
    assert acc["accuracy_without"] == pytest.approx((acc["accuracy"] * n - leaked_right) / (n - 1), abs=1e-12)


def test_image_properties_equal_cleanvision_on_the_same_files(planted):
    """Reference: cleanvision 0.3.7's Imagelab on the same folder: the same images flagged for every issue type
    (the planted dark, gray-mode and odd-sized images among them)."""
    from cleanvision import Imagelab

    files = sorted(p for p in planted["data"].rglob("*") if p.is_file())
    lab = Imagelab(filepaths=[str(p) for p in files])
    lab.find_issues({k: {} for k in ("dark", "light", "blurry", "low_information", "grayscale", "odd_size",
                                     "odd_aspect_ratio")}, verbose=False)
    issues = lab.issues
    want = {k: {str(p.relative_to(planted["data"])) for p, flag in zip(files, issues[f"is_{k}_issue"]) if flag}
            for k in ("dark", "light", "blurry", "low_information", "grayscale", "odd_size", "odd_aspect_ratio")}
    got = {k: set() for k in want}
    for f in planted["res"]["flags"]:
        if f.check == "image_properties":
            got[f.issue].add(f.sample_id)
    assert got == want
    assert any(s.endswith("dark.png") for s in got["dark"]) and any(s.endswith("gray.png") for s in got["grayscale"])
    assert any(s.endswith("odd.png") for s in got["odd_aspect_ratio"])


def test_outliers_and_slices_and_the_issue_file(planted):
    """Invariants: issues.csv has exactly one row per flag of every check; outlier scores are in (0, 1] with the
    flagged ones the lowest; each reported slice's accuracy is below the overall; the results load and the report
    shows every check's section."""
    res = planted["res"]
    rows = list(csv.DictReader((planted["out"] / "issues.csv").open()))
    assert len(rows) == len(res["flags"]) == sum(r["n_flagged"] for r in res["probes"].values())
    out = res["probes"]["outliers"]
    assert out["n_evaluated"] == 66 and 0 < out["score_quantiles"][0] <= 1
    flagged = [f.score for f in res["flags"] if f.check == "outliers"]
    assert all(s <= out["score_quantiles"][2] for s in flagged)
    sl = res["probes"]["slices"]
    assert all(s["accuracy"] < sl["overall_accuracy"] for s in sl["slices"])
    typed = load(planted["out"])
    page = (planted["out"] / "report.html").read_text()
    for title in ("Duplicates and leakage", "Image properties", "Outliers", "Error slices"):
        assert f"<h2>{title}</h2>" in page
    assert typed.probes["duplicates"].n_leaked == 1
