"""``imgclass explain MODEL IMAGE... --method gradcam,ig --out DIR [--save-npy] [--target CLASS] [--layer NAME]``."""

from __future__ import annotations

import argparse

from ..errors import UsageError


def add_command(sub) -> None:
    p = sub.add_parser(
        "explain", help="attribution maps of image files: overlay PNGs and, with --save-npy, the raw maps",
        description="Explain a model's decision on image files. Each image is decoded and resized/cropped as the "
                    "model's evaluation does; for every method, OUT/<image-stem>.<method>.png is the image blended "
                    "with a colormap of the map, and with --save-npy OUT/<image-stem>.<method>.npy holds the raw "
                    "(H, W) float32 map at the model's input resolution. Methods: saliency, input_x_gradient, "
                    "smoothgrad, ig, guided_backprop, deconvnet, gradcam, gradcam++, scorecam, occlusion, rise, "
                    "extremal.",
    )
    p.add_argument("model", help="model spec (timm:..., zoo:..., file:..., onnx:..., tflite:...)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or folders of images (any depth)")
    p.add_argument("--method", default="gradcam", help="comma-separated methods (default: gradcam)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--save-npy", action="store_true", help="also write the raw maps as .npy")
    p.add_argument("--target", help="class to explain (index, name or wnid; default: the predicted class)")
    p.add_argument("--layer", help="layer for CAM methods (a module name of the model; default: chosen per model)")
    p.add_argument("--set", action="append", default=[], metavar="METHOD.PARAM=VALUE",
                   help="a method parameter, e.g. ig.steps=32 or rise.n_masks=2000")
    p.add_argument("--internal-batch-size", type=int, default=32, help="images per forward pass inside a method")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--alpha", type=float, default=0.5, help="opacity of the colormap in the overlays")
    p.set_defaults(func=_run)


def _stems(paths: list[str]) -> list[str]:
    from pathlib import Path

    seen: dict[str, int] = {}
    out = []
    for p in paths:
        s = Path(p).stem
        seen[s] = seen.get(s, 0) + 1
        out.append(s if seen[s] == 1 else f"{s}-{seen[s]}")
    return out


def _run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    import numpy as np
    import torch

    from ..data.decode import ImageError
    from ..explain import METHODS, explain, load_images, overlay
    from ..explain.base import class_index
    from ..explain.cam import cam_layer
    from ..device import resolve_device
    from ..explain.images import image_files, save_png
    from ..settings import parse_sets
    from ..models import load_model

    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    for m in methods:
        METHODS[m]  # an unknown name is a usage error with the close matches and the list
    params = parse_sets(args.set, form="METHOD.PARAM=VALUE", groups=methods)
    if args.layer:
        takers = [m for m in methods if "layer" in METHODS[m].params]
        if not takers:
            print(f"error: --layer applies to CAM methods (gradcam, gradcam++, scorecam), not {args.method}",
                  file=sys.stderr)
            return 2
        for m in takers:
            params.setdefault(m, {})["layer"] = args.layer
    for m in methods:
        METHODS[m].check_params(params.get(m, {}))
    missing = [p for p in args.images if not Path(p).exists()]
    if missing:
        print(f"error: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    files = [str(f) for p in args.images for f in (image_files(p) if Path(p).is_dir() else [p])]
    device = resolve_device(args.device)
    clf = load_model(args.model, device=device)
    if args.layer:
        cam_layer(clf, args.layer)  # a missing layer is reported before any work
    try:
        images = load_images(files, clf.config)
    except ImageError as e:
        print(f"error: {e.path}: {e.reason}", file=sys.stderr)
        return 1
    x = images.float().div(255).to(device)
    with torch.no_grad():
        probs = torch.softmax(clf(x).float(), 1)
    try:
        t = probs.argmax(1) if args.target is None else \
            torch.full((len(x),), class_index(clf, args.target), dtype=torch.long, device=device)
        if int(t.max()) >= clf.num_classes or int(t.min()) < 0:
            raise UsageError(f"--target {args.target}: class indices run from 0 to {clf.num_classes - 1}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stems = _stems(files)
    names = clf.class_names
    for i, (path, stem) in enumerate(zip(files, stems)):
        top = int(probs[i].argmax())
        print(f"{path}: predicted {names[top]} ({float(probs[i, top]):.3f}); explaining {names[int(t[i])]} "
              f"({float(probs[i, int(t[i])]):.3f})")
    for m in methods:
        maps = explain(clf, x, t, method=m, internal_batch_size=args.internal_batch_size, **params.get(m, {}))
        for i, stem in enumerate(stems):
            mp = maps[i].float().cpu()
            save_png(overlay(images[i], mp, alpha=args.alpha), out / f"{stem}.{m}.png")
            if args.save_npy:
                np.save(out / f"{stem}.{m}.npy", mp.numpy().astype(np.float32))
        print(f"{m}: wrote {len(stems)} overlay(s)" + (" and map(s)" if args.save_npy else "") + f" to {out}")
    return 0
