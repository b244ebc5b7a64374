"""``imgclass corrupt``: the parameter set follows the image size as the probe's does and is named in the output;
``--limit`` picks the same seeded subset as ``eval --limit``; flat folders and unlabeled datasets work; the help
lists the corruptions it promises."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from imgclass.cli import main
from imgclass.corruptions import CORRUPTIONS, corrupt


def _write(folder, n, size, seed=0):
    g = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(g.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"img{i:02d}.png")


def _read(path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)[None]


@pytest.mark.parametrize("size,expected", [(32, "cifar10"), (96, "imagenet")])
def test_parameters_follow_the_image_size_and_are_named(tmp_path, capsys, size, expected):
    """Reference: corrupt() with the parameter set the probe would choose for a model of that input size (CIFAR-10-C
    up to 64 px); the command says which set it used."""
    src = tmp_path / "in"
    _write(src, 2, size)
    assert main(["corrupt", str(src), "--corruption", "contrast", "--severity", "5", "--out", str(tmp_path / "o"),
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert ("CIFAR-10-C parameters" if expected == "cifar10" else "ImageNet-C (imagecorruptions 1.1.2) parameters") \
        in out and "chosen by image size" in out
    for name in ("img00", "img01"):
        want = corrupt(_read(src / f"{name}.png"), "contrast", 5, seed=0, sample_ids=[f"{name}.png"], params=expected)
        assert torch.equal(_read(tmp_path / "o" / f"{name}.png"), want)


def test_limit_writes_a_seeded_subset_and_says_so(tmp_path, capsys):
    """Invariant: --limit N writes N images, the same N for the same seed (the eval --limit rule: a seeded random
    subset in dataset order), and the summary names the subset."""
    src = tmp_path / "in"
    _write(src, 12, 16)
    runs = []
    for k in range(2):
        out = tmp_path / f"o{k}"
        assert main(["corrupt", str(src), "--corruption", "fog", "--severity", "1", "--out", str(out), "--limit", "4",
                     "--seed", "3", "--quiet"]) == 0
        runs.append(sorted(p.name for p in out.iterdir()))
    assert len(runs[0]) == 4 and runs[0] == runs[1]
    expected = np.sort(np.random.default_rng(3).choice(12, size=4, replace=False))
    assert runs[0] == [f"img{i:02d}.png" for i in expected]
    assert "a seeded subset of 4 of 12" in capsys.readouterr().out


def test_flat_folder_spec_is_an_unlabeled_dataset(tmp_path):
    """A flat folder of images is a dataset without labels (every label -1, no classes); class sub-folders still
    make ImageFolder classes; labels=none makes any folder unlabeled."""
    from imgclass.data import load_dataset

    flat = tmp_path / "flat"
    _write(flat, 3, 8)
    ds = load_dataset(f"folder:{flat}")
    assert not ds.labeled and len(ds) == 3 and list(ds.labels) == [-1, -1, -1] and len(ds.classes) == 0
    assert ds.describe()["labeled"] is False
    nested = tmp_path / "nested"
    _write(nested / "cat", 2, 8)
    _write(nested / "dog", 1, 8)
    ds2 = load_dataset(f"folder:{nested}")
    assert ds2.labeled and list(ds2.classes.names) == ["cat", "dog"]
    ds3 = load_dataset(f"folder:{nested}?labels=none")
    assert not ds3.labeled and [ds3.sample_id(i) for i in range(3)] == ["cat/img00.png", "cat/img01.png",
                                                                        "dog/img00.png"]


def test_eval_on_unlabeled_data_is_a_usage_error(tmp_path, capsys):
    flat = tmp_path / "flat"
    _write(flat, 3, 32)
    assert main(["eval", "zoo:cifar10-resnet20", f"folder:{flat}", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "unlabeled" in err and "accuracy, calibration" in err and len(err.strip().splitlines()) == 1


def test_help_lists_every_corruption(capsys):
    with pytest.raises(SystemExit):
        main(["corrupt", "--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in CORRUPTIONS) and "severities: 1 (mildest) to 5" in out


def test_bad_inputs_are_one_line_usage_errors(tmp_path, capsys):
    src = tmp_path / "in"
    _write(src, 1, 16)
    for extra, words in [(["--corruption", "fogg", "--severity", "1"], "did you mean 'fog'"),
                         (["--corruption", "fog", "--severity", "6"], "--severity must be 1..5 or all"),
                         (["--corruption", "fog", "--severity", "1", "--limit", "0"], "--limit must be at least 1")]:
        assert main(["corrupt", str(src), *extra, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, err
