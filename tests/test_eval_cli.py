"""End to end: `imgclass eval` writes results.json and a self-contained report; bad files are listed or fatal."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from imgclass.cli import main

from conftest import ROOT, mirror_file
from helpers import rgb_image, save_png, write_bad_files


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "-m", "imgclass", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


def test_eval_writes_results_and_report(tmp_path):
    mirror_file("cifar10-lossless/test-first1000.npz")
    out = tmp_path / "run"
    p = _run("eval", "zoo:cifar10-resnet20", "zoo:cifar10-lossless:test", "--probes", "accuracy,calibration",
             "--out", str(out), "--limit", "300", "--seed", "3", "--set", "calibration.n_bins=15", "--quiet")
    assert p.returncode == 0, p.stderr
    assert "top-1" in p.stdout and "ECE" in p.stdout
    r = json.loads((out / "results.json").read_text())
    assert r["schema_version"] == 2 and r["kind"] == "eval" and r["imgclass_version"]
    assert r["model"]["spec"] == "zoo:cifar10-resnet20" and r["data"]["spec"] == "zoo:cifar10-lossless:test"
    assert r["seed"] == 3 and r["data"]["subset"]["limit"] == 300
    assert r["probe_params"]["calibration"] == {"n_bins": 15, "fit_data": None, "holdout": 0.5}
    acc, cal = r["probes"]["accuracy"], r["probes"]["calibration"]
    for v in (acc["top1"], acc["top5"], cal["ece"], cal["ece_adaptive"]):
        assert 0 <= v <= 1
    assert acc["n_evaluated"] == 300 and acc["skipped"] == []
    assert cal["nll"] > 0 and cal["temperature"] > 0
    assert "human" in acc and "human" in cal  # CIFAR-10H soft labels on the lossless test images
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3  # per-class bars, confusion matrix, reliability diagram
    assert not re.search(r'(src|href)="(https?:)?//', html)  # self-contained
    for title in ("Accuracy", "Calibration", "Skipped files", "Reliability diagram"):
        assert title in html


def test_bad_files_are_listed_and_evaluation_completes(tmp_path):
    """Every kind of bad file is listed with path and reason; the good images are all evaluated."""
    root = tmp_path / "data"
    for ci, cls in enumerate(["cat", "dog"]):
        for j in range(4):
            save_png(rgb_image(ci * 10 + j), root / cls / f"{j}.png")
    expected = write_bad_files(root / "cat" / "bad")
    out = tmp_path / "run"
    rc = main(["eval", "zoo:cifar10-resnet20", f"folder:{root}", "--out", str(out), "--quiet", "--workers", "0"])
    assert rc == 0
    r = json.loads((out / "results.json").read_text())
    acc = r["probes"]["accuracy"]
    assert acc["n_evaluated"] == 8 and acc["n_skipped"] == len(expected)
    got = {Path(s["path"]).name: s["reason"] for s in acc["skipped"]}
    assert set(got) == set(expected)
    for name, words in expected.items():
        assert words in got[name], (name, got[name])
        assert any(str(root) in s["path"] for s in acc["skipped"])
    html = (out / "report.html").read_text()
    assert all(name in html for name in expected)


def test_on_error_fail_stops_with_the_file_name(tmp_path):
    root = tmp_path / "data"
    save_png(rgb_image(1), root / "cat" / "ok.png")
    (root / "dog").mkdir(parents=True)
    (root / "dog" / "broken.jpg").write_bytes(b"")
    p = _run("eval", "zoo:cifar10-resnet20", f"folder:{root}", "--on-error", "fail", "--quiet", "--workers", "0")
    assert p.returncode != 0
    assert "broken.jpg" in p.stderr and "empty" in p.stderr


def test_listing_commands_and_usage_errors(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "zoo:cifar10-resnet20" in out and "timm:" in out
    assert main(["datasets"]) == 0
    assert "zoo:cifar10-jpeg" in capsys.readouterr().out
    assert main(["assets"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"cifar10-resnet20-weights\s+(mirrored|cached|missing)", out)
    assert main(["probes"]) == 0
    assert "n_bins=15" in capsys.readouterr().out
    assert main(["eval", "nosuch:x", "digits"]) == 2
    assert "known schemes" in capsys.readouterr().err
    assert main(["eval", "zoo:cifar10-resnet20", "digits", "--probes", "nope"]) == 2
    assert "known probes" in capsys.readouterr().err


def test_label_mismatch_is_an_error_naming_classes(capsys):
    mirror_file("models/akamaster-resnet-cifar10/resnet20-12fca82f.th")
    assert main(["eval", "zoo:cifar10-resnet20", "digits", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "not among the model's 10 outputs" in err and "0" in err


@pytest.mark.slow
def test_readme_main_command_runs_as_written(tmp_path):
    """The README's second command, copied from the README itself, on the offline mirror."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```(?:bash|sh)\n(.*?)```", readme, re.S).group(1)
    cmd = next(line for line in block.splitlines() if "imgclass eval" in line)
    cmd = cmd.replace(".venv/bin/imgclass", f"{sys.executable} -m imgclass").replace("runs/demo", str(tmp_path / "demo"))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    p = subprocess.run(cmd, shell=True, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "demo" / "results.json").is_file() and (tmp_path / "demo" / "report.html").is_file()


def test_set_parses_literals_and_shell_booleans():
    """Invariant: ``--set`` values are Python literals, with true/false (any case) as booleans, not strings."""
    from imgclass.settings import parse_sets as _parse_sets

    got = _parse_sets(["adversarial.fast=false", "adversarial.per_sample=True", "calibration.n_bins=20",
                       "adversarial.eps=2/255", "tta.views=FALSE"])
    assert got == {"adversarial": {"fast": False, "per_sample": True, "eps": "2/255"},
                   "calibration": {"n_bins": 20}, "tta": {"views": False}}
    with pytest.raises(ValueError, match="PROBE.PARAM=VALUE"):
        _parse_sets(["fast=false"])


def test_results_record_the_precision_and_the_inference_copy(tmp_path):
    """Reference: the engine's own rule (``resolve_precision``: bfloat16 where the CPU computes it natively) and the
    ResNet-20 itself (19 batch norms). By default the logits come from the folded copy, and results.json says so
    with its largest logit difference on the check batch; ``--no-fast`` predicts with the model as loaded."""
    import torch

    from imgclass.engine import resolve_precision

    mirror_file("cifar10-lossless/test-first1000.npz")
    args = ["eval", "zoo:cifar10-resnet20", "zoo:cifar10-lossless:test", "--limit", "40", "--quiet", "--workers", "0"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    s = json.loads((tmp_path / "a" / "results.json").read_text())["settings"]
    assert s["precision"] == "float32" and s["amp"] is False
    ic = s["inference_copy"]
    assert ic["used"] and ic["folded"] and ic["channels_last"] and ic["batch_norms"] == 19
    assert ic["batch_norms_left"] == 0 and 0 <= ic["max_logit_diff"] < 1e-3
    assert main([*args, "--out", str(tmp_path / "b"), "--no-fast", "--amp"]) == 0
    r = json.loads((tmp_path / "b" / "results.json").read_text())
    precision, reason = resolve_precision(torch.device("cpu"), True)
    assert r["settings"]["precision"] == precision and r["settings"]["precision_reason"] == reason
    assert r["settings"]["inference_copy"] == {"used": False, "reason": "turned off (fast=False, --no-fast)"}
    assert (precision == "float32") == any(w.startswith("--amp: computed in float32") for w in r["warnings"])
