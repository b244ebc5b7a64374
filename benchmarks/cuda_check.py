"""CUDA paths of the evaluation engine, on a machine with a GPU (run on demand, not in CI).

Checks that CUDA fp32 (channels_last) and AMP give the CPU's figures, that torchrun with NCCL joins
and gathers, and prints GPU throughput against timm's loader loop on the same model and images.

    IMGCLASS_MIRROR=... python benchmarks/cuda_check.py [--skip-throughput]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from imgclass import evaluate, load_dataset, load_model  # noqa: E402
from imgclass.assets import fetch  # noqa: E402
from imgclass.engine import Engine  # noqa: E402


def figures(r: dict) -> dict:
    a, c = r["probes"]["accuracy"], r["probes"]["calibration"]
    return {"top1": a["top1"], "n": a["n_evaluated"], "ece": c["ece"], "nll": c["nll"]}


def check_numerics() -> None:
    ds, model = "zoo:cifar10-lossless:test", "zoo:cifar10-resnet20"
    cpu = figures(evaluate(model, ds, device="cpu", progress=False))
    f32 = figures(evaluate(model, ds, device="cuda", progress=False))
    amp = figures(evaluate(model, ds, device="cuda", amp=True, progress=False))
    print(f"cpu  {cpu}\ncuda {f32}\namp  {amp}")
    clf = load_model(model)
    x8 = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        ref = clf(x8.float() / 255)
        e = Engine(clf, device="cuda", progress=False)  # moves the classifier to the GPU, channels_last
        got = e.logits(e.to_float(x8.cuda())).cpu()
    print(f"max |logit cuda(channels_last) - cpu| = {(got - ref).abs().max().item():.2e}")
    assert abs(f32["top1"] - cpu["top1"]) <= 0.002 and abs(amp["top1"] - cpu["top1"]) <= 0.003
    assert f32["n"] == amp["n"] == cpu["n"] == 1000


def check_torchrun_nccl(tmp: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    args = ["-m", "imgclass", "eval", "zoo:cifar10-resnet20", "zoo:cifar10-lossless:test", "--device", "cuda",
            "--quiet", "--batch-size", "64"]
    one = subprocess.run([sys.executable, *args, "--out", str(tmp / "one")], env=env, capture_output=True, text=True)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                          *args, "--out", str(tmp / "tr")], env=env, capture_output=True, text=True)
    assert one.returncode == 0 and two.returncode == 0, (one.stderr[-2000:], two.stderr[-2000:])
    a = json.loads((tmp / "one" / "results.json").read_text())
    b = json.loads((tmp / "tr" / "results.json").read_text())
    print(f"torchrun (NCCL, 1 GPU): figures equal to one process: {a['probes'] == b['probes']}")


def throughput(tmp: Path, workers: int) -> None:
    from timm.data import create_dataset, create_loader

    with tarfile.open(fetch("imagenet-samples")) as tf:
        tf.extractall(tmp / "inet", filter="data")
    src = tmp / "inet" / "imagenet-samples"
    folder = tmp / "inet-x5"  # 5,000 images (each sample 5 times), so worker start-up does not dominate
    for c in os.listdir(src):
        (folder / c).mkdir(parents=True)
        for f in os.listdir(src / c):
            for k in range(5):
                os.symlink(src / c / f, folder / c / f"{k}_{f}")
    for amp in (False, True):
        clf = load_model("timm:resnet50?pretrained=false")
        cfg = clf.config
        ds = create_dataset("", root=str(folder))
        loader = create_loader(ds, input_size=cfg.input_size, batch_size=128, use_prefetcher=True,
                               interpolation=cfg.interpolation, mean=cfg.mean, std=cfg.std, num_workers=workers,
                               crop_pct=cfg.crop_pct, device=torch.device("cuda"))
        model = clf.model.cuda().eval().to(memory_format=torch.channels_last)
        rates = {}
        for rep in range(2):
            t0, n = time.perf_counter(), 0
            with torch.no_grad(), torch.autocast("cuda", enabled=amp):
                for x, _ in loader:
                    model(x.contiguous(memory_format=torch.channels_last))
                    n += len(x)
            torch.cuda.synchronize()
            rates["timm"] = n / (time.perf_counter() - t0)
            eng = Engine(clf, batch_size=128, workers=workers, device="cuda", amp=amp, progress=False)
            t0 = time.perf_counter()
            p = eng.predict(load_dataset(f"folder:{folder}"))
            torch.cuda.synchronize()
            rates["imgclass"] = len(p.labels) / (time.perf_counter() - t0)
        print(f"resnet50 amp={amp} workers={workers}: imgclass {rates['imgclass']:.0f} img/s, timm {rates['timm']:.0f} "
              f"img/s, ratio {rates['imgclass'] / rates['timm']:.2f}x (second of two runs)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--workers", type=int, default=8)
    args = ap.parse_args()
    print(torch.__version__, torch.cuda.get_device_name(0))
    check_numerics()
    with tempfile.TemporaryDirectory() as tmp:
        check_torchrun_nccl(Path(tmp))
        if not args.skip_throughput:
            throughput(Path(tmp), args.workers)


if __name__ == "__main__":
    main()
