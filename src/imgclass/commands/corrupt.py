"""``imgclass corrupt SOURCE --corruption NAME --severity S --seed N --out DIR``: write corrupted images as PNG.

SOURCE is a dataset spec (``zoo:cifar10-lossless:test``, ``folder:DIR``, ``tar:x.tar``...) or a plain folder
of images at any depth (no class sub-folders needed). Images keep their size and their relative names,
with a ``.png`` extension. ``all`` as the corruption writes one folder per corruption, ``all`` as the
severity one folder per severity (``OUT/<corruption>/<severity>/<name>.png`` when both are ``all``).
The parameter set follows the image size unless ``--params`` names one: the CIFAR-10-C generator's for
images up to 64 px a side (as the ``corruptions`` probe does for 32 px models), imagecorruptions 1.1.2's
(ImageNet-C) for larger ones.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path, PurePosixPath

from ..errors import UsageError

SMALL_SIDE = 64  # images up to this size get the CIFAR-10-C parameters under --params auto (as the probe's rule)


def _epilog() -> str:
    from ..corruptions import CORRUPTIONS
    from ..probes.corruptions import FAMILIES

    rows = [f"  {fam:<8} {', '.join(n for n in names if n in CORRUPTIONS)}" for fam, names in FAMILIES.items()]
    return ("corruptions (--corruption NAME, or all):\n" + "\n".join(rows) +
            "\nseverities: 1 (mildest) to 5, or all")


def add_command(sub) -> None:
    p = sub.add_parser(
        "corrupt", help="write corrupted copies of images (ImageNet-C / CIFAR-10-C corruptions) as PNG",
        description=__doc__.split("\n\n", 1)[1], epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="dataset spec or a folder of images")
    p.add_argument("--corruption", required=True, help="a corruption name or 'all' (listed below)")
    p.add_argument("--severity", required=True, help="1..5 or 'all'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--params", choices=("auto", "imagenet", "cifar10"), default="auto",
                   help=f"parameter set: imagecorruptions 1.1.2 (ImageNet-C), the CIFAR-10-C generator, or auto "
                        f"(default: CIFAR-10-C for images up to {SMALL_SIDE} px a side, ImageNet-C above)")
    p.add_argument("--limit", type=int, default=None,
                   help="corrupt a seeded random subset of this many images (seed --seed), in dataset order")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_run)


def _out_name(sample_id: str) -> PurePosixPath:
    p = PurePosixPath(str(sample_id).replace("\\", "/"))
    parts = [q for q in p.parts if q not in ("", ".", "..", "/")]
    if not parts:
        raise UsageError(f"cannot make a file name of sample id {sample_id!r}")
    return PurePosixPath(*parts).with_suffix(".png")


def _batches(src, order, batch_size: int, skipped: list):
    """Consecutive readable images of one size, up to batch_size at a time: (ids, uint8 (N, 3, H, W))."""
    import torch

    from ..data.decode import ImageError

    ids, imgs = [], []
    for i in order:
        try:
            img = src.load(int(i))
        except (ImageError, OSError) as e:
            skipped.append((src.sample_id(int(i)), getattr(e, "reason", None) or str(e)))
            continue
        if imgs and (img.shape != imgs[0].shape or len(imgs) == batch_size):
            yield ids, torch.stack(imgs)
            ids, imgs = [], []
        ids.append(src.sample_id(int(i)))
        imgs.append(img)
    if imgs:
        yield ids, torch.stack(imgs)


def _params_for(requested: str, height: int, width: int) -> str:
    if requested != "auto":
        return requested
    return "cifar10" if max(height, width) <= SMALL_SIDE else "imagenet"


def _run(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image
    from tqdm.auto import tqdm

    from ..corruptions import CORRUPTIONS, corrupt
    from ..corruptions.base import REGISTRY
    from ..data import load_dataset
    from ..data.sources import FolderDataset
    from ..device import resolve_device

    names = list(CORRUPTIONS) if args.corruption == "all" else [args.corruption]
    REGISTRY[names[0]]  # an unknown name is a usage error naming the close matches and the list
    if args.severity == "all":
        sevs = [1, 2, 3, 4, 5]
    elif args.severity in {"1", "2", "3", "4", "5"}:
        sevs = [int(args.severity)]
    else:
        raise UsageError(f"--severity must be 1..5 or all, got {args.severity!r}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be at least 1, got {args.limit}")
    device = resolve_device(args.device)
    source = Path(args.source).expanduser()
    src = FolderDataset(source, labels="none") if source.is_dir() else load_dataset(args.source)
    order = np.arange(len(src))
    if args.limit is not None and args.limit < len(src):
        order = np.sort(np.random.default_rng(args.seed).choice(len(src), size=args.limit, replace=False))
    names_out = {src.sample_id(int(i)): _out_name(src.sample_id(int(i))) for i in order}
    dup = [n for n, k in Counter(names_out.values()).items() if k > 1]
    if dup:
        raise UsageError(f"several images would be written as {sorted(map(str, dup))[:3]} (same name, other "
                         "extension)")
    out = Path(args.out)
    skipped: list = []
    used: Counter = Counter()
    total = len(order) * len(names) * len(sevs)
    with tqdm(total=total, desc="corrupting", unit="img", disable=args.quiet, dynamic_ncols=True) as bar:
        for ids, batch in _batches(src, order, args.batch_size, skipped):
            pset = _params_for(args.params, *batch.shape[-2:])
            used[pset] += len(ids)
            batch = batch.to(device)
            for name in names:
                for s in sevs:
                    y = corrupt(batch, name, s, seed=args.seed, sample_ids=ids, params=pset)
                    arr = y.permute(0, 2, 3, 1).cpu().numpy()
                    folder = out / (name if len(names) > 1 else "") / (str(s) if len(sevs) > 1 else "")
                    for sid, a in zip(ids, arr):
                        path = folder / names_out[sid]
                        path.parent.mkdir(parents=True, exist_ok=True)
                        Image.fromarray(np.ascontiguousarray(a)).save(path, compress_level=3)
                    bar.update(len(ids))
    written = sum(used.values()) * len(names) * len(sevs)
    what = ", ".join(names) if len(names) < 4 else f"{len(names)} corruptions"
    params = " and ".join(f"{_PARAM_NAMES[p]} parameters for {k} image(s)" if len(used) > 1 else
                          f"{_PARAM_NAMES[p]} parameters" for p, k in sorted(used.items())) or "no images"
    how = "" if args.params != "auto" else f" (chosen by image size: CIFAR-10-C up to {SMALL_SIDE} px a side, ImageNet-C above)"
    subset = f", a seeded subset of {len(order)} of {len(src)}" if len(order) < len(src) else ""
    print(f"wrote {written} images to {out} ({what}, severity {args.severity}, {params}{how}, seed {args.seed}"
          f"{subset})")
    for sid, reason in skipped:
        print(f"skipped {sid}: {reason}", file=sys.stderr)
    return 0


_PARAM_NAMES = {"imagenet": "ImageNet-C (imagecorruptions 1.1.2)", "cifar10": "CIFAR-10-C"}
