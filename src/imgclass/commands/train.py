"""``imgclass train DATA --model MODEL --recipe RECIPE --out DIR [--set KEY=VALUE ...]``."""

from __future__ import annotations

import argparse


def add_command(sub) -> None:
    from ..train.config import list_recipes

    p = sub.add_parser(
        "train", help="train a classifier with a recipe; resumable; torchrun for many processes",
        description="Train with a recipe (YAML of settings), overridden by --set. The resolved settings are "
                    "written to OUT/config.yaml; checkpoints (OUT/last.safetensors, best.safetensors) load with "
                    "`imgclass eval file:OUT/best.safetensors ...`. Rerunning the same command resumes. "
                    f"Shipped recipes: {', '.join(list_recipes())}.",
    )
    p.add_argument("data", nargs="?", help="training dataset spec (default: the recipe's)")
    p.add_argument("--model", help="architecture (cifar_resnet20, cifar_resnet9, timm:resnet50) or a model spec")
    p.add_argument("--recipe", help="a shipped recipe name or a YAML file")
    p.add_argument("--out", required=True, help="run folder (checkpoints, config.yaml, logs, TensorBoard events)")
    p.add_argument("--val", help="validation dataset spec (default: the recipe's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    p.add_argument("--no-resume", action="store_true", help="refuse to continue an existing run in OUT")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--list-settings", action="store_true", help="print every setting with its default and exit")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import dataclasses

    from ..train import TrainConfig, apply_overrides, load_recipe, train

    if args.list_settings:
        for f in dataclasses.fields(TrainConfig):
            print(f"{f.name:<18} {getattr(TrainConfig(), f.name)!r}")
        return 0
    settings = load_recipe(args.recipe)
    for key, value in (("data", args.data), ("model", args.model), ("val_data", args.val)):
        if value:
            settings[key] = value
    cfg = TrainConfig.from_dict(apply_overrides(settings, args.set))
    from pathlib import Path

    if args.no_resume and (Path(args.out) / "last.safetensors").exists():
        print(f"error: {args.out} already holds a run (remove --no-resume to continue it)")
        return 2
    result = train(cfg, args.out, resume=not args.no_resume, progress=not args.quiet)
    best = result["best_val_top1"]
    print(f"done: {args.out}" + (f", best validation top-1 {best:.4f}" if best is not None else ""))
    return 0
