"""Speed of imgclass's explanations against the peers, printed as ratios (goal: no slower than either).

- integrated gradients (50 steps, black baseline) against Captum's ``IntegratedGradients`` with the same
  internal batch size;
- Grad-CAM against pytorch-grad-cam's ``GradCAM`` at the same layer.

Same model object, images and targets; the two sides run alternately after a warm-up. Ratio = imgclass
time / peer time (below 1: imgclass is faster), from the best of the repeats (the least disturbed run, as
``timeit`` advises on a shared machine); the medians of wall-clock and of process CPU time are printed beside
it (with ``--threads 1`` the CPU time is the steadiest measure of the work on a busy machine).

    python benchmarks/explain.py                                   # ResNet-20, 16 CIFAR-size images
    python benchmarks/explain.py --model zoo:coral-mobilenet-v2-1.0-224 --images 4 --repeats 3
    python benchmarks/explain.py --threads 1                       # steadier on a busy machine
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from imgclass import load_model  # noqa: E402
from imgclass.explain import cam_layer, explain  # noqa: E402
from imgclass.explain.base import find_module  # noqa: E402


def _timed(fn) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of one call."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0


def compare(name: str, ours, peer, repeats: int) -> tuple[float, float]:
    ours(), peer()  # warm-up (allocator, first-call overheads)
    a, b = [], []
    for _ in range(repeats):
        a.append(_timed(ours))
        b.append(_timed(peer))
    ta, tb = min(w for w, _ in a), min(w for w, _ in b)
    ma, mb = statistics.median(w for w, _ in a), statistics.median(w for w, _ in b)
    ca, cb = statistics.median(c for _, c in a), statistics.median(c for _, c in b)
    print(f"{name:<28} imgclass {ta:8.3f} s   peer {tb:8.3f} s   ratio {ta / tb:5.2f}   "
          f"(medians {ma:.3f} / {mb:.3f} s: {ma / mb:.2f}; CPU time {ca:.3f} / {cb:.3f} s: {ca / cb:.2f})")
    return ta, tb


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="zoo:cifar10-resnet20")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--internal-batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from captum.attr import IntegratedGradients
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    clf = load_model(args.model, device=args.device)
    c, h, w = clf.config.input_size
    x = torch.rand(args.images, c, h, w, generator=torch.Generator().manual_seed(0)).to(args.device)
    with torch.no_grad():
        t = clf(x).argmax(1)
    layer = cam_layer(clf)
    print(f"{args.model} on {args.device} ({torch.get_num_threads()} threads): {args.images} images {h}x{w}, "
          f"CAM layer {layer}, IG {args.steps} steps, internal batch {args.internal_batch_size}")

    ig = IntegratedGradients(clf)
    ibs = args.internal_batch_size

    def ours_ig():
        explain(clf, x, t, method="ig", steps=args.steps, internal_batch_size=ibs)

    def captum_ig():
        ig.attribute(x.clone().requires_grad_(), baselines=torch.zeros_like(x), target=t, n_steps=args.steps,
                     internal_batch_size=ibs)

    targets = [ClassifierOutputTarget(int(k)) for k in t]
    cam = GradCAM(model=clf, target_layers=[find_module(clf, layer)])

    def ours_cam():
        explain(clf, x, t, method="gradcam", internal_batch_size=len(x))

    def pgc_cam():
        cam(input_tensor=x, targets=targets)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r_ig = compare(f"integrated gradients ({args.steps})", ours_ig, captum_ig, args.repeats)
        r_cam = compare("Grad-CAM", ours_cam, pgc_cam, args.repeats)
    cam.activations_and_grads.release()
    print(f"ratios (imgclass / peer): IG vs Captum {r_ig[0] / r_ig[1]:.2f}, "
          f"Grad-CAM vs pytorch-grad-cam {r_cam[0] / r_cam[1]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
