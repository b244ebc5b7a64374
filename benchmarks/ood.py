"""OOD probe benchmark: imgclass's `ood` probe (every detector, logits and features computed once per dataset and
shared) against pytorch-ood computing the same detectors on the same model, in the same run.

In-distribution: the CIFAR-10 JPEG test set; OOD: MNIST; fit statistics: CIFAR-10 JPEG training images. pytorch-ood's
detectors each take the model and run their own forward passes (Mahalanobis/KNN/ViM/ReAct fitted on the training
images' features, as the probe is). Both sides read the images decoded once into memory beforehand, so the time is
the detectors' (forward passes included), not JPEG decoding.

    python benchmarks/ood.py               # 10,000 ID + 10,000 OOD, 10,000 fit images (minutes on a CPU)
    python benchmarks/ood.py --n 2000      # a smaller run
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

DETECTORS = ("msp", "max_logit", "energy", "entropy", "gen", "mahalanobis", "knn", "vim", "react", "ash", "odin")


def _npz(ds, n: int, path: Path, seed: int) -> str:
    """The first-choice seeded n images of a dataset as an npz (decoded once, outside the timings)."""
    idx = np.sort(np.random.default_rng(seed).choice(len(ds), size=min(n, len(ds)), replace=False))
    imgs = np.stack([ds.load(int(i)).permute(1, 2, 0).numpy() for i in idx])
    if imgs.shape[-1] == 1:
        imgs = np.repeat(imgs, 3, -1)
    labels = ds.labels[idx] if ds.labeled else np.zeros(len(idx), dtype=np.int64)
    np.savez(path, images=imgs, labels=labels, class_names=np.array(ds.classes.names if ds.labeled else ["x"]))
    return f"npz:{path}"


def run_pytorch_ood(clf, x_id: torch.Tensor, x_ood: torch.Tensor, x_fit: torch.Tensor, y_fit: torch.Tensor,
                    batch: int) -> dict[str, float]:
    import pytorch_ood.detector as pod

    head = clf.logit_layer()
    W, b = head.weight.detach(), head.bias.detach()
    backbone = lambda x: clf.features(x)[:, :, None, None]  # noqa: E731 - pytorch-ood's feature-map interface
    linear = lambda z: head(z.flatten(1))  # noqa: E731
    times = {}

    def predict(det, x):
        out = []
        for i in range(0, len(x), batch):
            with torch.no_grad():
                out.append(det.predict(x[i:i + batch]))
        return torch.cat(out)

    def fit_features(det, fmaps: bool = False):
        with torch.no_grad():
            z = torch.cat([clf.features(x_fit[i:i + batch]) for i in range(0, len(x_fit), batch)])
        if fmaps:
            det.fit_feature_maps(z[:, :, None, None], y_fit)
        else:
            det.fit_features(z, y_fit)
        return det

    makers = {
        "msp": lambda: pod.MaxSoftmax(clf), "max_logit": lambda: pod.MaxLogit(clf),
        "energy": lambda: pod.EnergyBased(clf), "entropy": lambda: pod.Entropy(clf),
        "gen": lambda: pod.GEN(clf, M=100), "mahalanobis": lambda: fit_features(pod.Mahalanobis(clf.features)),
        "knn": lambda: fit_features(pod.KNN(clf.features, k=50)),
        "vim": lambda: fit_features(pod.ViM(clf.features, d=W.shape[1] // 2, w=W, b=b)),
        "react": lambda: fit_features(pod.ReAct(backbone, linear, percentile=0.9), fmaps=True),
        "ash": lambda: pod.ASH(backbone, linear, variant="ash-s", percentile=0.65),
        "odin": lambda: pod.ODIN(clf, norm_std=None, eps=0.0014, temperature=1000.0),
    }
    for name in DETECTORS:
        t0 = time.perf_counter()
        det = makers[name]()
        if name == "odin":  # gradients: predict without no_grad
            for x in (x_id, x_ood):
                torch.cat([det.predict(x[i:i + batch]) for i in range(0, len(x), batch)])
        else:
            predict(det, x_id), predict(det, x_ood)
        times[name] = time.perf_counter() - t0
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="images of each set (ID, OOD and fit)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--model", default="zoo:cifar10-resnet20")
    args = ap.parse_args()

    import tempfile

    from imgclass import evaluate, load_dataset, load_model

    with tempfile.TemporaryDirectory(prefix="imgclass-ood-bench-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        id_spec = _npz(load_dataset("zoo:cifar10-jpeg:test"), args.n, tmp / "id.npz", 0)
        ood_spec = _npz(load_dataset("zoo:mnist:test"), args.n, tmp / "ood.npz", 1)
        fit_spec = _npz(load_dataset("zoo:cifar10-jpeg:train"), args.n, tmp / "fit.npz", 2)
        print(f"decoded {args.n} ID, OOD and fit images in {time.perf_counter() - t0:.1f} s (not timed below)")
        torch.set_num_threads(torch.get_num_threads())

        t0 = time.perf_counter()
        res = evaluate(args.model, id_spec, probes=["ood"], batch_size=args.batch_size, progress=False, store=False,
                       probe_params={"ood": {"ood_data": ood_spec, "detectors": DETECTORS, "fit_data": fit_spec,
                                             "fit_limit": args.n}})
        ours = time.perf_counter() - t0
        o = res["probes"]["ood"]
        print(f"imgclass ood probe, {len(DETECTORS)} detectors: {ours:.1f} s "
              f"(AUROC energy {o['auroc'][ood_spec]['energy']:.4f}, knn {o['auroc'][ood_spec]['knn']:.4f})")

        clf = load_model(args.model).eval()

        def tensor(spec):
            d = np.load(spec[4:])
            return torch.from_numpy(d["images"]).permute(0, 3, 1, 2).float().div(255), torch.from_numpy(d["labels"])

        (x_id, _), (x_ood, _), (x_fit, y_fit) = tensor(id_spec), tensor(ood_spec), tensor(fit_spec)
        t0 = time.perf_counter()
        times = run_pytorch_ood(clf, x_id, x_ood, x_fit, y_fit, args.batch_size)
        theirs = time.perf_counter() - t0
        print(f"pytorch-ood, the same detectors: {theirs:.1f} s  "
              + " ".join(f"{k} {v:.1f}" for k, v in times.items()))
        print(f"time ratio imgclass / pytorch-ood: {ours / theirs:.2f} (goal <= 1.0)")


if __name__ == "__main__":
    main()
