"""``timm:NAME`` without a network: weights from the local cache without a request, or at once a clear error (not a
minute of retries). The hub endpoint is pointed at a closed local port so the test means the same everywhere."""

from __future__ import annotations

import os
import subprocess
import sys
import time

MODEL = "test_resnet.r160_in1k"  # timm's tiny test model (0.5 M parameters), published on the hub


def _env(tmp_path) -> dict:
    env = dict(os.environ)
    env.update(HF_HUB_CACHE=str(tmp_path / "hub"), HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT="http://127.0.0.1:9",
               TORCH_HOME=str(tmp_path / "torch"))
    env.pop("HF_HUB_OFFLINE", None)
    return env


def test_uncached_weights_fail_fast_with_the_way_out(tmp_path):
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "imgclass", "eval", f"timm:{MODEL}", "digits", "--quiet"],
                       env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    took = time.perf_counter() - t0
    assert p.returncode == 1, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot be reached and the weights are not in the local cache" in lines[0]
    assert "?pretrained=false" in lines[0] and "?checkpoint=FILE" in lines[0]
    assert took < 45, f"{took:.0f} s: the error should not wait for the hub's retries"


def test_cached_weights_load_offline_and_equal_the_file(tmp_path):
    """Reference: the state dict written into the hub cache, loaded by timm into a fresh model (the logits of both)."""
    env = _env(tmp_path)
    code = f"""
import torch, timm
from pathlib import Path
from safetensors.torch import save_file
ref = timm.create_model("{MODEL}", pretrained=False).eval()
torch.manual_seed(0)
with torch.no_grad():
    for p in ref.parameters():
        p.normal_(0, 0.05)
snap = Path("{tmp_path}") / "hub" / "models--timm--{MODEL}" / "snapshots" / ("0" * 40)
snap.mkdir(parents=True)
(snap.parent.parent / "refs").mkdir()
(snap.parent.parent / "refs" / "main").write_text("0" * 40)
save_file({{k: v.contiguous() for k, v in ref.state_dict().items()}}, str(snap / "model.safetensors"))
import imgclass
clf = imgclass.load_model("timm:{MODEL}")
x = torch.rand(2, *clf.input_size, generator=torch.Generator().manual_seed(1))
with torch.no_grad():
    got = clf(x)
    want = ref((x - clf.mean) / clf.std)
print("MAXDIFF", float((got - want).abs().max()))
"""
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    diff = float(p.stdout.split("MAXDIFF")[1])
    assert diff < 1e-5
