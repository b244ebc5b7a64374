"""Probes shape_bias and tta: invariants on planted models, and published numbers on the mirror."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from imgclass import evaluate
from imgclass.data import CUE_CONFLICT_CATEGORIES, cue_conflict_space
from imgclass.data.labels import align_labels, imagenet_space
from imgclass.models.classifier import Classifier, ModelConfig
from imgclass.probes.shape_bias import texture_category
from imgclass.probes.tta import build_views

from conftest import mirror_file


class _CueReader(torch.nn.Module):
    """Reads the planted category indices from pixels and votes for an ImageNet member of one of them."""

    def __init__(self, first_member: list[int], cue: str):
        super().__init__()
        self.first_member = torch.tensor(first_member)
        self.cue = cue

    def forward(self, x):
        # pixel (0, 0) red channel holds 10 * shape index, pixel (0, 1) red holds 10 * texture index (in [0,1] units)
        shape = torch.round(x[:, 0, 0, 0] * 255 / 10).long()
        texture = torch.round(x[:, 0, 0, 1] * 255 / 10).long()
        pick = shape if self.cue == "shape" else texture
        logits = torch.zeros(len(x), 1000)
        logits[torch.arange(len(x)), self.first_member[pick]] = 20.0
        return logits


def _stimuli(root, pairs):
    for s, t, k in pairs:
        img = np.full((16, 16, 3), 128, np.uint8)
        img[0, 0, 0] = 10 * CUE_CONFLICT_CATEGORIES.index(s)
        img[0, 1, 0] = 10 * CUE_CONFLICT_CATEGORIES.index(t)
        (root / s).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / s / f"{s}{k}-{t}{k}.png")


@pytest.mark.parametrize("cue,expected", [("shape", 1.0), ("texture", 0.0)])
def test_shape_bias_of_planted_cue_readers(tmp_path, cue, expected):
    """Invariant: a model that reads only the shape cue has shape bias 1, only the texture cue 0;
    stimuli whose shape and texture categories agree are excluded."""
    mirror_file("imagenet/cue-conflict-16class-imagenet-indices.json")
    pairs = [("cat", "bear", 1), ("cat", "truck", 2), ("bear", "cat", 1), ("truck", "bear", 3), ("cat", "cat", 4)]
    _stimuli(tmp_path / "cc", pairs)
    space = cue_conflict_space(list(CUE_CONFLICT_CATEGORIES))
    inet = imagenet_space()
    col = {w: j for j, w in enumerate(inet.wnids)}
    first = [col[m[0]] for m in space.members]
    clf = Classifier(_CueReader(first, cue), labels=inet, config=ModelConfig((3, 16, 16), (0,) * 3, (1,) * 3, 1.0),
                     source=f"{cue}-reader")
    r = evaluate(clf, f"folder:{tmp_path / 'cc'}?classes=cue-conflict", probes=["shape_bias"], progress=False,
                 workers=0)
    sb = r["probes"]["shape_bias"]
    assert sb["shape_bias"] == expected
    assert sb["n_conflict_stimuli"] == 4 and sb["n_excluded_same_category"] == 1
    assert sb["per_category"]["cat"]["stimuli"] == 2


def test_texture_category_parsing():
    assert texture_category("cat/cat7-elephant1.png") == "elephant"
    assert texture_category("cue-conflict/airplane/airplane1-bicycle2.jpg") == "bicycle"
    with pytest.raises(ValueError, match="cue-conflict stimulus"):
        texture_category("cat/photo.jpg")


def test_superclass_alignment_is_the_mean_probability_rule():
    """Reference: Geirhos et al.'s rule computed by hand (mean softmax over each category's classes)."""
    mirror_file("imagenet/cue-conflict-16class-imagenet-indices.json")
    space = cue_conflict_space(list(CUE_CONFLICT_CATEGORIES))
    al = align_labels(imagenet_space(background=True), space)
    logits = torch.randn(6, 1001) * 3
    p = torch.softmax(logits.double(), 1)
    col = {w: j for j, w in enumerate(imagenet_space(background=True).wnids) if w}
    manual = torch.stack([p[:, [col[w] for w in m]].mean(1) for m in space.members], 1)
    assert torch.allclose(al.apply(logits).double().exp(), manual, rtol=1e-5)
    assert al.method == "group" and al.dropped[0] == "background"


@pytest.mark.slow
def test_coral_mobilenet_v2_shape_bias_is_about_0_2():
    """Reference: Geirhos et al. (2019): ImageNet CNNs ~0.2 (humans ~0.96); the mirror measured 0.205 for this
    model (measured here: 0.213 with the 87.5 % centre crop)."""
    mirror_file("imagenet/cue-conflict.tar")
    mirror_file("models/coral-mobilenet-tflite/mobilenet_v2_1.0_224_quant.tflite")
    r = evaluate("zoo:coral-mobilenet-v2-1.0-224", "zoo:cue-conflict", probes=["shape_bias"], progress=False)
    sb = r["probes"]["shape_bias"]
    assert sb["shape_bias"] == pytest.approx(0.213, abs=0.004), sb["shape_bias"]  # deterministic: a stimulus or two
    assert sb["n_conflict_stimuli"] == 1200 and sb["n_excluded_same_category"] == 80


def test_tta_view_grid():
    views = build_views(sets=("flip", "ten_crop", "zoom"), square=256, input_size=224, zoom_scales=(2.0,),
                        zoom_grid=3)
    names = [v.name for v in views]
    assert names[:2] == ["center", "center-flip"] and len(names) == 2 + 8 + 1 + 9
    center = views[0]
    assert center.size == pytest.approx(224 / 256) and center.top == pytest.approx(16 / 256)
    for v in views:  # every box lies inside the image
        assert 0 <= v.top <= 1 - v.size + 1e-9 and 0 <= v.left <= 1 - v.size + 1e-9
    with pytest.raises(ValueError, match="known"):
        build_views(sets=("rotate",), square=32, input_size=32, zoom_scales=(), zoom_grid=3)


def test_tta_on_cifar_resnet(tmp_path):
    """Invariants: the centre view reproduces plain evaluation; oracles bound the averages and grow with views;
    flip averaging does not hurt a flip-trained CIFAR ResNet (the literature's +0.3-0.5 points)."""
    mirror_file("cifar10-lossless/test-first1000.npz")
    r = evaluate("zoo:cifar10-resnet20", "zoo:cifar10-lossless:test", probes=["accuracy", "tta"], limit=200,
                 progress=False, out=tmp_path)
    t, acc = r["probes"]["tta"], r["probes"]["accuracy"]["top1"]
    assert t["baseline_top1"] == acc
    s = t["sets"]
    for name, v in s.items():
        assert v["oracle"] >= v["accuracy"] - 1e-12
    assert s["all"]["oracle"] >= max(v["oracle"] for v in s.values()) - 1e-12
    assert s["flip"]["accuracy"] >= acc, (s["flip"]["accuracy"], acc)
    assert s["zoom"]["n_views"] == 1 + 3 * 9
    assert "Test-time augmentation" in (tmp_path / "report.html").read_text()
