"""Corruptions on a GPU (run on demand, not in CI): throughput of every corruption, and determinism there.

Throughput in images per second (all five severities, ImageNet parameters) at 224x224 (CIFAR-10 test images
upsampled bicubically) and 32x32, batches of ``--batch``; then the check that
a seed gives bit-identical images at batch size 1 and 64 on the GPU too, and how far the GPU's deterministic
corruptions are from the CPU's (the random ones draw from the device's generator, so they differ by design).

    IMGCLASS_MIRROR=... python benchmarks/cuda_corruptions.py [--batch 256] [--images 512]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from imgclass.assets import fetch  # noqa: E402
from imgclass.corruptions import CORRUPTIONS, RANDOM, SEVERITIES, corrupt  # noqa: E402


def images(n: int, size: int) -> torch.Tensor:
    with np.load(fetch("cifar10-lossless-test1000")) as z:
        x = torch.from_numpy(np.ascontiguousarray(z["images"][:n])).permute(0, 3, 1, 2).contiguous()
    if size != 32:
        x = torch.nn.functional.interpolate(x.float(), size=(size, size), mode="bicubic", align_corners=False)
        x = x.round().clamp(0, 255).to(torch.uint8)
    return x


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    dev = torch.device(a.device)
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu'}, "
          f"{a.images} images, batch {a.batch}, severities 1-5, imagenet parameters")
    for size in (224, 32):
        x = images(a.images, size).to(dev)
        ids = list(range(len(x)))
        print(f"\n{size}x{size}\n{'corruption':<20}{'img/s':>12}")
        for name in CORRUPTIONS:
            corrupt(x[:8], name, 3, seed=0, sample_ids=ids[:8])
            torch.cuda.synchronize(dev) if dev.type == "cuda" else None
            t0 = time.perf_counter()
            for i in range(0, len(x), a.batch):
                for s in SEVERITIES:
                    corrupt(x[i:i + a.batch], name, s, seed=0, sample_ids=ids[i:i + a.batch])
            torch.cuda.synchronize(dev) if dev.type == "cuda" else None
            print(f"{name:<20}{len(x) * len(SEVERITIES) / (time.perf_counter() - t0):>12.0f}", flush=True)
    print("\nbatch 1 vs 64 on the device (bit-identical?), and device vs CPU for the deterministic ones (32x32):")
    x = images(64, 32)
    ids = list(range(64))
    bad = []
    for name in CORRUPTIONS:
        for s in (1, 5):
            full = corrupt(x.to(dev), name, s, seed=7, sample_ids=ids).cpu()
            one = torch.cat([corrupt(x[i:i + 1].to(dev), name, s, seed=7, sample_ids=[i]).cpu() for i in range(64)])
            same = torch.equal(full, one)
            line = f"{name:<20} s{s}  batch==single {same}"
            if name not in RANDOM:
                d = (full.int() - corrupt(x, name, s, seed=7, sample_ids=ids).int()).abs()
                line += f"  vs CPU max |diff| {int(d.max())}, within 1 level {float((d <= 1).double().mean()):.4f}"
            print(line, flush=True)
            if not same:
                bad.append((name, s))
    print("NOT bit-identical:", bad if bad else "none")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
