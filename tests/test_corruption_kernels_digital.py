"""The numba kernels of the deterministic digital corruptions (brightness, saturate, contrast, pixelate) against
their tensor twins in ``digital`` (the path on every other device, itself held to imagecorruptions and the
CIFAR-10-C generator by test_corruptions_reference.py), and pixelate against Pillow itself.

Every comparison is bit for bit: the kernels do the same float64 (brightness, saturate) or float32 (contrast)
operations in the same order, without fused multiply-adds, and Pillow's integer arithmetic (pixelate)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from imgclass.corruptions import SEVERITIES, apply, corrupt, digital_kernels, kernels
from imgclass.corruptions.base import REGISTRY

from conftest import unavailable

NAMES = ("brightness", "saturate", "contrast", "pixelate")
pytestmark = pytest.mark.skipif(not kernels.HAVE_NUMBA, reason="numba is not installed")


@pytest.fixture(scope="module")
def cifar() -> torch.Tensor:
    from imgclass.assets import AssetUnavailableError, fetch

    try:
        path = fetch("cifar10-lossless-test1000")
    except AssetUnavailableError as e:
        unavailable(str(e))
    with np.load(path) as z:
        return torch.from_numpy(z["images"][:64]).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def large(cifar) -> torch.Tensor:
    """224x224: three random images (every level, hue ties rare) and two CIFAR images enlarged bilinearly (smooth,
    natural colours, many equal neighbours)."""
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (3, 3, 224, 224), generator=g, dtype=torch.uint8)
    smooth = torch.nn.functional.interpolate(cifar[:2].float(), size=(224, 224), mode="bilinear",
                                             align_corners=False).round().clamp(0, 255).to(torch.uint8)
    return torch.cat([noise, smooth])


def _kernel(x: torch.Tensor, name: str, s: int, params: str) -> torch.Tensor:
    assert REGISTRY[name].fused is not None
    return corrupt(x, name, s, seed=0, sample_ids=list(range(len(x))), params=params)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("params", ["imagenet", "cifar10"])
def test_kernel_equals_the_tensor_path_at_224_and_32(name, params, large, cifar):
    """Invariant: corrupt() on the CPU (the kernel) gives the tensor path's images bit for bit, every severity,
    at 224x224 and on 64 CIFAR-10 images at 32x32; one image at a time gives the batch's images."""
    for x in (large, cifar):
        for s in SEVERITIES:
            fast = _kernel(x, name, s, params)
            twin = apply(x, name, s, {}, params=params)
            assert torch.equal(fast, twin), (name, params, s, tuple(x.shape))
            one = torch.cat([_kernel(x[i:i + 1], name, s, params) for i in range(0, len(x), 7)])
            assert torch.equal(one, fast[::7]), (name, params, s, tuple(x.shape))


@pytest.mark.parametrize("name", NAMES)
def test_kernel_result_does_not_depend_on_how_the_work_splits(name, monkeypatch):
    """Invariant: one part, or two or three parts however small (a 224 px image cut in two, odd sizes cut inside
    images and rows at odd places), give the same images."""
    g = torch.Generator().manual_seed(1)
    threads = torch.get_num_threads()
    try:
        for shape in [(1, 3, 224, 224), (3, 3, 37, 53), (2, 3, 99, 101)]:
            x = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
            for params in ("imagenet", "cifar10"):
                torch.set_num_threads(1)
                whole = _kernel(x, name, 3, params)
                assert torch.equal(whole, apply(x, name, 3, {}, params=params)), (shape, params)
                with monkeypatch.context() as m:
                    m.setattr(kernels, "_PART_NS", 1_000)  # parts of a few pixels, planes or rows
                    for n_threads in (2, 3):
                        torch.set_num_threads(n_threads)
                        assert torch.equal(_kernel(x, name, 3, params), whole), (shape, params, n_threads)
    finally:
        torch.set_num_threads(threads)


def test_hsv_kernels_equal_the_tensor_path_on_hue_ties_and_edges():
    """Invariant: brightness and saturate give the tensor path's levels on the colours where scikit-image's rules
    meet: every colour with two equal channels (its hue tie rules), greys, the corners of the cube, and random
    colours, all severities of both parameter sets."""
    a = torch.arange(256)
    u, v = torch.meshgrid(a, a, indexing="ij")
    u, v = u.reshape(-1), v.reshape(-1)
    ties = torch.cat([torch.stack([u, u, v]), torch.stack([u, v, v]), torch.stack([v, u, v])], 1)
    rand = torch.randint(0, 256, (3, 1 << 16), generator=torch.Generator().manual_seed(2))
    colours = torch.cat([ties, rand], 1).to(torch.uint8)  # (3, 4 * 65536)
    x = colours.reshape(3, 4, 256, 256).permute(1, 0, 2, 3).contiguous()
    for name in ("brightness", "saturate"):
        for params in ("imagenet", "cifar10"):
            for s in SEVERITIES:
                assert torch.equal(_kernel(x, name, s, params), apply(x, name, s, {}, params=params)), \
                    (name, params, s)


def _pillow(img: np.ndarray, p: float, back) -> np.ndarray:
    h, w = img.shape[:2]
    im = Image.fromarray(img)
    return np.asarray(im.resize((int(w * p), int(h * p)), Image.BOX).resize((w, h), back))


@pytest.mark.parametrize("params", ["imagenet", "cifar10"])
def test_pixelate_kernel_equals_pillow(params, large, cifar):
    """Invariant: the pixelate kernel is Pillow's BOX reduction (its 8-bit fixed point) and NEAREST
    (imagecorruptions) or BOX (the CIFAR-10-C generator) enlargement, for every severity at 224 and 32 and at
    odd sizes where Pillow's windows skip a pixel now and then."""
    from imgclass.corruptions import get_params

    back = Image.BOX if params == "cifar10" else Image.NEAREST
    g = torch.Generator().manual_seed(3)
    odd = [torch.randint(0, 256, (2, 3, h, w), generator=g, dtype=torch.uint8) for h, w in [(17, 23), (99, 101)]]
    for x in [large, cifar[:16]] + odd:
        imgs = x.permute(0, 2, 3, 1).numpy()
        for s in SEVERITIES:
            p = get_params("pixelate", s, params)
            ours = _kernel(x, "pixelate", s, params).permute(0, 2, 3, 1).numpy()
            want = np.stack([_pillow(im, p, back) for im in imgs])
            np.testing.assert_array_equal(ours, want, err_msg=f"{params} severity {s} {tuple(x.shape)}")


def test_kernels_hand_back_to_the_tensor_path_outside_their_arithmetic():
    """Error path: where the kernels' arithmetic would not hold they return None (``corrupt`` then runs the tensor
    code): a BOX reduction by more than 128 (int16 window sums), a plane over 2**22 pixels (the exact sum)."""
    x = torch.zeros((1, 3, 8, 300), dtype=torch.uint8)
    assert digital_kernels.pixelate(x, 1, 1, box_back=False) is None
    assert digital_kernels.pixelate(x, 4, 150, box_back=False) is not None
    assert digital_kernels.contrast(torch.zeros((1, 1, 2049, 2049), dtype=torch.uint8), 0.5) is None
