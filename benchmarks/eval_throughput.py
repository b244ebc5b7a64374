"""Evaluation throughput of imgclass against timm's own evaluation pipeline, printed as ratios.

timm's side is what its ``validate.py`` does: ``create_dataset`` + ``create_loader`` (PIL resize/crop,
ToTensor + Normalize in the workers when not prefetching on CUDA) and a plain ``model(x)`` loop under
``torch.no_grad``. imgclass's side is ``Engine.predict`` (uint8 from the workers, float and
normalization inside the Classifier). Same model object, images, batch size and worker count; the two
are run alternately and the median of the repeats is compared.

    python benchmarks/eval_throughput.py                # both cases, 3 repeats
    python benchmarks/eval_throughput.py --case cifar --repeats 5 --workers 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from imgclass import load_dataset, load_model  # noqa: E402
from imgclass.assets import fetch  # noqa: E402
from imgclass.engine import Engine  # noqa: E402


def extract(asset: str, dest: Path) -> Path:
    with tarfile.open(fetch(asset)) as tf:
        tf.extractall(dest, filter="data")
    roots = [p for p in dest.iterdir() if p.is_dir()]
    return roots[0] if len(roots) == 1 else dest


def timm_pipeline(clf, folder: Path, batch_size: int, workers: int) -> float:
    from timm.data import create_dataset, create_loader

    cfg = clf.config
    ds = create_dataset("", root=str(folder), split="")
    loader = create_loader(ds, input_size=cfg.input_size, batch_size=batch_size, use_prefetcher=False,
                           interpolation=cfg.interpolation, mean=cfg.mean, std=cfg.std, num_workers=workers,
                           crop_pct=cfg.crop_pct, device=torch.device("cpu"))
    model = clf.model.eval()
    n = 0
    t0 = time.perf_counter()
    with torch.no_grad():
        for x, _ in loader:
            model(x)
            n += len(x)
    return n / (time.perf_counter() - t0)


def imgclass_pipeline(clf, folder: Path, batch_size: int, workers: int) -> float:
    ds = load_dataset(f"folder:{folder}")
    engine = Engine(clf, batch_size=batch_size, workers=workers, device="cpu", progress=False)
    t0 = time.perf_counter()
    p = engine.predict(ds)
    return len(p.labels) / (time.perf_counter() - t0)


CASES = {
    # name: (model spec, asset holding an ImageFolder tarball)
    "imagenet": ("timm:resnet18?pretrained=false", "imagenet-samples"),  # 1,000 images, 224 px
    "cifar": ("zoo:cifar10-resnet20", "cifar10-jpeg-test"),  # 10,000 images, 32 px
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", choices=[*CASES, "all"], default="all")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cases = list(CASES) if args.case == "all" else [args.case]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"batch {args.batch_size}, workers {args.workers}")
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            spec, asset = CASES[case]
            folder = extract(asset, Path(tmp) / case)
            clf = load_model(spec)
            ours, theirs = [], []
            for _ in range(args.repeats):
                theirs.append(timm_pipeline(clf, folder, args.batch_size, args.workers))
                ours.append(imgclass_pipeline(clf, folder, args.batch_size, args.workers))
            a, b = statistics.median(ours), statistics.median(theirs)
            print(f"{case:<9} {spec:<32} imgclass {a:8.1f} img/s   timm {b:8.1f} img/s   ratio {a / b:5.2f}x "
                  f"(runs: imgclass {[round(v) for v in ours]}, timm {[round(v) for v in theirs]})")


if __name__ == "__main__":
    main()
