"""The Python API as a notebook uses it: plain modules with their contract as keyword arguments, spec options as
keyword arguments, and the README's example, run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

import imgclass
from imgclass.errors import UsageError
from imgclass.explain import explain

ROOT = Path(__file__).resolve().parents[1]
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)


def test_plain_module_with_its_contract_equals_the_hand_written_pipeline(tmp_path):
    """Reference: the module applied by hand to (x/255 - mean) / std on the dataset's images; top-1 and every
    logit of the probe's predictions agree."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    ds = imgclass.load_dataset("zoo:cifar10-lossless:test")
    r = imgclass.evaluate(net, ds, probes=["accuracy"], limit=64, progress=False, workers=0,
                          model_options=dict(mean=CIFAR_MEAN, std=CIFAR_STD, input_size=32, crop_pct=1.0,
                                             classes="cifar10"))
    idx = np.sort(np.random.default_rng(0).choice(len(ds), size=64, replace=False))
    x = torch.stack([ds.load(int(i)) for i in idx]).float() / 255
    y = torch.as_tensor(ds.labels[idx])
    with torch.no_grad():
        logits = net((x - torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR_STD).view(1, 3, 1, 1))
    assert r["probes"]["accuracy"]["top1"] == pytest.approx(float((logits.argmax(1) == y).double().mean()))
    assert r["model"]["info"]["contract"] == "stated" and r["label_alignment"]["method"] != "index"
    assert not any("assumed" in w for w in r["warnings"])


def test_module_without_a_contract_is_assumed_imagenet_and_says_so():
    """A torchvision ImageNet model given bare: torchvision's convention (224 px, ImageNet mean/std, crop 0.875)
    and ImageNet-1k's class order are assumed, aligned by wnid, and the results warn about the assumption."""
    net = torchvision.models.mobilenet_v3_small().eval()
    r = imgclass.evaluate(net, "zoo:imagenet-samples", probes=["accuracy"], limit=4, progress=False, workers=0)
    assert r["model"]["config"]["input_size"] == [3, 224, 224] and r["model"]["config"]["crop_pct"] == 0.875
    assert r["label_alignment"]["method"] != "index"
    assert any(w.startswith("model contract assumed") for w in r["warnings"])
    assert any(w.startswith("model classes assumed: ImageNet-1k") for w in r["warnings"])


def test_spec_options_as_keyword_arguments_equal_the_query_string():
    from imgclass.assets import fetch

    path = fetch("vnncomp-cifar10-small")
    a = imgclass.load_model(f"onnx:{path}", layout="nhwc", classes="cifar10", scale=1)
    b = imgclass.load_model(f"onnx:{path}?layout=nhwc&classes=cifar10&scale=1")
    assert a.config == b.config and a.class_names == b.class_names
    with pytest.raises(UsageError, match="given twice"):
        imgclass.load_model(f"onnx:{path}?layout=nhwc", layout="nhwc")
    with pytest.raises(UsageError, match="unknown option"):
        imgclass.load_model(torchvision.models.resnet18(num_classes=10), meen=0.5)


def test_explain_takes_a_plain_module():
    """Invariant: explaining a bare module is explaining it wrapped by load_model's contract for it."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    a = explain(net, x, method="saliency")
    b = explain(imgclass.load_model(net), x, method="saliency")
    assert a.shape == (2, 224, 224) and torch.allclose(a, b)
    c = explain(imgclass.load_model(net, mean=0.5, std=0.25), x, method="saliency")
    assert not torch.allclose(a, c)  # the contract matters: another normalization, other gradients


def test_readme_python_example_runs_as_written(tmp_path):
    """The README's Python block, run offline on the mirror in a fresh interpreter: it prints the published
    ResNet-20 accuracy on the lossless test images (91.5 %)."""
    block = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    env = {**os.environ, "IMGCLASS_MIRROR": str(Path(os.environ["IMGCLASS_MIRROR"]).resolve())}
    p = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr
    assert float(p.stdout.strip().splitlines()[0]) == pytest.approx(0.915, abs=1e-9)
    assert (tmp_path / "runs" / "r20" / "report.html").is_file()
