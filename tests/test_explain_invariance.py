"""Invariance tests generated over every registered method (Captum's practice): a batch gives the maps of
its images one by one, the internal batch size changes nothing, maps have the input's spatial size,
default targets are the predicted classes; plus the registry's error messages."""

from __future__ import annotations

import pytest
import torch

from imgclass.explain import METHODS, explain

# small settings so each method costs a few dozen forwards on a 32x32 ResNet-20; still several internal
# batches at internal_batch_size=2 (IG's 3 x 5 path points put steps of two images in one batch; Score-CAM
# at layer1 masks with its 16 channels instead of layer3's 64)
FAST = {
    "ig": {"steps": 5},
    "smoothgrad": {"n_samples": 3, "base": "ig", "steps": 3},
    "occlusion": {"window": 8, "stride": 8},
    "rise": {"n_masks": 16, "cells": 4},
    "scorecam": {"layer": "layer1"},
    "extremal": {"iterations": 4, "step": 4},
}


@pytest.fixture(scope="module")
def resnet20():
    from conftest import mirror_file

    mirror_file("models/akamaster-resnet-cifar10/resnet20-12fca82f.th")
    import imgclass

    return imgclass.load_model("zoo:cifar10-resnet20")


@pytest.fixture(scope="module")
def resnet20_f64(resnet20):
    """A float64 copy: in float32, batch-size-dependent rounding (~1e-7) can flip a ReLU whose input is
    that close to 0 and move a gradient locally; in float64 such flips do not happen at these sizes."""
    import copy

    return copy.deepcopy(resnet20).double()


@pytest.fixture(scope="module")
def images():
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def _assert_same(a: torch.Tensor, b: torch.Tensor, what: str, tol: float = 1e-4) -> None:
    scale = float(b.abs().max()) or 1.0
    err = float((a - b).abs().max())
    assert err <= tol * scale, f"{what}: max difference {err:.3g} (scale {scale:.3g})"


@pytest.mark.parametrize("method", sorted(METHODS))
def test_batch_equals_one_by_one_and_internal_batch_size_is_irrelevant(resnet20_f64, images, method):
    p = FAST.get(method, {})
    x = images.double()
    t = torch.tensor([2, 5, 9])  # fixed targets, not all of them predicted
    whole = explain(resnet20_f64, x, t, method=method, internal_batch_size=64, **p)
    assert whole.shape == (3, 32, 32) and torch.isfinite(whole).all()
    assert float(whole.abs().max()) > 0, f"{method}: all-zero maps"
    alone = torch.cat([explain(resnet20_f64, x[i:i + 1], t[i:i + 1], method=method, internal_batch_size=64, **p)
                       for i in range(3)])
    _assert_same(alone, whole, f"{method}: one by one vs batch", 1e-9)
    small = explain(resnet20_f64, x, t, method=method, internal_batch_size=2, **p)
    _assert_same(small, whole, f"{method}: internal_batch_size 2 vs 64", 1e-9)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_maps_have_input_size_and_default_to_predicted_class(resnet20, method):
    x = torch.rand(2, 3, 40, 48, generator=torch.Generator().manual_seed(4))  # not the native 32x32, not square
    p = FAST.get(method, {})
    maps = explain(resnet20, x, method=method, **p)
    assert maps.shape == (2, 40, 48) and maps.dtype == torch.float32
    with torch.no_grad():
        pred = resnet20(x).argmax(1)
    _assert_same(explain(resnet20, x, pred, method=method, **p), maps, f"{method}: default targets")


def test_targets_by_name_and_single_int(resnet20, images):
    a = explain(resnet20, images, "cat", method="saliency")
    b = explain(resnet20, images, 3, method="saliency")
    c = explain(resnet20, images, [3, 3, 3], method="saliency")
    assert resnet20.class_names[3] == "cat"
    _assert_same(a, b, "name vs index")
    _assert_same(c, b, "list vs int")


def test_errors_name_the_problem(resnet20, images):
    with pytest.raises(KeyError, match="known explanation methods"):
        explain(resnet20, images, method="nope")
    with pytest.raises(TypeError, match="has no parameter.*steps"):
        explain(resnet20, images, method="gradcam", steps=3)
    with pytest.raises(ValueError, match=r"pixels in \[0, 1\]"):
        explain(resnet20, images * 255, method="saliency")
    with pytest.raises(TypeError, match="uint8"):
        explain(resnet20, (images * 255).to(torch.uint8), method="saliency")
    with pytest.raises(ValueError, match="class indices in"):
        explain(resnet20, images, 10, method="saliency")
    with pytest.raises(ValueError, match="no layer named 'layer9'"):
        explain(resnet20, images, method="gradcam", layer="layer9")
    with pytest.raises(ValueError, match="3 images"):
        explain(resnet20, images, [1, 2], method="saliency")


def test_explicit_layer_changes_the_cam(resnet20, images):
    default = explain(resnet20, images, method="gradcam")
    same = explain(resnet20, images, method="gradcam", layer="layer3")
    other = explain(resnet20, images, method="gradcam", layer="layer2")
    _assert_same(same, default, "layer3 is the ResNet-20 default")
    assert float((other - default).abs().max()) > 1e-3


def test_classifier_state_is_restored(resnet20, images):
    """Explaining leaves the model's mode and parameters as they were (the randomization check works on a copy)."""
    from imgclass.explain import randomization_check

    before = {k: v.clone() for k, v in resnet20.state_dict().items()}
    resnet20.train()
    try:
        explain(resnet20, images, method="gradcam")
        assert resnet20.training
    finally:
        resnet20.eval()
    randomization_check(resnet20, images[:1], methods=("saliency",), stages=(1,))
    after = resnet20.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
