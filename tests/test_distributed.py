"""torchrun with 2 processes (gloo on CPU) gives exactly the figures of one process: every sample once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from imgclass.store import open_store

from conftest import ROOT, mirror_file
from helpers import rgb_image, save_png, write_bad_files


def _eval(args: list[str], out, nproc: int, store: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    cmd = launcher + ["-m", "imgclass", "eval", *args, "--out", str(out), "--quiet", "--workers", "0", "--store", store]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    return json.loads((out / "results.json").read_text())


@pytest.mark.distributed
@pytest.mark.parametrize("case", ["mirror", "folder-with-bad-files"])
def test_torchrun_two_processes_equal_one(tmp_path, case):
    if case == "mirror":
        mirror_file("cifar10-lossless/test-first1000.npz")
        args = ["zoo:cifar10-resnet20", "zoo:cifar10-lossless:test", "--limit", "700", "--batch-size", "64"]
    else:
        root = tmp_path / "data"
        for ci, cls in enumerate(["cat", "dog", "ship"]):
            for j in range(7):
                save_png(rgb_image(ci * 10 + j), root / cls / f"{j}.png")
        write_bad_files(root / "dog")
        args = ["zoo:cifar10-resnet20", f"folder:{root}", "--batch-size", "4"]
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    one = _eval(args, tmp_path / "one", 1, store)
    two = _eval(args, tmp_path / "two", 2, store)
    assert two["settings"]["world_size"] == 2 and one["settings"]["world_size"] == 1
    assert one["probes"] == two["probes"]
    s1, s2 = np.load(tmp_path / "one" / "samples.npz"), np.load(tmp_path / "two" / "samples.npz")
    assert sorted(s1.files) == sorted(s2.files)
    for k in s1.files:  # per-sample outputs gathered from both ranks, in dataset order
        assert np.array_equal(s1[k], s2[k]), k
    with open_store(store) as st:  # one run per command: only rank 0 records
        runs = st.list()
    assert len(runs) == 2 and {Path(r.results_path).parent.name for r in runs} == {"one", "two"}
    n = one["probes"]["accuracy"]["n_evaluated"]
    assert n == (700 if case == "mirror" else 21)
    if case != "mirror":
        assert one["probes"]["accuracy"]["n_skipped"] == 4


@pytest.mark.distributed
def test_torchrun_ood_probe_gives_the_figures_of_one_process(tmp_path):
    """Reference: the single-process run. Every OOD detector (those fitted on training features too) and the
    selective-prediction numbers come out identical with two processes."""
    mirror_file("mnist/t10k-images-idx3-ubyte.gz")
    args = ["zoo:cifar10-resnet20", "zoo:cifar10-lossless:test", "--limit", "150", "--batch-size", "32",
            "--probes", "ood", "--ood-data", "zoo:mnist:test@far,synthetic:blobs?n=70@far",
            "--set", "ood.ood_limit=90", "--set", "ood.fit_limit=300",
            "--set", "ood.detectors=msp,energy,gen,mahalanobis,knn,vim,react,ash,odin"]
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    one = _eval(args, tmp_path / "one", 1, store)
    two = _eval(args, tmp_path / "two", 2, store)
    assert two["settings"]["world_size"] == 2
    assert one["probes"]["ood"] == two["probes"]["ood"]
