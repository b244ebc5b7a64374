"""Evaluation throughput of imgclass against timm's own evaluation pipeline, printed as ratios.

timm's side is what its ``validate.py`` does by default: ``create_dataset`` + ``create_loader`` (PIL resize/crop,
ToTensor + Normalize in the workers when not prefetching on CUDA) and a plain float32 ``model(x)`` loop under
``torch.no_grad``. imgclass's side is ``Engine.predict`` as ``imgclass eval`` runs it (uint8 from the workers,
float and normalization inside the Classifier, the folded inference copy), in float32 and with ``--amp``
(bfloat16 autocast on CPUs with native bfloat16; the precision actually used is printed). Same model weights,
images, batch size and worker count; the three are run in turn, ``--repeats`` times (alternating), and the median
of each is compared with timm's median.

    python benchmarks/eval_throughput.py                # both cases, 5 alternating repeats
    python benchmarks/eval_throughput.py --case cifar --repeats 3 --workers 2

Goals on a CPU with native bfloat16: ``--amp`` >= 2x timm's float32 loop, float32 >= 1.3x.
"""

from __future__ import annotations

import argparse
import copy
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


def timm_pipeline(model, cfg, folder: Path, batch_size: int, workers: int) -> float:
    from timm.data import create_dataset, create_loader

    ds = create_dataset("", root=str(folder), split="")
    loader = create_loader(ds, input_size=cfg.input_size, batch_size=batch_size, use_prefetcher=False,
                           interpolation=cfg.interpolation, mean=cfg.mean, std=cfg.std, num_workers=workers,
                           crop_pct=cfg.crop_pct, device=torch.device("cpu"))
    model.eval()
    n = 0
    t0 = time.perf_counter()
    with torch.no_grad():
        for x, _ in loader:
            model(x)
            n += len(x)
    return n / (time.perf_counter() - t0)


def imgclass_pipeline(clf, folder: Path, batch_size: int, workers: int, amp: bool) -> tuple[float, dict]:
    ds = load_dataset(f"folder:{folder}")
    t0 = time.perf_counter()  # the Engine's set-up (the inference copy) counts
    engine = Engine(clf, batch_size=batch_size, workers=workers, device="cpu", progress=False, amp=amp)
    p = engine.predict(ds)
    return len(p.labels) / (time.perf_counter() - t0), engine.settings()


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
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    cases = list(CASES) if args.case == "all" else [args.case]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"batch {args.batch_size}, workers {args.workers}, median of {args.repeats} alternating runs")
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            spec, asset = CASES[case]
            folder = extract(asset, Path(tmp) / case)
            clf = load_model(spec)
            theirs = copy.deepcopy(clf.model)  # timm runs its own module: nothing imgclass does to it can help
            runs: dict[str, list[float]] = {"timm": [], "fp32": [], "amp": []}
            settings = {}
            for _ in range(args.repeats):
                runs["timm"].append(timm_pipeline(theirs, clf.config, folder, args.batch_size, args.workers))
                for side, amp in (("fp32", False), ("amp", True)):
                    rate, settings[side] = imgclass_pipeline(clf, folder, args.batch_size, args.workers, amp)
                    runs[side].append(rate)
            med = {k: statistics.median(v) for k, v in runs.items()}
            print(f"{case:<9} {spec:<32} timm float32 {med['timm']:7.1f} img/s {[round(v, 1) for v in runs['timm']]}")
            for side in ("fp32", "amp"):
                st = settings[side]
                print(f"{'':<9} imgclass {side:<4} ({st['precision']}, inference copy "
                      f"{'used' if st['inference_copy'].get('used') else 'not used'}) {med[side]:7.1f} img/s   "
                      f"ratio {med[side] / med['timm']:5.2f}x   {[round(v, 1) for v in runs[side]]}")


if __name__ == "__main__":
    main()
