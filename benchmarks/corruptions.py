"""Corruption throughput of imgclass against the reference package ``imagecorruptions``, printed as ratios.

Same images (ImageNet sample crops at 224x224; CIFAR-10 lossless test images at 32x32), all five
severities, ImageNet parameters on both sides. The reference corrupts one PIL image at a time, as it is
meant to be used; imgclass corrupts uint8 batches. The reference's slow corruptions are timed on fewer
images (``--ref-seconds`` caps each), throughput is images per second in both cases. imgclass is timed after a
warm-up pass over the same images (numba compiles its CPU kernels on first use, once per machine; the frost
textures and filter tables are cached per size); the reference needs none. Each side is timed ``--repeats``
times and keeps its best throughput (single timings on a small shared VM move by up to 2x).

    python benchmarks/corruptions.py                      # both sizes, every corruption
    python benchmarks/corruptions.py --size 32 --only glass_blur,zoom_blur --batch 128
    python benchmarks/corruptions.py --threads 1 --clock cpu   # on a machine shared with other jobs

``--threads`` sets torch's and OpenCV's (the reference's) thread counts alike. On a machine whose cores are
busy with other work, more threads than free cores make OpenMP wait for each other (several times slower):
use ``--threads 1``, and ``--clock cpu`` (process CPU time, all threads counted) for steadier numbers.
"""

from __future__ import annotations

import argparse
import io
import sys
import tarfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from imgclass.assets import fetch  # noqa: E402
from imgclass.corruptions import CORRUPTIONS, SEVERITIES, corrupt  # noqa: E402


def imagenet_crops(n: int) -> np.ndarray:
    from PIL import Image

    out = []
    with tarfile.open(fetch("imagenet-samples")) as tf:
        members = sorted((m for m in tf.getmembers() if m.isfile() and m.name.lower().endswith((".jpg", ".jpeg",
                                                                                                  ".png"))),
                         key=lambda m: m.name)
        for m in members[:: max(1, len(members) // n)][:n]:
            im = Image.open(io.BytesIO(tf.extractfile(m).read())).convert("RGB")
            w, h = im.size
            s = min(w, h)
            im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((224, 224),
                                                                                                    Image.BICUBIC)
            out.append(np.asarray(im))
    return np.stack(out)


def cifar_images(n: int) -> np.ndarray:
    with np.load(fetch("cifar10-lossless-test1000")) as z:
        return np.ascontiguousarray(z["images"][:n])


CLOCK = time.perf_counter


def time_reference(mod, run_reference, name: str, images: np.ndarray, budget: float) -> tuple[float, int]:
    """Images per second of the reference (all severities), on as many images as fit the time budget."""
    done, t0 = 0, CLOCK()
    for img in images:
        for s in SEVERITIES:
            run_reference(mod, name, img, s)
        done += 1
        if CLOCK() - t0 > budget:
            break
    return done * len(SEVERITIES) / (CLOCK() - t0), done


def time_ours(name: str, images: np.ndarray, batch: int, warm: bool = True) -> float:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    ids = list(range(len(x)))
    for s in SEVERITIES if warm else ():  # warm-up on the whole set: compiled kernels, frost textures, filters
        corrupt(x, name, s, seed=0, sample_ids=ids)
    t0 = CLOCK()
    for i in range(0, len(x), batch):
        for s in SEVERITIES:
            corrupt(x[i:i + batch], name, s, seed=0, sample_ids=ids[i:i + batch])
    return len(x) * len(SEVERITIES) / (CLOCK() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, choices=(224, 32), action="append", help="image size (default: both)")
    ap.add_argument("--only", help="comma-separated corruptions (default: all 19)")
    ap.add_argument("--images", type=int, default=64, help="images per size (default 64)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--ref-seconds", type=float, default=4.0, help="time budget of the reference per corruption")
    ap.add_argument("--repeats", type=int, default=3,
                    help="time each side this many times and keep its best throughput (default 3; the reference "
                         "gets --ref-seconds / repeats per round): a 2-core VM's neighbours move single timings by "
                         "up to 2x")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch and OpenCV threads (default: their own defaults)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall-clock time, or process CPU time over all threads (steadier on a shared machine)")
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.perf_counter if args.clock == "wall" else time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
        try:
            import cv2

            cv2.setNumThreads(args.threads)
        except ImportError:
            pass
    warnings.filterwarnings("ignore")
    from test_corruptions_reference import load_reference, run_reference

    mod, _ = load_reference(controlled=False)  # as released, but for NumPy 2 / scikit-image fixes
    names = args.only.split(",") if args.only else list(CORRUPTIONS)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"{args.images} images, severities 1-5, imagenet parameters, {args.clock} clock, "
          f"best of {args.repeats} per side")
    all_ratios = []
    for size in args.size or (224, 32):
        images = imagenet_crops(args.images) if size == 224 else cifar_images(args.images)
        print(f"\n{size}x{size}")
        print(f"{'corruption':<20}{'reference img/s':>16}{'(images)':>10}{'imgclass img/s':>16}{'speed-up':>10}")
        ratios = []
        for name in names:
            ref, n_ref = max(time_reference(mod, run_reference, name, images, args.ref_seconds / args.repeats)
                             for _ in range(args.repeats))
            ours = max(time_ours(name, images, args.batch, warm=r == 0) for r in range(args.repeats))
            ratios.append(ours / ref)
            print(f"{name:<20}{ref:>16.1f}{n_ref:>10d}{ours:>16.1f}{ours / ref:>9.1f}x", flush=True)
        gm = float(np.exp(np.mean(np.log(ratios))))
        print(f"geometric-mean speed-up at {size}x{size}: {gm:.1f}x; slowest: {min(ratios):.2f}x "
              f"({names[int(np.argmin(ratios))]})")
        all_ratios += ratios
    gm = float(np.exp(np.mean(np.log(all_ratios))))
    print(f"\ngeometric-mean speed-up over all: {gm:.1f}x; slowest: {min(all_ratios):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
