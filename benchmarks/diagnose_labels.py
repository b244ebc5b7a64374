"""Confident learning wall time of imgclass against cleanlab 2.9.0, printed as ratios (ours / cleanlab).

Data: the published cross-validated probabilities of the CIFAR-10 test set (10,000 x 10, "Pervasive Label Errors
in Test Sets") with the official test labels, from the asset mirror (``IMGCLASS_MIRROR``, default
../shared/assets); or, with ``--synthetic N K``, softmax probabilities with 10 % of the labels wrong (e.g. ImageNet's
50000 1000). For every ``filter_by`` rule the two sides run alternately, ``--repeats`` times each, and the best
times are compared; cleanlab is timed as called by default (``n_jobs=None``: a process pool over the physical or
logical cores for the pruning rules) and with ``n_jobs=1``. Each row also checks that the masks agree. The last
row times ``label_issues()`` (mask, ranking, calibrated joint, joint, noise matrices) against the cleanlab calls
that give the same things.

    python benchmarks/diagnose_labels.py
    python benchmarks/diagnose_labels.py --repeats 9 --synthetic 50000 1000
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from imgclass.diagnose import label_issues as li  # noqa: E402

CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def published() -> tuple[np.ndarray, np.ndarray]:
    mirror = Path(os.environ.get("IMGCLASS_MIRROR", ROOT.parent / "shared" / "assets"))
    order = (mirror / "cifar10-jpeg" / "test-official-order.txt").read_text().split()
    labels = np.array([CIFAR10.index(member.split("/")[1]) for member in order])
    return labels, np.load(mirror / "cifar10-label-errors" / "cifar10_test_set_pyx.npy")


def synthetic(n: int, k: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Softmax of Gaussian logits with the true class raised by 2..10; 10 % of the labels replaced at random."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.standard_normal((n, k))
    logits[np.arange(n), labels] += rng.uniform(2, 10, n)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    flip = rng.random(n) < 0.1
    labels[flip] = rng.integers(0, k, flip.sum())
    labels[rng.choice(n, k, replace=False)] = np.arange(k)
    return labels, probs


def best_of(calls: dict, repeats: int) -> tuple[dict, dict]:
    """Best wall time of each call, the calls alternating; and each call's last result."""
    best = {name: float("inf") for name in calls}
    out = {}
    for _ in range(repeats):
        for name, call in calls.items():
            t0 = time.perf_counter()
            out[name] = call()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best, out


def cleanlab_bundle(labels, probs):
    from cleanlab.count import compute_confident_joint, estimate_joint, estimate_latent
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores, order_label_issues

    mask = find_label_issues(labels, probs)
    scores = get_label_quality_scores(labels, probs)
    ranked = order_label_issues(mask, labels, probs)
    cj = compute_confident_joint(labels, probs)
    return mask, scores, ranked, cj, estimate_joint(labels, probs, confident_joint=cj), estimate_latent(cj, labels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--synthetic", nargs=2, type=int, metavar=("N", "K"), help="synthetic data of this size")
    args = ap.parse_args()
    warnings.simplefilter("ignore")  # cleanlab's notes on small classes
    import cleanlab
    from cleanlab.filter import find_label_issues

    labels, probs = synthetic(*args.synthetic) if args.synthetic else published()
    print(f"data: {'synthetic' if args.synthetic else 'published CIFAR-10 test probabilities'} {probs.shape}, "
          f"cleanlab {cleanlab.__version__}, numpy {np.__version__}, {os.cpu_count()} CPUs, best of {args.repeats}")
    print(f"{'filter_by':<22} {'issues':>6} {'ours ms':>8} {'cleanlab':>9} {'ratio':>6} {'n_jobs=1':>9} {'ratio':>6}")
    for rule in li.FILTER_BY:
        best, out = best_of({
            "ours": lambda: li.find_label_issues(labels, probs, filter_by=rule),
            "cleanlab": lambda: find_label_issues(labels, probs, filter_by=rule),
            "cleanlab1": lambda: find_label_issues(labels, probs, filter_by=rule, n_jobs=1),
        }, args.repeats)
        if not (np.array_equal(out["ours"], out["cleanlab"]) and np.array_equal(out["ours"], out["cleanlab1"])):
            raise SystemExit(f"{rule}: the masks differ from cleanlab's")
        print(f"{rule:<22} {out['ours'].sum():>6} {best['ours'] * 1e3:>8.2f} {best['cleanlab'] * 1e3:>9.2f} "
              f"{best['ours'] / best['cleanlab']:>6.3f} {best['cleanlab1'] * 1e3:>9.2f} "
              f"{best['ours'] / best['cleanlab1']:>6.3f}")
    best, out = best_of({"ours": lambda: li.label_issues(labels, probs),
                         "cleanlab": lambda: cleanlab_bundle(labels, probs)}, args.repeats)
    if not (np.array_equal(out["ours"].ranked, out["cleanlab"][2])
            and np.array_equal(out["ours"].confident_joint, out["cleanlab"][3])):
        raise SystemExit("label_issues(): the ranking or confident joint differs from cleanlab's")
    print(f"{'label_issues() bundle':<22} {out['ours'].n_issues:>6} {best['ours'] * 1e3:>8.2f} "
          f"{best['cleanlab'] * 1e3:>9.2f} {best['ours'] / best['cleanlab']:>6.3f}")


if __name__ == "__main__":
    main()
