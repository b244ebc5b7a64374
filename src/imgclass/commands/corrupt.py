"""``imgclass corrupt SOURCE --corruption NAME --severity S --seed N --out DIR``: write corrupted images as PNG.

SOURCE is a dataset spec (``zoo:cifar10-lossless:test``, ``folder:DIR``, ``tar:x.tar``...) or a plain folder
of images at any depth (no class sub-folders needed). Images keep their size and their relative names,
with a ``.png`` extension. ``all`` as the corruption writes one folder per corruption, ``all`` as the
severity one folder per severity (``OUT/<corruption>/<severity>/<name>.png`` when both are ``all``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path, PurePosixPath

from ..errors import UsageError


def add_command(sub) -> None:
    p = sub.add_parser(
        "corrupt", help="write corrupted copies of images (ImageNet-C / CIFAR-10-C corruptions) as PNG",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="dataset spec or a folder of images")
    p.add_argument("--corruption", required=True, help="a corruption name or 'all' (see the list below)")
    p.add_argument("--severity", required=True, help="1..5 or 'all'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--params", choices=("imagenet", "cifar10"), default="imagenet",
                   help="parameter set: imagecorruptions 1.1.2 (ImageNet-C) or the CIFAR-10-C generator")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_run)


class _FolderImages:
    """Every image file below a folder, by relative path (hidden files and folders ignored)."""

    def __init__(self, root: Path):
        from ..data.decode import IMAGE_EXTENSIONS

        self.root = root
        self.files = []
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            base = Path(dirpath).relative_to(root)
            self.files += [(base / f).as_posix() for f in sorted(filenames)
                           if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
        if not self.files:
            raise UsageError(f"no image files in {root}")

    def __len__(self) -> int:
        return len(self.files)

    def sample_id(self, i: int) -> str:
        return self.files[i]

    def load(self, i: int):
        import torch

        from ..data.decode import decode_image

        path = self.root / self.files[i]
        return torch.from_numpy(decode_image(path.read_bytes(), str(path))).permute(2, 0, 1)


def _out_name(sample_id: str) -> PurePosixPath:
    p = PurePosixPath(str(sample_id).replace("\\", "/"))
    parts = [q for q in p.parts if q not in ("", ".", "..", "/")]
    if not parts:
        raise UsageError(f"cannot make a file name of sample id {sample_id!r}")
    return PurePosixPath(*parts).with_suffix(".png")


def _batches(src, batch_size: int, skipped: list):
    """Consecutive readable images of one size, up to batch_size at a time: (ids, uint8 (N, 3, H, W))."""
    import torch

    from ..data.decode import ImageError

    ids, imgs = [], []
    for i in range(len(src)):
        try:
            img = src.load(i)
        except (ImageError, OSError) as e:
            skipped.append((src.sample_id(i), str(e)))
            continue
        if imgs and (img.shape != imgs[0].shape or len(imgs) == batch_size):
            yield ids, torch.stack(imgs)
            ids, imgs = [], []
        ids.append(src.sample_id(i))
        imgs.append(img)
    if imgs:
        yield ids, torch.stack(imgs)


def _run(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image
    from tqdm.auto import tqdm

    from ..corruptions import CORRUPTIONS, corrupt

    names = list(CORRUPTIONS) if args.corruption == "all" else [args.corruption]
    if names[0] not in CORRUPTIONS:
        print(f"error: unknown corruption {args.corruption!r}; known: {', '.join(CORRUPTIONS)}, all", file=sys.stderr)
        return 2
    if args.severity == "all":
        sevs = [1, 2, 3, 4, 5]
    elif args.severity in {"1", "2", "3", "4", "5"}:
        sevs = [int(args.severity)]
    else:
        print(f"error: severity must be 1..5 or all, got {args.severity!r}", file=sys.stderr)
        return 2
    source = Path(args.source).expanduser()
    if source.is_dir():
        src = _FolderImages(source)
    else:
        from ..data import load_dataset

        src = load_dataset(args.source)
    names_out = [_out_name(src.sample_id(i)) for i in range(len(src))]
    dup = [n for n, k in Counter(names_out).items() if k > 1]
    if dup:
        print(f"error: several images would be written as {sorted(map(str, dup))[:3]} (same name, other extension)",
              file=sys.stderr)
        return 2
    out_of = {src.sample_id(i): n for i, n in enumerate(names_out)}
    out = Path(args.out)
    skipped: list = []
    total = len(src) * len(names) * len(sevs)
    with tqdm(total=total, desc="corrupting", unit="img", disable=args.quiet, dynamic_ncols=True) as bar:
        for ids, batch in _batches(src, max(1, args.batch_size), skipped):
            batch = batch.to(args.device)
            for name in names:
                for s in sevs:
                    y = corrupt(batch, name, s, seed=args.seed, sample_ids=ids, params=args.params)
                    arr = y.permute(0, 2, 3, 1).cpu().numpy()
                    folder = out / (name if len(names) > 1 else "") / (str(s) if len(sevs) > 1 else "")
                    for sid, a in zip(ids, arr):
                        path = folder / out_of[sid]
                        path.parent.mkdir(parents=True, exist_ok=True)
                        Image.fromarray(np.ascontiguousarray(a)).save(path, compress_level=3)
                    bar.update(len(ids))
    written = (len(src) - len(skipped)) * len(names) * len(sevs)
    print(f"wrote {written} images to {out} ({', '.join(names) if len(names) < 4 else f'{len(names)} corruptions'}, "
          f"severity {args.severity}, {args.params} parameters, seed {args.seed})")
    for sid, reason in skipped:
        print(f"skipped {sid}: {reason}")
    return 0
