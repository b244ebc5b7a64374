"""``imgclass train DATA --model MODEL --recipe RECIPE --out DIR [--set KEY=VALUE ...]``."""

from __future__ import annotations

import argparse

INTERRUPTED = "interrupted; rerun the same command to resume"


def add_command(sub) -> None:
    from ..train.config import list_recipes

    p = sub.add_parser(
        "train", help="train a classifier with a recipe; resumable; torchrun for many processes",
        description="Train with a recipe (YAML of settings), overridden by --set. The resolved settings are "
                    "written to OUT/config.yaml; checkpoints (OUT/last.safetensors, best.safetensors) load with "
                    "`imgclass eval file:OUT/best.safetensors ...`; OUT/results.json and OUT/report.html hold the final "
                    "validation, the curves and the history, and the run is recorded in the run store. Rerunning the same command resumes (also after "
                    f"Ctrl-C). Shipped recipes: {', '.join(list_recipes())}.",
    )
    p.add_argument("data", nargs="?", help="training dataset spec (default: the recipe's)")
    p.add_argument("--model", help="architecture (cifar_resnet20, cifar_resnet9, timm:resnet50) or a model spec")
    p.add_argument("--recipe", help="a shipped recipe name or a YAML file")
    p.add_argument("--out", help="run folder (checkpoints, config.yaml, logs, TensorBoard events); required to train")
    p.add_argument("--val", help="validation dataset spec (default: the recipe's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    p.add_argument("--no-resume", action="store_true", help="refuse to continue an existing run in OUT")
    st = p.add_mutually_exclusive_group()
    st.add_argument("--store", metavar="URL", help="record the run in this run store (a SQLAlchemy URL; default: "
                                                   "$IMGCLASS_STORE, else $IMGCLASS_HOME/runs.db)")
    st.add_argument("--no-store", action="store_true", help="do not record the run in the run store")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--list-settings", action="store_true",
                   help="print every setting as this command resolves it (defaults < recipe < command line < --set), "
                        "marking where each non-default comes from, and exit")
    p.set_defaults(func=_run, interrupt_message=INTERRUPTED)


def _run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from ..errors import UsageError
    from ..train import train
    from ..train.config import resolve_settings

    given = {"data": args.data, "model": args.model, "val_data": args.val}
    cfg, origin = resolve_settings(args.recipe, args.set, command_line=given)
    if args.list_settings:
        _list_settings(cfg, origin)
        return 0
    if not args.out:
        raise UsageError("--out is required: the run folder for checkpoints, config.yaml and logs")
    if args.no_resume and (Path(args.out) / "last.safetensors").exists():
        raise UsageError(f"{args.out} already holds a run (remove --no-resume to continue it)")
    store = False if args.no_store else (args.store or True)
    result = train(cfg, args.out, resume=not args.no_resume, progress=not args.quiet, store=store,
                   command=sys.argv)
    best, knn = result["best_val_top1"], result.get("best_val_knn_top1")
    print(f"done: {args.out}" + (f", best validation top-1 {best:.4f}" if best is not None else "")
          + (f", best validation kNN top-1 {knn:.4f}" if knn is not None else ""))
    if result["results"] is not None:
        recorded = f" (run {result['run_id']} in the store)" if result["run_id"] is not None else ""
        print(f"wrote {Path(args.out) / 'results.json'} and {Path(args.out) / 'report.html'}{recorded}")
    return 0


def _list_settings(cfg, origin: dict[str, str]) -> None:
    import dataclasses

    width = max(len(f.name) for f in dataclasses.fields(cfg))
    for f in dataclasses.fields(cfg):
        where = origin.get(f.name)
        print(f"{f.name:<{width}}  {getattr(cfg, f.name)!r}" + (f"  ({where})" if where else ""))
