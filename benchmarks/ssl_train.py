"""Self-supervised pretraining benchmarks (not named ssl.py: a script folder holding ssl.py shadows the standard
library's ssl module for every script run from it).

``speed``: images/s of one SimCLR epoch through ``imgclass train`` (the simclr-cifar10 recipe) against a plain
PyTorch loop with lightly's NTXentLoss, SimCLRProjectionHead and SimCLRTransform (torchvision transforms on PIL
images), in the same run, on the same backbone, images, batch size, optimizer and data-loader processes. Both sides
read the same images, decoded once into memory beforehand.

``knn``: each SSL recipe trained for a few epochs on a seeded subset of the CIFAR-10 JPEG training set; the online
kNN monitor's top-1 on a subset of the JPEG test set (bank: the training subset) against the same network at its
random initialisation (the weights the run starts from). ``--model`` replaces the recipes' ResNet-18 for CPU time
(SimMIM keeps its ViT). ``--peer`` also trains SimCLR and BYOL in a plain loop with lightly's parts.

``finetune``: SimMIM's own evaluation (fine-tuning, as SimMIM, MAE and BEiT report it): simmim-cifar10 for
``--pretrain-epochs`` on the training subset, then simmim-finetune-cifar10 for ``--epochs`` on the same labelled
subset from that checkpoint and from random initialization (same seed, architecture and settings); top-1 on the
test subset after each epoch. ``--light`` turns RandAugment, random erasing, mixup and cutmix off for short runs.

    python benchmarks/ssl_train.py speed                     # 1,024 images, ResNet-18 with the CIFAR stem
    python benchmarks/ssl_train.py speed --n 512 --model cifar_resnet20
    python benchmarks/ssl_train.py knn --n 5000 --epochs 5   # every recipe (minutes to hours on a CPU)
    python benchmarks/ssl_train.py finetune --n 5000 --pretrain-epochs 5 --epochs 3 --light
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

METHODS = ("simclr", "byol", "dino", "rotnet", "simmim")


def _npz(spec: str, n: int, path: Path, seed: int) -> tuple[str, np.ndarray, np.ndarray]:
    """A seeded subset of n images of a dataset as an npz (decoded once, outside the timings)."""
    from imgclass import load_dataset

    ds = load_dataset(spec)
    idx = np.sort(np.random.default_rng(seed).choice(len(ds), size=min(n, len(ds)), replace=False))
    imgs = np.stack([ds.load(int(i)).permute(1, 2, 0).numpy() for i in idx])
    labels = ds.labels[idx]
    np.savez(path, images=imgs, labels=labels, class_names=np.array(ds.classes.names))
    return f"npz:{path}", imgs, labels


def _ours_simclr(data: str, model: str, batch: int, workers: int, out: Path) -> float:
    from imgclass.train import TrainConfig, load_recipe, train

    settings = {**load_recipe("simclr-cifar10"), "data": data, "val_data": None, "model": model, "epochs": 1,
                "batch_size": batch, "workers": workers, "tensorboard": False}
    res = train(TrainConfig.from_dict(settings), out, progress=False, store=False)
    return float(res["history"][0]["images_per_second"])


def _lightly_loop(method: str, data: str, imgs: np.ndarray, model: str, batch: int, workers: int, epochs: int = 1):
    """The plain loop for ``simclr`` or ``byol``: lightly's transform, heads and loss (and, for BYOL, its
    update_momentum and cosine_schedule), torch's DataLoader and SGD with a per-step cosine schedule (the recipe's
    settings); (images/s, the trained classifier)."""
    import copy

    from PIL import Image

    from imgclass import load_dataset
    from imgclass.train import TrainConfig, load_recipe
    from imgclass.train.loop import build_student

    cfg = TrainConfig.from_dict({**load_recipe(f"{method}-cifar10"), "data": data, "model": model})
    clf = build_student(cfg, load_dataset(data).classes)  # the same network and normalization as our side
    net = clf.model
    with torch.no_grad():
        dim = clf.eval().features(torch.zeros(2, 3, 32, 32)).shape[1]
    backbone = clf.features  # pre-logit features, as the recipe trains them
    # the transforms' own normalization is off: the classifier normalizes inside, as on our side
    if method == "simclr":
        from lightly.loss import NTXentLoss
        from lightly.models.modules import SimCLRProjectionHead
        from lightly.transforms import SimCLRTransform

        heads = [SimCLRProjectionHead(dim, 512, 128)]
        transform = SimCLRTransform(input_size=32, gaussian_blur=0.0, cj_strength=0.5, normalize=None)
        criterion = NTXentLoss(temperature=0.5)
    elif method == "byol":
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
        from lightly.models.utils import update_momentum
        from lightly.transforms.byol_transform import BYOLTransform, BYOLView1Transform, BYOLView2Transform
        from lightly.utils.scheduler import cosine_schedule

        heads = [BYOLProjectionHead(dim, 1024, 256), BYOLPredictionHead(256, 1024, 256)]
        teacher, teacher_proj = copy.deepcopy(clf).train(), copy.deepcopy(heads[0]).train()
        for q in list(teacher.parameters()) + list(teacher_proj.parameters()):
            q.requires_grad_(False)
        transform = BYOLTransform(BYOLView1Transform(input_size=32, gaussian_blur=0.0, normalize=None),
                                  BYOLView2Transform(input_size=32, gaussian_blur=0.0, normalize=None))
        criterion = NegativeCosineSimilarity()
    else:
        raise ValueError(f"no plain lightly loop for {method}")

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return len(imgs)

        def __getitem__(self, i):
            return transform(Image.fromarray(imgs[i]))

    loader = torch.utils.data.DataLoader(Data(), batch_size=batch, shuffle=True, drop_last=True,
                                         num_workers=workers, prefetch_factor=4 if workers else None)
    params = [p for p in list(net.parameters()) + [q for h in heads for q in h.parameters()] if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.06 * batch / 128, momentum=0.9, weight_decay=5e-4)
    total = epochs * len(loader)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    clf.train()
    for h in heads:
        h.train()
    t0, seen, step = time.perf_counter(), 0, 0
    for _ in range(epochs):
        for x0, x1 in loader:
            if method == "simclr":
                loss = criterion(heads[0](backbone(x0)), heads[0](backbone(x1)))
            else:
                p0, p1 = (heads[1](heads[0](backbone(v))) for v in (x0, x1))
                with torch.no_grad():
                    z0, z1 = (teacher_proj(teacher.features(v)) for v in (x0, x1))
                loss = 0.5 * (criterion(p0, z1) + criterion(p1, z0))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if method == "byol":  # EMA after the step, momentum cosine from 0.99 to 1 over the run
                m = cosine_schedule(step, total, 0.99, 1.0)
                update_momentum(clf, teacher, m)
                update_momentum(heads[0], teacher_proj, m)
            seen += len(x0)
    return seen / (time.perf_counter() - t0), clf


def speed(args) -> None:
    from imgclass.engine import default_workers

    workers = default_workers() if args.workers is None else args.workers
    with tempfile.TemporaryDirectory() as tmp:
        data, imgs, _ = _npz("zoo:cifar10-jpeg:train", args.n, Path(tmp) / "train.npz", args.seed)
        print(f"SimCLR, one epoch of {len(imgs)} CIFAR-10 images, {args.model}, batch {args.batch}, "
              f"{workers} loader processes, {torch.get_num_threads()} threads")
        rows = []
        for r in range(args.repeats):  # alternate the sides so that machine noise hits both alike
            peer, _ = _lightly_loop("simclr", data, imgs, args.model, args.batch, workers)
            ours = _ours_simclr(data, args.model, args.batch, workers, Path(tmp) / f"run{r}")
            rows.append((ours, peer))
            print(f"  repeat {r + 1}: imgclass {ours:.1f} img/s, plain loop with lightly {peer:.1f} img/s, "
                  f"ratio {ours / peer:.2f}x")
        ours, peer = np.median([o for o, _ in rows]), np.median([p for _, p in rows])
        print(f"median: imgclass {ours:.1f} img/s, lightly loop {peer:.1f} img/s: {ours / peer:.2f}x (goal >= 1.0x)")


def knn(args) -> None:
    from imgclass import load_dataset
    from imgclass.train import TrainConfig, load_recipe, train
    from imgclass.train.data import seed_for
    from imgclass.train.loop import build_student, knn_monitor

    methods = [m.strip() for m in args.methods.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        train_spec, train_imgs, _ = _npz("zoo:cifar10-jpeg:train", args.n, Path(tmp) / "train.npz", args.seed)
        val_spec, _, _ = _npz("zoo:cifar10-jpeg:test", args.n_val, Path(tmp) / "val.npz", args.seed + 1)
        tr, va = load_dataset(train_spec), load_dataset(val_spec)
        print(f"{args.epochs} epochs on {len(tr)} CIFAR-10 JPEG training images; kNN (k=200, t=0.1) on {len(va)} "
              f"test images, bank: the training images")
        print(f"{'method':8s} {'model':28s} {'random init':>11s} {'trained':>8s} {'gain':>6s} {'seconds':>8s}")
        for m in methods:
            settings = {**load_recipe(f"{m}-cifar10"), "data": train_spec, "val_data": val_spec,
                        "epochs": args.epochs, "workers": args.workers, "tensorboard": False, "knn_bank": None}
            if m != "simmim" and args.model:
                settings["model"] = args.model
            if args.batch:
                settings["batch_size"] = args.batch
            settings["warmup_epochs"] = min(float(settings.get("warmup_epochs", 0)), max(0, args.epochs - 1))
            cfg = TrainConfig.from_dict(settings)
            torch.manual_seed(seed_for(cfg.seed, 1))  # the loop's seeding before it builds the network
            base = knn_monitor(build_student(cfg, tr.classes), tr, va, cfg)["val_knn_top1"]
            t0 = time.perf_counter()
            res = train(cfg, Path(tmp) / m, progress=args.progress, store=False)
            got = res["history"][-1]["val_knn_top1"]
            print(f"{m:8s} {cfg.model:28s} {base:11.4f} {got:8.4f} {got - base:+6.3f} "
                  f"{time.perf_counter() - t0:8.0f}", flush=True)
            if m in ("simclr", "byol") and args.peer:  # the same training in a plain loop with lightly's parts
                from imgclass.engine import default_workers

                t0 = time.perf_counter()
                torch.manual_seed(seed_for(cfg.seed, 1))
                _, peer = _lightly_loop(m, train_spec, train_imgs, cfg.model, cfg.batch_size,
                                          default_workers() if args.workers is None else args.workers, args.epochs)
                got = knn_monitor(peer, tr, va, cfg)["val_knn_top1"]
                print(f"{'  lightly':8s} {'plain loop, same settings':28s} {base:11.4f} {got:8.4f} "
                      f"{got - base:+6.3f} {time.perf_counter() - t0:8.0f}", flush=True)


def finetune(args) -> None:
    from imgclass.train import TrainConfig, load_recipe, train

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train_spec, _, _ = _npz("zoo:cifar10-jpeg:train", args.n, tmp / "train.npz", args.seed)
        val_spec, _, _ = _npz("zoo:cifar10-jpeg:test", args.n_val, tmp / "val.npz", args.seed + 1)
        common = {"data": train_spec, "val_data": val_spec, "workers": args.workers, "tensorboard": False,
                  "batch_size": args.batch, "warmup_epochs": 1}
        t0 = time.perf_counter()
        pre = {**load_recipe("simmim-cifar10"), **common, "epochs": args.pretrain_epochs, "lr": args.pretrain_lr,
               "knn_bank": None}
        res = train(TrainConfig.from_dict(pre), tmp / "simmim", progress=args.progress, store=False)
        print(f"simmim-cifar10: {args.pretrain_epochs} epochs on {args.n} images, batch {args.batch}, lr "
              f"{args.pretrain_lr:g}: kNN {[round(h['val_knn_top1'], 3) for h in res['history']]} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        ft = {**load_recipe("simmim-finetune-cifar10"), **common, "epochs": args.epochs, "lr": args.lr}
        if args.light:
            ft.update(auto_augment=None, random_erasing=0.0, mixup=0.0, cutmix=0.0)
        for name, model in (("simmim", f"file:{tmp / 'simmim' / 'last.safetensors'}"), ("random", ft["model"])):
            t0 = time.perf_counter()
            res = train(TrainConfig.from_dict({**ft, "model": model}), tmp / f"ft-{name}", progress=args.progress,
                        store=False)
            curve = [round(h["val_top1"], 3) for h in res["history"]]
            print(f"fine-tune from {name:6s}: top-1 by epoch {curve} ({time.perf_counter() - t0:.0f} s)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--n", type=int, default=1024)
    s.add_argument("--model", default="cifar_resnet18")
    s.add_argument("--batch", type=int, default=128)
    s.add_argument("--workers", type=int, default=None)
    s.add_argument("--repeats", type=int, default=2)
    s.add_argument("--seed", type=int, default=0)
    k = sub.add_parser("knn")
    k.add_argument("--methods", default=",".join(METHODS))
    k.add_argument("--n", type=int, default=5000)
    k.add_argument("--n-val", type=int, default=1000)
    k.add_argument("--epochs", type=int, default=5)
    k.add_argument("--model", default="cifar_resnet20", help="backbone instead of the recipes' (not SimMIM's ViT)")
    k.add_argument("--batch", type=int, default=None)
    k.add_argument("--workers", type=int, default=None)
    k.add_argument("--seed", type=int, default=0)
    k.add_argument("--progress", action="store_true")
    k.add_argument("--peer", action="store_true", help="also train SimCLR and BYOL in a plain loop with lightly's parts")
    f = sub.add_parser("finetune")
    f.add_argument("--n", type=int, default=5000)
    f.add_argument("--n-val", type=int, default=1000)
    f.add_argument("--pretrain-epochs", type=int, default=5)
    f.add_argument("--pretrain-lr", type=float, default=1e-3)
    f.add_argument("--epochs", type=int, default=3)
    f.add_argument("--lr", type=float, default=5e-4)
    f.add_argument("--batch", type=int, default=64)
    f.add_argument("--light", action="store_true", help="no RandAugment, random erasing, mixup or cutmix")
    f.add_argument("--workers", type=int, default=None)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--progress", action="store_true")
    args = ap.parse_args()
    if args.what == "knn":
        bad = [m for m in args.methods.split(",") if m.strip() not in METHODS]
        if bad:
            ap.error(f"unknown method(s) {', '.join(bad)}; choose from {', '.join(METHODS)}")
    from imgclass.errors import UsageError

    try:
        {"speed": speed, "knn": knn, "finetune": finetune}[args.what](args)
    except UsageError as e:  # a bad setting is one line, as in the CLI
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
