"""Training benchmarks, printed as ratios or curves (run on demand, not in CI).

(a) ``throughput``: images/s of one training epoch of imgclass against a plain PyTorch loop with
    torchvision transforms (ImageFolder, RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor,
    Normalize; SGD step per batch) on the same model, images, batch size and worker count.
(b) ``time-to-accuracy``: the ``cifar10-fast`` recipe on the CIFAR-10 JPEG train set, evaluated on the JPEG
    test set after every epoch: wall-clock minutes to reach 80 % and 85 %, and the whole curve.

    python benchmarks/train.py throughput [--images 10000] [--batch-size 128] [--workers 2]
    python benchmarks/train.py time-to-accuracy [--epochs 12] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from imgclass.assets import fetch  # noqa: E402
from imgclass.train import TrainConfig, apply_overrides, load_recipe, train  # noqa: E402
from imgclass.train.loop import CIFAR_MEAN, CIFAR_STD  # noqa: E402


def _extract_subset(dest: Path, n: int) -> Path:
    """The first n images (in tar order, all classes) of the CIFAR-10 JPEG train tarball as a folder."""
    root = dest / "train"
    with tarfile.open(fetch("cifar10-jpeg-train")) as tf:
        members = [m for m in tf.getmembers() if m.isfile()]
        per_class: dict[str, list] = {}
        for m in members:
            per_class.setdefault(m.name.split("/")[1], []).append(m)
        k = n // len(per_class)
        tf.extractall(dest, members=[m for ms in per_class.values() for m in ms[:k]], filter="data")
    return root


def plain_loop(folder: Path, batch_size: int, workers: int) -> float:
    from torchvision import datasets, transforms

    from imgclass.models.checkpoint import build_arch

    tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])
    ds = datasets.ImageFolder(str(folder), transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         drop_last=True)
    torch.manual_seed(0)
    model = build_arch("cifar_resnet20", 10).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    n, t0 = 0, time.perf_counter()
    for x, y in loader:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        n += len(x)
    return n / (time.perf_counter() - t0)


def ours(folder: Path, out: Path, batch_size: int, workers: int) -> float:
    cfg = TrainConfig(data=f"folder:{folder}", model="cifar_resnet20", epochs=1, batch_size=batch_size, lr=0.05,
                      weight_decay=5e-4, sched="cosine", workers=workers, tensorboard=False,
                      mean=CIFAR_MEAN, std=CIFAR_STD, zero_init_last=False)
    res = train(cfg, out, resume=False, progress=False)
    return res["history"][0]["images_per_second"]


def throughput(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = _extract_subset(Path(tmp), args.images)
        rates = {"plain": [], "imgclass": []}
        for r in range(args.repeats):
            rates["plain"].append(plain_loop(folder, args.batch_size, args.workers))
            rates["imgclass"].append(ours(folder, Path(tmp) / f"run{r}", args.batch_size, args.workers))
        a, b = sorted(rates["imgclass"])[len(rates["imgclass"]) // 2], sorted(rates["plain"])[len(rates["plain"]) // 2]
        print(f"ResNet-20, {args.images} CIFAR-10 JPEG images, batch {args.batch_size}, workers {args.workers}: "
              f"imgclass {a:.1f} img/s, plain PyTorch {b:.1f} img/s, ratio {a / b:.2f}x "
              f"(runs: {[round(v, 1) for v in rates['imgclass']]} vs {[round(v, 1) for v in rates['plain']]})")


def time_to_accuracy(args) -> None:
    settings = apply_overrides(load_recipe("cifar10-fast"), [f"epochs={args.epochs}", *args.set])
    cfg = TrainConfig.from_dict(settings)
    out = Path(args.out or tempfile.mkdtemp(prefix="ttacc-"))
    t0 = time.perf_counter()
    res = train(cfg, out, resume=False, progress=True)
    total = time.perf_counter() - t0
    minutes, acc, curve = 0.0, None, []
    reached = {0.80: None, 0.85: None}
    for row in res["history"]:
        minutes += row["seconds"] / 60  # training time; validation time is excluded from the clock
        acc = row.get("val_top1")
        curve.append({"epoch": row["epoch"], "train_minutes": round(minutes, 2), "val_top1": acc})
        for target in reached:
            if reached[target] is None and acc is not None and acc >= target:
                reached[target] = round(minutes, 2)
    print(json.dumps({"recipe": "cifar10-fast", "overrides": args.set, "wall_minutes_with_eval": round(total / 60, 2),
                      "minutes_to_80": reached[0.80], "minutes_to_85": reached[0.85], "curve": curve}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    a = sub.add_parser("throughput")
    a.add_argument("--images", type=int, default=10000)
    a.add_argument("--batch-size", type=int, default=128)
    a.add_argument("--workers", type=int, default=2)
    a.add_argument("--repeats", type=int, default=2)
    b = sub.add_parser("time-to-accuracy")
    b.add_argument("--epochs", type=int, default=12)
    b.add_argument("--out")
    b.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    throughput(args) if args.what == "throughput" else time_to_accuracy(args)


if __name__ == "__main__":
    main()
