"""Corruptions: invariants (batch and order independence, seeding), errors, the ``imgclass corrupt`` command and
the ``corruptions`` probe. The comparisons with imagecorruptions are in test_corruptions_reference.py."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from imgclass import evaluate
from imgclass.corruptions import COMMON, CORRUPTIONS, EXTRA, RANDOM, apply, corrupt, draw
from imgclass.data.base import ArrayDataset
from imgclass.data.labels import LabelSpace
from imgclass.errors import UnknownNameError, UsageError

from conftest import mirror_file
from helpers import tiny_classifier


def _images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth random images (natural-ish statistics: the corruptions have something to work on)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size // 4, size // 4, generator=g)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x * 255).round().to(torch.uint8)


# ---------------------------------------------------------------------------------------------------------
# invariants


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_same_seed_gives_identical_images_at_batch_size_1_and_64_in_any_order(name):
    """Invariant: each image's draw depends on (seed, corruption, severity, sample id) only."""
    x = _images(64)
    ids = [f"s{i}" for i in range(64)]
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(1))
    for params, size in (("imagenet", 1), ("cifar10", 16)):
        full = corrupt(x, name, 5, seed=11, sample_ids=ids, params=params)
        parts = torch.cat([corrupt(x[i:i + size], name, 5, seed=11, sample_ids=ids[i:i + size], params=params)
                           for i in range(0, 64, size)])
        assert torch.equal(full, parts)
        shuffled = corrupt(x[perm], name, 5, seed=11, sample_ids=[ids[i] for i in perm], params=params)
        assert torch.equal(shuffled, full[perm])
        assert full.dtype == torch.uint8 and full.shape == x.shape


def test_cpu_pieces_change_nothing():
    """Invariant: corrupt() works through CPU batches in cache-sized pieces; pieces of 5 images (not a divisor of 16)
    give the same images as one draw and apply over the whole batch."""
    import dataclasses

    from imgclass.corruptions import base

    x = _images(16)
    ids = [f"s{i}" for i in range(16)]
    for name in CORRUPTIONS:
        whole = apply(x, name, 4, draw(x, name, 4, seed=2, sample_ids=ids))
        with base.REGISTRY.override(name, dataclasses.replace(base.REGISTRY[name], chunk=5 * x[0].numel())):
            assert torch.equal(corrupt(x, name, 4, seed=2, sample_ids=ids), whole), name


def test_cpu_kernels_equal_the_tensor_path(monkeypatch):
    """Invariant: with the numba kernels (the CPU default) every corruption gives what the tensor code (the path
    on every other device) gives, with one thread or two, however the work splits (parts of the usual size, and
    parts of a few microseconds' work, which cut images and rows at odd positions): bit for bit, but for the
    Gaussian filters' users, whose direct correlation and filter matrices agree to rounding (within 1 level, and
    on all but a few values in 10,000)."""
    from imgclass.corruptions import kernels

    filtered = {"gaussian_blur", "glass_blur", "spatter", "elastic_transform"}
    g = torch.Generator().manual_seed(3)
    threads = torch.get_num_threads()
    try:
        for shape in [(1, 3, 224, 224), (2, 3, 99, 101), (3, 3, 37, 53)]:
            x = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
            ids = [f"t{i}" for i in range(len(x))]
            for n_threads, part_ns in ((1, None), (2, None), (2, 2_000)):  # 2 us: parts far smaller than usual
                torch.set_num_threads(n_threads)
                if part_ns:
                    monkeypatch.setattr(kernels, "_PART_NS", part_ns)
                for name in CORRUPTIONS:
                    for params, s in (("imagenet", 2), ("cifar10", 5)):
                        assert kernels.HAVE_NUMBA
                        fast = corrupt(x, name, s, seed=4, sample_ids=ids, params=params)
                        with monkeypatch.context() as m:
                            m.setattr(kernels, "HAVE_NUMBA", False)
                            twin = corrupt(x, name, s, seed=4, sample_ids=ids, params=params)
                        what = (name, shape, n_threads, part_ns, params)
                        if name not in filtered:
                            assert torch.equal(fast, twin), what
                        else:
                            d = (fast.int() - twin.int()).abs()
                            assert d.max() <= 1 and (d > 0).float().mean() < 3e-4, what
    finally:
        torch.set_num_threads(threads)


def test_corrupt_called_from_the_kernels_own_thread_pool_neither_deadlocks_nor_changes():
    """Invariant: corrupt() run inside a thread of the pool its kernels use (one worker) gives the same images as
    from the main thread, in time (it runs serially there instead of waiting on the pool)."""
    from imgclass.corruptions.kernels import pool

    x = torch.randint(0, 256, (4, 3, 224, 224), generator=torch.Generator().manual_seed(8), dtype=torch.uint8)
    for name in ("gaussian_noise", "jpeg_compression", "spatter"):
        here = corrupt(x, name, 2, seed=1, sample_ids=list(range(4)))
        there = pool(1).submit(corrupt, x, name, 2, seed=1, sample_ids=list(range(4))).result(timeout=120)
        assert torch.equal(here, there), name


def test_alias_table_kernel_equals_its_python_loop(monkeypatch):
    """Invariant: the numba construction of the noises' alias tables (Vose's method) gives the Python loop's
    thresholds and aliases exactly, for every noise at the mildest and strongest severity of both parameter sets."""
    from imgclass.corruptions import get_params, kernels, noise

    for params in ("imagenet", "cifar10"):
        for name in ("gaussian_noise", "speckle_noise", "shot_noise"):
            for s in (1, 5):
                c = float(get_params(name, s, params))
                prob = noise.poisson_levels(c) if name == "shot_noise" else \
                    noise.gaussian_levels(c, name == "speckle_noise")
                fast = noise.alias_table(prob)
                with monkeypatch.context() as m:
                    m.setattr(kernels, "HAVE_NUMBA", False)
                    loop = noise.alias_table(prob)
                assert all(np.array_equal(a, b) for a, b in zip(fast, loop)), (name, params, s)


def test_motion_blur_kernel_equals_its_tensor_twin():
    """Invariant: the CPU kernel of the motion blur (motion_blur and snow) equals the tensor code bit for bit, for
    walks that stay inside the image and walks that leave it (8 px high images, radius 20), one thread or two; the
    snow's top-left crop equals that corner of the whole result."""
    from imgclass.corruptions.base import motion_blur, motion_blur_tensor, motion_taps

    g = torch.Generator().manual_seed(5)
    threads = torch.get_num_threads()
    try:
        for shape, radius, sigma, dtype in [((3, 3, 61, 47), 15, 5.0, torch.float32),
                                            ((2, 1, 8, 90), 20, 15.0, torch.float64),
                                            ((1, 3, 224, 224), 10, 3.0, torch.float32)]:
            x = torch.rand(shape, generator=g, dtype=dtype) * 255
            angles = (torch.rand(shape[0], generator=g) * 90 - 45).tolist()
            taps = [motion_taps(radius, sigma, a, *shape[-2:]) for a in angles]
            for n_threads in (1, 2):
                torch.set_num_threads(n_threads)
                full = motion_blur(x, radius, sigma, angles)
                assert torch.equal(full, motion_blur_tensor(x, taps)), shape
                corner = (shape[2] // 3, shape[3] // 2)
                assert torch.equal(motion_blur(x, radius, sigma, angles, crop=corner),
                                   full[..., :corner[0], :corner[1]]), shape
                assert torch.equal(motion_blur_tensor(x, taps, corner), full[..., :corner[0], :corner[1]]), shape
    finally:
        torch.set_num_threads(threads)


def test_separable_filter_kernel_equals_the_filter_matrices():
    """Invariant: the CPU kernel of the separable filters (a direct correlation) equals the dense filter matrices
    of the other devices to rounding, in float32 and float64, for the three border rules, one axis or both, and
    kernels wider than the image."""
    from imgclass.corruptions.base import filter_matrix, gaussian_kernel1d, separable_filter

    g = torch.Generator().manual_seed(6)
    for dtype, tol in ((torch.float64, 1e-14), (torch.float32, 3e-6)):
        x = torch.rand(2, 3, 37, 53, generator=g, dtype=dtype)
        for mode in ("nearest", "reflect", "mirror"):
            for sy, sx in ((1.0, 2.0), (3.0, 0.0), (0.0, 0.5), (15.0, 15.0)):
                ky = gaussian_kernel1d(sy) if sy else None
                kx = gaussian_kernel1d(sx) if sx else None
                dense = x
                if ky is not None:
                    dense = filter_matrix(37, ky, mode, dtype=dtype) @ dense
                if kx is not None:
                    dense = dense @ filter_matrix(53, kx, mode, dtype=dtype).T
                assert (separable_filter(x, ky, kx, mode) - dense).abs().max() < tol, (dtype, mode, sy, sx)


def test_seed_and_sample_id_change_the_random_draw_only():
    """Invariant: random corruptions change with the seed or the sample id, deterministic ones do not."""
    x = _images(2)
    x = torch.cat([x[:1], x[:1]])  # the same image under two ids
    for name in CORRUPTIONS:
        a = corrupt(x, name, 3, seed=0, sample_ids=["a", "b"])
        b = corrupt(x, name, 3, seed=1, sample_ids=["a", "b"])
        if name in RANDOM:
            assert not torch.equal(a, b), name
            assert not torch.equal(a[0], a[1]), name
        else:
            assert torch.equal(a, b) and torch.equal(a[0], a[1]), name
    int_id = corrupt(x[:1], "gaussian_noise", 3, seed=0, sample_ids=[5])
    assert not torch.equal(int_id, corrupt(x[:1], "gaussian_noise", 3, seed=0, sample_ids=["5"]))


def test_severity_increases_the_damage():
    """Invariant of the ImageNet-C design: on average, severity 5 moves the image further from the clean one than
    severity 1. (Not for the CIFAR generator's elastic transform: its severity 1 is a large affine jitter.)"""
    x = _images(4, 48)
    for params in ("imagenet", "cifar10"):
        for name in CORRUPTIONS:
            if params == "cifar10" and name == "elastic_transform":
                continue
            mad = [float((corrupt(x, name, s, seed=0, sample_ids=list(range(4)), params=params).float()
                          - x.float()).abs().mean()) for s in (1, 5)]
            assert mad[1] > mad[0], (params, name, mad)


def test_glass_blur_pixel_walk_equals_the_sequential_loop():
    """The pointer-jumping shuffle against the reference's loop written out (x[h, w] = x[h', w'] on views)."""
    from imgclass.corruptions.blur import glass_sources

    h, w, d, iters = 13, 17, 2, 3
    g = torch.Generator().manual_seed(0)
    off = torch.randint(-d, d, (2, iters, h - 2 * d, w - 2 * d, 2), generator=g)
    src = glass_sources(off, h, w, d)
    for n in range(2):
        img = np.arange(h * w).reshape(h, w)
        for it in range(iters):
            for hh in range(h - d, d, -1):
                for ww in range(w - d, d, -1):
                    dx, dy = off[n, it, hh - d - 1, ww - d - 1].tolist()
                    img[hh, ww] = img[hh + dy, ww + dx]
        np.testing.assert_array_equal(src[n].numpy(), img.ravel())


def test_unknown_corruption_names_get_the_registrys_message():
    """Reference: the corruption registry (``imgclass.registry.Registry``): corrupt(), draw(), get_params() and the
    probe's corruption list answer an unknown name with exactly its message (close matches, the full list); the
    probe adds its group names."""
    from imgclass.corruptions import get_params
    from imgclass.corruptions.base import REGISTRY
    from imgclass.probes.corruptions import corruption_names

    with pytest.raises(UnknownNameError) as want:
        REGISTRY["fogg"]
    assert "did you mean 'fog'?" in str(want.value) and "known corruptions: brightness, contrast" in str(want.value)
    x = _images(2)
    for call in (lambda: corrupt(x, "fogg", 1, seed=0, sample_ids=[0, 1]),
                 lambda: corrupt(x[:0], "fogg", 1, seed=0, sample_ids=[]),
                 lambda: draw(x, "fogg", 1, seed=0, sample_ids=[0, 1]),
                 lambda: get_params("fogg", 1, "cifar10")):
        with pytest.raises(UnknownNameError) as got:
            call()
        assert str(got.value) == str(want.value)
    with pytest.raises(UnknownNameError) as got:
        corruption_names("contrast, fogg")
    assert str(got.value) == f"{want.value}; or a group: all, common, extra"
    with pytest.raises(UsageError, match="no corruptions given"):
        corruption_names(" , ")
    assert corruption_names("fog, contrast") == ("fog", "contrast") and corruption_names("extra") == EXTRA


def test_bad_input_gets_a_clear_error():
    x = _images(2)
    with pytest.raises(TypeError, match="uint8"):
        corrupt(x.float(), "fog", 1, seed=0, sample_ids=[0, 1])
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        corrupt(x[:, :1], "fog", 1, seed=0, sample_ids=[0, 1])
    with pytest.raises(UnknownNameError, match="unknown corruption 'rain'; known corruptions: brightness, "):
        corrupt(x, "rain", 1, seed=0, sample_ids=[0, 1])
    with pytest.raises(ValueError, match="1..5"):
        corrupt(x, "fog", 6, seed=0, sample_ids=[0, 1])
    with pytest.raises(ValueError, match="cifar10"):
        corrupt(x, "fog", 1, seed=0, sample_ids=[0, 1], params="tiny")
    with pytest.raises(ValueError, match="2 images"):
        corrupt(x, "fog", 1, seed=0, sample_ids=[0])
    with pytest.raises(ValueError, match="at least 8x8"):
        corrupt(x[..., :4, :4], "fog", 1, seed=0, sample_ids=[0, 1])
    assert corrupt(x[:0], "fog", 1, seed=0, sample_ids=[]).shape == (0, 3, 32, 32)


def _without_imagecorruptions(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "imagecorruptions" else real(n, *a))


def _clear_frost_caches():
    from imgclass.corruptions import weather

    weather._frost_resized.cache_clear()
    weather._frost_texture.cache_clear()


@pytest.fixture
def fresh_frost():
    _clear_frost_caches()
    yield
    _clear_frost_caches()


def test_frost_without_the_textures_names_the_package_and_the_mirror(monkeypatch, tmp_path, fresh_frost):
    import dataclasses

    from imgclass.assets import ASSETS

    _without_imagecorruptions(monkeypatch)
    monkeypatch.setenv("IMGCLASS_MIRROR", str(tmp_path / "empty-mirror"))
    monkeypatch.setenv("IMGCLASS_HOME", str(tmp_path / "home"))
    with contextlib.ExitStack() as stack:
        for i in range(1, 6):  # no download either
            stack.enter_context(ASSETS.override(f"frost-{i}", dataclasses.replace(ASSETS[f"frost-{i}"], url=None)))
        with pytest.raises(RuntimeError, match="pip install imagecorruptions.*IMGCLASS_MIRROR"):
            corrupt(_images(1), "frost", 1, seed=0, sample_ids=[0])


def test_frost_textures_from_the_asset_layer_equal_the_package_ones(monkeypatch, tmp_path, fresh_frost):
    """Reference: the same corruption with the textures of the installed imagecorruptions package."""
    import shutil

    from imgclass.corruptions.weather import FROST_FILES, frost_dir

    x = _images(4)
    want = [corrupt(x, "frost", s, seed=3, sample_ids=[0, 1, 2, 3]) for s in (1, 5)]
    mirror = tmp_path / "mirror"
    (mirror / "corruptions" / "frost").mkdir(parents=True)
    for f in FROST_FILES:
        shutil.copy(frost_dir() / f, mirror / "corruptions" / "frost" / f)
    _without_imagecorruptions(monkeypatch)
    monkeypatch.setenv("IMGCLASS_MIRROR", str(mirror))
    monkeypatch.setenv("IMGCLASS_HOME", str(tmp_path / "home"))
    _clear_frost_caches()  # the textures read above came from the package
    got = [corrupt(x, "frost", s, seed=3, sample_ids=[0, 1, 2, 3]) for s in (1, 5)]
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_draw_then_apply_is_corrupt():
    x = _images(3)
    for name in ("snow", "glass_blur", "contrast"):
        d = draw(x, name, 2, seed=4, sample_ids=[0, 1, 2])
        assert torch.equal(apply(x, name, 2, d), corrupt(x, name, 2, seed=4, sample_ids=[0, 1, 2]))


# ---------------------------------------------------------------------------------------------------------
# imgclass corrupt


def _run_cli(*args) -> int:
    from imgclass.cli import main

    return main(["corrupt", *args])


def test_corrupt_command_on_a_plain_folder_keeps_names(tmp_path, capsys):
    """Output = corrupt() of the decoded file, seeded by its relative path, saved as PNG under the same name."""
    src = tmp_path / "in"
    (src / "deep" / "er").mkdir(parents=True)
    arrays = {"a.jpg": _images(1, 40, 1)[0], "deep/er/b.png": _images(1, 40, 2)[0], "c.png": _images(1, 24, 3)[0]}
    for rel, t in arrays.items():
        Image.fromarray(t.permute(1, 2, 0).numpy()).save(src / rel, quality=95)
    assert _run_cli(str(src), "--corruption", "snow", "--severity", "3", "--seed", "5", "--out",
                    str(tmp_path / "o"), "--quiet", "--params", "imagenet") == 0
    for rel in arrays:
        decoded = torch.from_numpy(np.array(Image.open(src / rel).convert("RGB"))).permute(2, 0, 1)[None]
        want = corrupt(decoded, "snow", 3, seed=5, sample_ids=[rel])[0].permute(1, 2, 0).numpy()
        out = tmp_path / "o" / rel.rsplit(".", 1)[0]
        np.testing.assert_array_equal(np.array(Image.open(f"{out}.png")), want)
    assert _run_cli(str(src), "--corruption", "all", "--severity", "all", "--out", str(tmp_path / "all"), "--quiet",
                    "--params", "cifar10") == 0
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == sorted(CORRUPTIONS)
    assert sorted(p.name for p in (tmp_path / "all" / "fog").iterdir()) == ["1", "2", "3", "4", "5"]
    assert (tmp_path / "all" / "fog" / "4" / "deep" / "er" / "b.png").is_file()
    assert _run_cli(str(src), "--corruption", "rain", "--severity", "1", "--out", str(tmp_path / "x")) == 2
    assert "known corruptions: brightness" in capsys.readouterr().err


def test_corrupt_command_on_a_dataset_spec(tmp_path):
    imgs = _images(5, 32, 7).permute(0, 2, 3, 1).numpy()
    np.savez(tmp_path / "d.npz", images=imgs, labels=np.arange(5) % 2)
    assert _run_cli(f"npz:{tmp_path / 'd.npz'}", "--corruption", "fog", "--severity", "2", "--out",
                    str(tmp_path / "o"), "--quiet") == 0
    files = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert len(files) == 5 and all(f.endswith(".png") for f in files)


# ---------------------------------------------------------------------------------------------------------
# the corruptions probe


def _tiny_data() -> ArrayDataset:
    return ArrayDataset(_images(12, 32, 9).permute(0, 2, 3, 1).numpy(), np.arange(12) % 3,
                        LabelSpace.from_names(["a", "b", "c"]), spec="tiny")


def _tiny_run(tmp_path, name="run", **params):
    res = evaluate(tiny_classifier(["a", "b", "c"], size=32), _tiny_data(), probes=["corruptions"],
                   probe_params={"corruptions": params}, out=tmp_path / name, progress=False, workers=0, batch_size=5)
    return res["probes"]["corruptions"]


def test_probe_decodes_each_image_once():
    """All corruptions x severities of a batch come from one decoded copy (plus one decode for the example grid)."""
    from imgclass.engine import Engine
    from imgclass.probes import ProbeContext, get_probe

    clf = tiny_classifier(["a", "b", "c"], size=32)
    ds = _tiny_data()
    loads = []
    original = ds.load
    ds.load = lambda i: (loads.append(i), original(i))[1]
    ctx = ProbeContext(clf, ds, Engine(clf, batch_size=5, workers=0, device="cpu", progress=False))
    r = get_probe("corruptions", corruptions="fog,contrast", severities="2,4").run(ctx)
    assert len(r["accuracy"]) == 2 and len(loads) == 12 + 1 and sorted(set(loads)) == list(range(12))


_BUILT_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from numba.core.dispatcher import Dispatcher
from helpers import tiny_classifier
from imgclass.corruptions import blur, blur_kernels, digital_kernels, noise, noise_kernels, stream, weather
from imgclass.corruptions import weather_kernels
from imgclass.data.base import ArrayDataset
from imgclass.data.labels import LabelSpace
from imgclass.engine import Engine
from imgclass.probes import ProbeContext, get_probe

tables, calls = [], []
levels = noise.gaussian_levels
noise.gaussian_levels = lambda c, speckle: (tables.append(c), levels(c, speckle))[1]
logits = Engine.logits
Engine.logits = lambda self, x: (calls.append(len(x)), logits(self, x))[1]
rng = np.random.default_rng(0)
ds = ArrayDataset(rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8), np.arange(10) % 3,
                  LabelSpace.from_names(["a", "b", "c"]), spec="tiny")
clf = tiny_classifier(["a", "b", "c"], size=32)
ctx = ProbeContext(clf, ds, Engine(clf, batch_size=128, workers=0, device="cpu", progress=False))
r = get_probe("corruptions", corruptions="gaussian_noise,contrast", severities="1,5").run(ctx)
compiled = sorted(f"{m.__name__.rsplit('.', 1)[1]}.{k}" for m in
                  (stream, noise_kernels, blur_kernels, weather_kernels, digital_kernels)
                  for k, v in vars(m).items() if isinstance(v, Dispatcher) and v.signatures)
print(json.dumps({"compiled": compiled, "tables": tables, "calls": calls, "n": r["n_evaluated"],
                  "frost": weather._frost_texture.cache_info().currsize,
                  "zoom": blur._zoom_operator.cache_info().currsize,
                  "scipy_stats": "scipy.stats" in sys.modules, "seconds": time.perf_counter() - t0}))
"""


def test_probe_run_builds_only_what_its_corruptions_use():
    """Invariant (the fixed cost of a short run): a fresh 10-image corruptions-probe run of gaussian noise and
    contrast at severities 1 and 5 compiles (or loads from numba's cache) only those two corruptions' kernels,
    builds the alias tables of the two noise severities it runs (imagecorruptions' CIFAR constants 0.04 and
    0.10) and no other, loads no frost texture, builds no zoom operator, does not import scipy.stats, and calls
    the model once for the clean images and their four variants together (50 images, under one batch). Wall
    time well under two minutes, a cold numba cache included."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    tests = str(Path(__file__).parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _BUILT_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(done.stdout.strip().splitlines()[-1])
    entry = {"noise_kernels._alias_rows", "noise_kernels._sample_table", "digital_kernels._contrast"}
    helpers = {"digital_kernels._plane_sum", "digital_kernels._plane_contrast"}  # compiled with _contrast
    assert entry <= set(r["compiled"]) <= entry | helpers, r["compiled"]
    assert r["tables"] == [0.04, 0.10], r["tables"]
    assert r["frost"] == 0 and r["zoom"] == 0 and not r["scipy_stats"]
    assert r["n"] == 10 and r["calls"] == [50], r["calls"]
    assert r["seconds"] < 120, r["seconds"]


def test_probe_results_and_report(tmp_path):
    r = _tiny_run(tmp_path, corruptions="gaussian_noise,contrast,frost", severities="1,5")
    assert set(r["accuracy"]) == {"gaussian_noise", "contrast", "frost"}
    assert set(r["accuracy"]["contrast"]) == {"1", "5"}
    cells = [a for c in r["accuracy"].values() for a in c.values()]
    assert r["mean_accuracy"] == pytest.approx(np.mean(cells))
    assert r["parameter_set"] == "cifar10" and r["mce_normalization"] == "none"
    assert r["mce"] == pytest.approx(1 - r["mean_accuracy"])
    assert r["examples"]["rows"] == ["gaussian_noise", "contrast", "frost"] and r["examples"]["jpeg_base64"]
    from imgclass.report.images import decode_base64_image

    assert decode_base64_image(r["examples"]["jpeg_base64"]).shape == (3 * 32, 3 * 32, 3)  # rows x (clean, 1, 5)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())["probes"]["corruptions"]
    assert saved["accuracy"] == r["accuracy"]
    html = (tmp_path / "run" / "report.html").read_text()
    assert "Common corruptions" in html and html.count("<img") == 2  # the accuracy plot and the example grid


def _fake_result(names, params, sevs=(1, 2, 3, 4, 5)) -> dict:
    """A corruptions result with made-up accuracies (for the report's layout only)."""
    from imgclass.probes.corruptions import CorruptionsProbe

    rng = np.random.default_rng(0)
    acc = {c: {str(s): float(rng.uniform(0.1, 0.9)) for s in sevs} for c in names}
    r = {"parameter_set": params, "corruptions": list(names), "severities": list(sevs), "n_evaluated": 10,
         "clean_accuracy": 0.95, "accuracy": acc, "error": {c: 1 - float(np.mean(list(a.values())))
                                                           for c, a in acc.items()}}
    r["mean_accuracy"] = float(np.mean([a for row in acc.values() for a in row.values()]))
    r["mean_error"] = 1 - r["mean_accuracy"]
    r.update(CorruptionsProbe._mce(r, names, sevs, params, COMMON))
    return r


def test_probe_report_plots_one_panel_per_family_and_says_why_ce_is_missing():
    """Invariants of the report: one panel per family run (noise, blur, weather, digital, extra), each corruption a
    line of its own colour starting at the clean accuracy, and in every panel the mean over all corruptions run
    (its values the mean of the table's cells per severity); the CE column never holds an empty cell: AlexNet's
    normalization (Hendrycks & Dietterich's ImageNet-C convention) gives a number for the 15 ImageNet-C
    corruptions at all five severities and a reason otherwise."""
    import matplotlib.pyplot as plt

    from imgclass.probes.corruptions import CorruptionsProbe

    names = ("gaussian_noise", "shot_noise", "frost", "contrast", "pixelate", "spatter")
    r = _fake_result(names, "imagenet")
    fig = CorruptionsProbe._plot(r)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["noise", "weather", "digital", "extra"]
    mean = [0.95] + [np.mean([r["accuracy"][c][str(s)] for c in names]) for s in range(1, 6)]
    for ax, members in zip(panels, [names[:2], names[2:3], names[3:5], names[5:]]):
        lines = {ln.get_label(): ln for ln in ax.get_lines()}
        assert set(lines) == {"mean (all)", *members}
        np.testing.assert_allclose(lines["mean (all)"].get_ydata(), mean)
        assert len({ln.get_color() for ln in lines.values()}) == len(lines)
        assert all(ln.get_ydata()[0] == 0.95 for ln in lines.values())
        assert [t.get_text() for t in ax.get_legend().get_texts()] == list(lines)
    plt.close(fig)
    head, rows = CorruptionsProbe._table(r)
    col = head.index("CE (AlexNet-normalized)")
    ce = {row[0]: row[col] for row in rows}
    assert ce["gaussian_noise"] == pytest.approx(r["error"]["gaussian_noise"] / 0.886428)
    assert ce["spatter"] == "n/a: not one of the 15 ImageNet-C corruptions"
    head, rows = CorruptionsProbe._table(_fake_result(names, "cifar10"))
    assert {row[head.index("CE (AlexNet-normalized)")] for row in rows} == \
        {"n/a: AlexNet normalization is an ImageNet-C convention"}
    head, rows = CorruptionsProbe._table(_fake_result(names, "imagenet", sevs=(1, 3)))
    assert rows[0][head.index("CE (AlexNet-normalized)")] == "n/a: needs all five severities"
    assert all(cell != "" and cell is not None for row in rows for cell in row)


def test_probe_accuracy_equals_direct_evaluation(tmp_path):
    """Reference: the model applied by hand to corrupt() of the same images with the same ids and seed."""
    r = _tiny_run(tmp_path, corruptions="motion_blur", severities=(2,), example_size=0)
    clf = tiny_classifier(["a", "b", "c"], size=32)
    x = _images(12, 32, 9)
    y = torch.as_tensor(np.arange(12) % 3)
    xc = corrupt(x, "motion_blur", 2, seed=0, sample_ids=[str(i) for i in range(12)], params="cifar10")
    with torch.no_grad():
        acc = float((clf(xc.float() / 255).argmax(1) == y).double().mean())
    assert r["accuracy"]["motion_blur"]["2"] == pytest.approx(acc)


def test_mce_is_one_for_alexnets_own_errors():
    """Reference: the published AlexNet table defines mCE = 100 % for AlexNet (Hendrycks & Dietterich 2019)."""
    from imgclass.probes.corruptions import ALEXNET_ERRORS, CorruptionsProbe

    r = {"error": dict(ALEXNET_ERRORS), "n_evaluated": 10, "mean_error": 0.8}
    out = CorruptionsProbe._mce(r, COMMON, (1, 2, 3, 4, 5), "imagenet", COMMON)
    assert out["mce"] == pytest.approx(1.0) and out["mce_note"] == ""
    assert all(v == pytest.approx(1.0) for v in out["ce"].values())
    half = {c: e / 2 for c, e in ALEXNET_ERRORS.items()}
    assert CorruptionsProbe._mce({**r, "error": half}, COMMON, (1, 2, 3, 4, 5), "imagenet", COMMON)["mce"] == \
        pytest.approx(0.5)
    assert CorruptionsProbe._mce(r, COMMON, (1, 3), "imagenet", COMMON)["mce"] is None


def test_relative_mce_against_itself_is_one(tmp_path):
    """Invariant: a run compared with itself as baseline has CE = relative CE = 1 for every corruption."""
    _tiny_run(tmp_path, "base", corruptions="gaussian_noise,pixelate", example_size=0)
    r = _tiny_run(tmp_path, "again", corruptions="gaussian_noise,pixelate", example_size=0,
                     baseline=str(tmp_path / "base" / "results.json"))
    b = r["baseline"]
    assert b["mce"] == pytest.approx(1.0)
    assert all(v is None or v == pytest.approx(1.0) for v in b["relative_ce"].values())
    with pytest.raises(FileNotFoundError):
        _tiny_run(tmp_path, "bad", corruptions="fog", baseline=str(tmp_path / "missing.json"))


@pytest.mark.slow
def test_cifar10_resnet20_degrades_like_cifar10c():
    """Reference: the CIFAR-10-C results of Hendrycks & Dietterich (ICLR 2019): accuracy falls with severity,
    noise and blur corruptions hurt most, brightness least (zoo:cifar10-resnet20 on a seeded subset of 100 lossless
    test images, 7,600 forward passes). On this subset the smallest gap between consecutive severities is 5.5
    points, between the noise/blur and the weather/digital families 3.3, between brightness and the next corruption
    5.6, for corruption seeds 0, 1 and 2 alike; on all 1,000 images the families read noise 0.50, blur 0.68,
    digital 0.73, weather 0.80, brightness 0.90."""
    mirror_file("cifar10-lossless/test-first1000.npz")
    mirror_file("models/akamaster-resnet-cifar10/resnet20-12fca82f.th")
    res = evaluate("zoo:cifar10-resnet20", "zoo:cifar10-lossless:test", probes=["corruptions"], limit=100,
                   probe_params={"corruptions": {"example_size": 0}}, progress=False, batch_size=100)
    r = res["probes"]["corruptions"]
    assert r["parameter_set"] == "cifar10" and r["corruptions"] == list(COMMON)
    by_sev = [r["clean_accuracy"]] + [np.mean([r["accuracy"][c][str(s)] for c in COMMON]) for s in range(1, 6)]
    assert all(a > b for a, b in zip(by_sev, by_sev[1:])), by_sev
    fam = {f: np.mean([np.mean(list(r["accuracy"][c].values())) for c in members])
           for f, members in {"noise": COMMON[0:3], "blur": COMMON[3:7], "weather": COMMON[7:11],
                              "digital": COMMON[11:15]}.items()}
    assert max(fam["noise"], fam["blur"]) < min(fam["weather"], fam["digital"]), fam
    mean_acc = {c: np.mean(list(r["accuracy"][c].values())) for c in COMMON}
    assert max(mean_acc, key=mean_acc.get) == "brightness", mean_acc
    assert 0.5 < r["mean_accuracy"] < 0.85  # ResNets lose 15-30 points on CIFAR-10-C
