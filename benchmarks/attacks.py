"""Attack wall time and robust accuracy of imgclass against torchattacks, printed as ratios.

Same model object, images (the correctly classified ones among the first N of the lossless CIFAR-10
test set), device and parameters; the two sides run alternately and the fastest of the repeats is
compared (the machine may be shared). "model images" is how many images each side had the model
classify (forward passes times batch size), a measure of the work that timing noise does not blur;
"CPU ratio" compares the process CPU time, which other jobs on a shared machine disturb less than
wall time (run single-threaded, ``--threads 1``, for the cleanest figure).
Robust accuracy is the model's accuracy on each side's adversarial images.

    python benchmarks/attacks.py                                  # PGD-20 and Square, ResNet-20, 500 images
    python benchmarks/attacks.py --model zoo:vnncomp-resnet-2b --attacks pgd,square,cw,apgd-ce,apgd-t
    python benchmarks/attacks.py --n 500 --eps 2/255 --square-queries 1000 --repeats 3 --device cuda

PGD rows: imgclass with ``early_stop=False`` runs the same steps on the same samples as torchattacks
(same random start: the adversarial images are identical); the ``pgd (early stop)`` row is the
default, which stops on a sample once an iterate fools the model. ``(folded copy)`` rows attack the frozen copy
with batch norm folded into the convolutions and channels-last activations that the adversarial probe uses by
default (``imgclass.models.fast.inference_copy``): the same function up to float rounding, so the adversarial
images differ in the last bits and robust accuracy is compared instead. CW: torchattacks has no binary
search, so both run one search step at the same c, steps and learning rate.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from imgclass import load_dataset, load_model  # noqa: E402
from imgclass.attacks import get_attack, parse_eps  # noqa: E402
from imgclass.models.fast import inference_copy  # noqa: E402


def load_images(n: int, device: str):
    ds = load_dataset("zoo:cifar10-lossless:test")
    x = torch.stack([ds[i].image for i in range(n)]).float().div(255).to(device)
    y = torch.tensor([ds.label(i) for i in range(n)], device=device)
    return x, y


class Counting(torch.nn.Module):
    """The model, counting the images it is asked to classify (the work an attack does, free of timing noise)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model, self.images = model, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += len(x)
        return self.model(x)


def accuracy(model, adv, y) -> float:
    with torch.no_grad():
        return float((model(adv).argmax(1) == y).double().mean())


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def cases(name: str, model, fast_model, x, y, eps: float, a):
    """(label, ours() -> adv, theirs() -> adv) pairs for one attack name; ``fast_model`` is the frozen copy with
    batch norm folded that the adversarial probe attacks by default."""
    import torchattacks as ta

    if name == "pgd":
        alpha = 2.5 * eps / 20

        def start():
            torch.manual_seed(0)
            return torch.clamp(x + torch.empty_like(x).uniform_(-eps, eps), 0, 1)

        def theirs():
            torch.manual_seed(0)
            return ta.PGD(model, eps=eps, alpha=alpha, steps=20)(x, y)

        ours = get_attack("pgd", eps=eps, steps=20, step_size=alpha, early_stop=False)
        fast = get_attack("pgd", eps=eps, steps=20, step_size=alpha)
        yield "pgd-20", lambda: ours(model, x, y, start=start()).adv, theirs
        yield "pgd-20 (folded copy)", lambda: ours(fast_model, x, y, start=start()).adv, theirs
        yield "pgd-20 (early stop)", lambda: fast(model, x, y, start=start()).adv, theirs
    elif name == "square":
        ours = get_attack("square", eps=eps, n_queries=a.square_queries, seed=0)
        theirs = lambda: ta.Square(model, eps=eps, n_queries=a.square_queries, seed=0)(x, y)  # noqa: E731
        yield f"square ({a.square_queries} queries)", lambda: ours(model, x, y).adv, theirs
        yield "square (folded copy)", lambda: ours(fast_model, x, y).adv, theirs
    elif name == "cw":
        ours = get_attack("cw", steps=a.cw_steps, search_steps=1, initial_const=1.0, lr=0.01)
        yield f"cw (c=1, {a.cw_steps} steps)", lambda: ours(model, x, y).adv, \
            lambda: ta.CW(model, c=1.0, kappa=0, steps=a.cw_steps, lr=0.01)(x, y)
    elif name == "apgd-ce":
        ours = get_attack("apgd-ce", eps=eps, steps=a.apgd_steps)
        yield f"apgd-ce ({a.apgd_steps} steps)", lambda: ours(model, x, y).adv, \
            lambda: ta.APGD(model, eps=eps, steps=a.apgd_steps, loss="ce", seed=0)(x, y)
    elif name == "apgd-t":
        ours = get_attack("apgd-t", eps=eps, steps=a.apgd_steps)
        yield f"apgd-t ({a.apgd_steps} steps, 9 targets)", lambda: ours(model, x, y).adv, \
            lambda: ta.APGDT(model, eps=eps, steps=a.apgd_steps, n_classes=10, seed=0)(x, y)
    else:
        raise SystemExit(f"no torchattacks counterpart wired for {name!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="zoo:cifar10-resnet20")
    ap.add_argument("--attacks", default="pgd,square")
    ap.add_argument("--n", type=int, default=500, help="first N test images (the correct ones are attacked)")
    ap.add_argument("--eps", default="8/255")
    ap.add_argument("--square-queries", type=int, default=1000)
    ap.add_argument("--cw-steps", type=int, default=50)
    ap.add_argument("--apgd-steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    clf = load_model(a.model).to(a.device).eval()
    model = Counting(clf).eval()
    fast_model = Counting(inference_copy(clf)).eval()
    x, y = load_images(a.n, a.device)
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    x, y = x[ok], y[ok]
    eps = parse_eps(a.eps)
    print(f"{a.model} on {a.device}, {len(y)} correctly classified of the first {a.n} test images, "
          f"eps {a.eps} (Linf), best of {a.repeats} alternating repeats")
    print(f"{'attack':<26} {'imgclass s':>10} {'torchattacks s':>14} {'ratio':>6}  {'CPU ratio':>9}  "
          f"{'model images ratio':>18}  {'robust acc ours / theirs':>24}  max |diff|", flush=True)
    for name in [s.strip() for s in a.attacks.split(",") if s.strip()]:
        for label, ours, theirs in cases(name, model, fast_model, x, y, eps, a):
            t_o, t_t, c_o, c_t = [], [], [], []
            for _ in range(a.repeats):
                for fn, ts, cs in ((ours, t_o, c_o), (theirs, t_t, c_t)):
                    sync(a.device)
                    model.images = fast_model.images = 0
                    t0, c0 = time.perf_counter(), time.process_time()
                    adv = fn()
                    sync(a.device)
                    ts.append(time.perf_counter() - t0)
                    cs.append(time.process_time() - c0)
                    if fn is ours:
                        adv_o, n_o = adv, model.images + fast_model.images
                    else:
                        adv_t, n_t = adv, model.images + fast_model.images
            diff = float((adv_o - adv_t).abs().max())
            print(f"{label:<26} {min(t_o):>10.2f} {min(t_t):>14.2f} {min(t_o) / min(t_t):>5.2f}x  "
                  f"{min(c_o) / min(c_t):>8.2f}x  {n_o / n_t:>17.2f}x  "
                  f"{accuracy(clf, adv_o, y):>11.4f} / {accuracy(clf, adv_t, y):<11.4f}  {diff:.2e}", flush=True)


if __name__ == "__main__":
    main()
