"""Duplicate and leakage search of imgclass against imagehash and cleanvision, printed as ratios.

The CIFAR-10 JPEG train (50,000) and test (10,000) sets, decoded once (not timed against anyone):

1. ``phash`` of all 60,000 images against ``imagehash.phash`` image by image (on ``--ref-n`` of them, the rate
   extrapolated), checking on those that the bits agree;
2. ``near_pairs`` of the 50,000 train hashes against the 10,000 test hashes (the leakage search), numba kernel and
   numpy path, wall time and peak memory, with the pairs found per Hamming distance;
3. cleanvision's near-duplicate check (``Imagelab(filepaths=...).find_issues({"near_duplicates": {}})``, which
   reads PNG files, hashes them with imagehash in worker processes and groups equal hashes) on ``--cleanvision-n``
   of the images written as PNG to a temporary folder, against imgclass on the same files: PNG decoding included,
   phash, exact_groups and near_pairs within the set. cleanvision's sets (phash-equal, minus pixel-equal sets) are
   compared with imgclass's at Hamming 0.

Peak memory: tracemalloc's peak over each step (numpy allocations are traced; torch's are not), and the process's
ru_maxrss at the end.

    python benchmarks/diagnose_duplicates.py
    python benchmarks/diagnose_duplicates.py --cleanvision-n 60000      # every image through cleanvision
    python benchmarks/diagnose_duplicates.py --synthetic                 # random images and hashes, no decoding
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from imgclass.diagnose import duplicates as D  # noqa: E402
from imgclass.diagnose.duplicates import DEFAULT_MAX_DISTANCE, exact_groups, near_pairs, phash, pixel_hashes  # noqa: E402


def measured(fn, *args, peak: bool = True, **kwargs):
    """(result, wall seconds, tracemalloc peak MiB or None) of a call: timed untraced (tracing slows Python code,
    and forked workers inherit it), then called again under tracemalloc for the peak."""
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    wall = time.perf_counter() - t
    if not peak:
        return out, wall, None
    tracemalloc.start()
    fn(*args, **kwargs)
    top = tracemalloc.get_traced_memory()[1] / 2 ** 20
    tracemalloc.stop()
    return out, wall, top


def load_cifar(split: str) -> np.ndarray:
    from imgclass import load_dataset

    ds = load_dataset(f"zoo:cifar10-jpeg:{split}")
    return np.stack([ds.load(i).numpy() for i in range(len(ds))])


def synthetic(n_train: int, n_test: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random images; a tenth of the test images are train images with a few pixels changed."""
    rng = np.random.default_rng(seed)
    train = rng.integers(0, 256, (n_train, 3, 32, 32), dtype=np.uint8)
    test = rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8)
    k = np.arange(0, n_test, 10)
    test[k] = train[rng.integers(0, n_train, len(k))]
    test[k, :, rng.integers(0, 32, len(k)), rng.integers(0, 32, len(k))] ^= 8
    return train, test


def imagehash_rate(images: np.ndarray, ours: np.ndarray) -> tuple[float, bool]:
    """Seconds per image of imagehash.phash (PIL image from an HWC array, as a user would) and bit agreement."""
    import imagehash
    from PIL import Image

    hwc = images.transpose(0, 2, 3, 1)
    t = time.perf_counter()
    ref = [int(str(imagehash.phash(Image.fromarray(np.ascontiguousarray(a)))), 16) for a in hwc]
    rate = (time.perf_counter() - t) / len(hwc)
    return rate, bool(np.array_equal(np.array(ref, dtype=np.uint64), ours))


def by_distance(d: np.ndarray, top: int) -> str:
    counts = np.bincount(d, minlength=top + 1)[: top + 1]
    return ", ".join(f"{k}: {c}" for k, c in enumerate(counts.tolist()) if c or k % 2 == 0)


def cleanvision_run(images: np.ndarray, workdir: str) -> dict:
    """cleanvision and imgclass on the same PNG files."""
    from cleanvision import Imagelab
    from PIL import Image

    paths = []
    for i, a in enumerate(images.transpose(0, 2, 3, 1)):
        p = os.path.join(workdir, f"{i:06d}.png")
        Image.fromarray(np.ascontiguousarray(a)).save(p)
        paths.append(p)

    def theirs():
        lab = Imagelab(filepaths=paths)
        lab.find_issues(issue_types={"near_duplicates": {}}, verbose=False)
        index = {p: i for i, p in enumerate(paths)}
        return [sorted(index[p] for p in s) for s in lab.info["near_duplicates"]["sets"]]

    def ours():
        decoded = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
        h = phash(decoded)
        exact = [g.tolist() for g in exact_groups(pixel_hashes(decoded))]
        sets = [g.tolist() for g in exact_groups(h) if g.tolist() not in exact]  # cleanvision's definition
        return sets, near_pairs(h)

    cv_sets, cv_wall, _ = measured(theirs, peak=False)
    (our_sets, pairs), our_wall, our_peak = measured(ours)
    return {"n": len(paths), "cv_wall": cv_wall, "our_wall": our_wall, "our_peak": our_peak,
            "cv_sets": cv_sets, "our_sets": sorted(our_sets), "pairs": pairs}


def _first(must: np.ndarray, total: int, k: int) -> np.ndarray:
    """``must`` (at most k of them), then the smallest other indices of 0..total-1, k in all."""
    must = must[:k]
    rest = np.setdiff1d(np.arange(total), must)[: k - len(must)]
    return np.concatenate([must, rest])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--synthetic", action="store_true", help="random images with planted copies, no decoding")
    ap.add_argument("--ref-n", type=int, default=5000, help="images hashed by imagehash one by one (0: skip)")
    ap.add_argument("--cleanvision-n", type=int, default=5000, help="images through cleanvision (0: skip)")
    ap.add_argument("--max-distance", type=int, default=DEFAULT_MAX_DISTANCE)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (imgclass's workers); default: all")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"CPU threads: {torch.get_num_threads()} (of {os.cpu_count()} CPUs); numba: {D.HAVE_NUMBA}")

    t = time.perf_counter()
    train, test = synthetic(50_000, 10_000) if args.synthetic else (load_cifar("train"), load_cifar("test"))
    print(f"data: {'synthetic' if args.synthetic else 'CIFAR-10 JPEG'} train {train.shape} test {test.shape}, "
          f"ready in {time.perf_counter() - t:.1f} s (not compared)")

    phash(train[:64])  # numba kernels compiled or loaded from cache, scipy imported
    near_pairs(np.zeros(8, np.uint64), np.zeros(8, np.uint64))
    (h_train, h_test), wall, peak = measured(lambda: (phash(train), phash(test)))
    n = len(train) + len(test)
    print(f"\nphash, {n} images: {wall:.2f} s ({wall / n * 1e6:.1f} us/image), peak {peak:.0f} MiB")
    if args.ref_n:
        k = min(args.ref_n, len(train))
        rate, same = imagehash_rate(train[:k], h_train[:k])
        print(f"  imagehash.phash one by one ({k} images): {rate * 1e6:.1f} us/image -> {rate * n:.1f} s for "
              f"{n}; ratio imagehash / imgclass {rate * n / wall:.1f}x; bits equal: {same}")

    (i, j, d), wall, peak = measured(near_pairs, h_train, h_test, max_distance=args.max_distance)
    print(f"\nnear_pairs {len(h_train)} x {len(h_test)} (max_distance {args.max_distance}): {wall:.2f} s, "
          f"peak {peak:.1f} MiB, {len(i)} pairs, {len(np.unique(j))} test images with a train near-copy")
    print(f"  pairs by distance: {by_distance(d, args.max_distance)}")
    if D.HAVE_NUMBA:
        D.HAVE_NUMBA = False
        try:
            (i2, j2, d2), wall2, peak2 = measured(near_pairs, h_train, h_test, max_distance=args.max_distance)
        finally:
            D.HAVE_NUMBA = True
        same = np.array_equal(i, i2) and np.array_equal(j, j2) and np.array_equal(d, d2)
        print(f"  numpy path (no numba): {wall2:.2f} s, peak {peak2:.1f} MiB, same pairs: {same}; "
              f"numpy / numba {wall2 / wall:.1f}x")

    if args.cleanvision_n:
        # the images of the closest train-test pairs, then the first others of each set (1/6 from the test set)
        k = min(args.cleanvision_n, n)
        close = d <= 2
        k_test = min(len(test), max(1, k // 6))
        pick_train = _first(np.unique(i[close]), len(train), k - k_test)
        pick_test = _first(np.unique(j[close]), len(test), k_test)
        with tempfile.TemporaryDirectory() as tmp:
            r = cleanvision_run(np.concatenate([train[pick_train], test[pick_test]]), tmp)
        print(f"\ncleanvision near_duplicates on {r['n']} PNG files ({len(pick_train)} train + {len(pick_test)} "
              f"test, the {int(close.sum())} train-test pairs within Hamming 2 among them): {r['cv_wall']:.2f} s")
        print(f"  imgclass on the same files (PNG decode + phash + exact_groups + near_pairs): {r['our_wall']:.2f} s "
              f"(peak {r['our_peak']:.0f} MiB); ratio cleanvision / imgclass {r['cv_wall'] / r['our_wall']:.1f}x")
        agree = sorted(r["cv_sets"]) == r["our_sets"]
        pi, _, pd = r["pairs"]
        print(f"  cleanvision sets (equal phash): {len(r['cv_sets'])}, imgclass at Hamming 0: {len(r['our_sets'])}, "
              f"identical: {agree}; imgclass within Hamming {DEFAULT_MAX_DISTANCE}: {len(pi)} pairs "
              f"({by_distance(pd, DEFAULT_MAX_DISTANCE)})")

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nprocess peak RSS (ru_maxrss, data included): {rss:.0f} MiB")


if __name__ == "__main__":
    main()
