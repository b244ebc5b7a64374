"""Command line: a thin layer that parses, calls the library and prints."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["main"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _probe_flag_params(args, probes: list[str]) -> dict[str, dict]:
    """Values of the probes' own eval flags (``--eps`` ...), for the probes that run."""
    from .probes import PROBES

    out: dict[str, dict] = {}
    for name in probes:
        for f in PROBES[name].cli_flags:
            raw = getattr(args, _flag_dest(f.flag), None)
            if raw is not None:
                out.setdefault(name, {})[f.param] = f.parse(raw)
    return out


def _flag_dest(flag: str) -> str:
    return "probeflag_" + flag.lstrip("-").replace("-", "_")


def _cmd_eval(args) -> int:
    from .evaluate import evaluate
    from .settings import parse_sets

    probes = [p.strip() for p in args.probes.split(",") if p.strip()]
    params = _probe_flag_params(args, probes)
    for probe, kv in parse_sets(args.set, form="PROBE.PARAM=VALUE").items():
        params.setdefault(probe, {}).update(kv)
    results = evaluate(
        args.model, args.data, probes=probes, probe_params=params, out=args.out,
        batch_size=args.batch_size, workers=args.workers, device=args.device, limit=args.limit, seed=args.seed,
        on_error=args.on_error, amp=args.amp, fast=not args.no_fast, progress=not args.quiet, command=sys.argv,
        store=False if args.no_store else (args.store or True),
    )
    if results["settings"]["world_size"] > 1 and not _is_main():
        return EXIT_OK
    _print_summary(results)
    if args.out:
        print(f"\nwrote {Path(args.out) / 'results.json'} and {Path(args.out) / 'report.html'}")
    if results.get("run_id") is not None:
        print(f"recorded as run {results['run_id']} (imgclass runs show {results['run_id']})")
    return EXIT_OK


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _print_summary(results: dict) -> None:
    from .probes import PROBES

    rows = []
    for name, res in results["probes"].items():
        rows += [(name, k, v) for k, v in PROBES[name]().summary(res)]
    t = results.get("timing", {})
    if t.get("images_per_second"):
        rows.append(("timing", "images/s", f"{t['images_per_second']:.1f}"))
    w1 = max([len(r[0]) for r in rows] + [5])
    w2 = max([len(r[1]) for r in rows] + [6])
    print(f"\n{results['model']['spec']}  on  {results['data']['spec']}")
    print(f"{'probe':<{w1}}  {'metric':<{w2}}  value")
    print(f"{'-' * w1}  {'-' * w2}  {'-' * 12}")
    for a, b, c in rows:
        print(f"{a:<{w1}}  {b:<{w2}}  {c}")
    for w in results.get("warnings", []):
        print(f"warning: {w}")
    for s in results.get("skipped", [])[:20]:
        print(f"skipped: {s['path']}: {s['reason']}")
    if len(results.get("skipped", [])) > 20:
        print(f"skipped: ... and {len(results['skipped']) - 20} more (see results.json)")


def _cmd_models(args) -> int:
    from .assets import asset_status, get_asset
    from .models import MODEL_SOURCES, ZOO_MODELS

    print("model sources:")
    for e in MODEL_SOURCES.values():
        print(f"  {e.help}")
    print("\nregistered models (zoo:NAME):")
    for name, z in sorted(ZOO_MODELS.items()):
        status = ", ".join(sorted({asset_status(get_asset(a)) for a in z.assets})) or "-"
        print(f"  zoo:{name:<32} [{status}] {z.help}")
    print("\nany timm model: timm:NAME (e.g. timm:resnet50.a1_in1k); `python -c 'import timm; "
          "print(timm.list_pretrained())'` lists them")
    return EXIT_OK


def _cmd_datasets(args) -> int:
    from .assets import asset_status, get_asset
    from .data import DATASET_SOURCES, ZOO_DATASETS

    print("dataset sources:")
    for e in DATASET_SOURCES.values():
        print(f"  {e.help}")
    print("\nregistered datasets (zoo:NAME:SPLIT):")
    for name, z in sorted(ZOO_DATASETS.items()):
        status = ", ".join(sorted({asset_status(get_asset(a)) for a in z.assets})) or "-"
        print(f"  zoo:{name:<20} splits {'/'.join(z.splits):<11} [{status}] {z.help}")
    return EXIT_OK


def _cmd_probes(args) -> int:
    import dataclasses

    from .probes import PROBES

    def shown(f: dataclasses.Field) -> str:
        if f.default is not dataclasses.MISSING:
            return f"{f.name}={f.default!r}"
        if f.default_factory is not dataclasses.MISSING:
            return f"{f.name}={f.default_factory()!r}"
        return f"{f.name} (required)"

    for name, cls in sorted(PROBES.items()):
        params = ", ".join(shown(f) for f in dataclasses.fields(cls.Params))
        flags = ", ".join(f"{f.flag} ({f.param})" for f in cls.cli_flags)
        print(f"{name:<14} {cls.description}\n{'':<14} parameters (--set {name}.PARAM=VALUE): {params or 'none'}")
        if flags:
            print(f"{'':<14} eval flags: {flags}")
    return EXIT_OK


def _cmd_assets(args) -> int:
    from .assets import ASSETS, HOME_ENV, MIRROR_ENV, asset_status, fetch, home_dir, mirror_dir

    if args.fetch:
        for name in args.fetch:
            print(f"{name}: {fetch(name)}")
        return EXIT_OK
    print(f"cache ({HOME_ENV}): {home_dir() / 'assets'}")
    print(f"mirror ({MIRROR_ENV}): {mirror_dir() or '(not set)'}\n")
    bad = 0
    for name, a in sorted(ASSETS.items()):
        status = asset_status(a)
        if args.verify and status != "missing":
            try:
                fetch(name, download=False, progress=False)
                status += ", verified"
            except Exception as e:  # report every problem, continue with the rest
                status += f", BAD: {e}"
                bad += 1
        print(f"{name:<38} {status:<10} {a.kind:<8} {a.license:<34} {a.url or 'derived copy of ' + str(a.source)}")
    return EXIT_ERROR if bad else EXIT_OK


def _cmd_report(args) -> int:
    from .report import render_report
    from .results import load

    results = load(args.results)
    path = Path(args.results)
    out = args.out or str((path if path.is_dir() else path.parent) / "report.html")
    render_report(results).write(out)
    print(f"wrote {out}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="imgclass", description="Evaluate, explain, stress-test and train image classifiers.")
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("eval", help="run probes on a model and a dataset; write results.json and report.html")
    e.add_argument("model", help="model spec, e.g. zoo:cifar10-resnet20, timm:resnet50.a1_in1k, onnx:net.onnx?...")
    e.add_argument("data", help="dataset spec, e.g. zoo:cifar10-lossless:test, folder:DIR, tar:x.tar.gz")
    e.add_argument("--probes", default="accuracy,calibration", help="comma-separated probe names (see `imgclass probes`)")
    e.add_argument("--out", help="output folder for results.json and report.html")
    e.add_argument("--batch-size", type=int, default=128)
    e.add_argument("--workers", type=int, default=None, help="data loader processes (default: by CPU count)")
    e.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    e.add_argument("--limit", type=int, default=None, help="evaluate a seeded random subset of this many samples")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--on-error", choices=["skip", "fail"], default="skip",
                   help="unreadable images: skip and list them (default) or stop with an error")
    e.add_argument("--amp", action="store_true",
                   help="mixed precision: float16 autocast on CUDA, bfloat16 on CPUs with native bfloat16 support")
    e.add_argument("--no-fast", action="store_true",
                   help="predict with the model as loaded, not its frozen inference copy (batch norm folded, "
                        "channels-last; used only when its logits match)")
    e.add_argument("--set", action="append", default=[], metavar="PROBE.PARAM=VALUE", help="probe parameter")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    e.add_argument("--store", default=None, metavar="URL",
                   help="record the run in this store, a SQLAlchemy URL (default: $IMGCLASS_STORE, else "
                        "$IMGCLASS_HOME/runs.db)")
    e.add_argument("--no-store", action="store_true", help="do not record the run in the run store")
    e.set_defaults(func=_cmd_eval)
    from .probes import PROBES

    seen: set[str] = set()
    for name, cls in sorted(PROBES.items()):
        flags = [f for f in cls.cli_flags if f.flag not in seen]
        if flags:
            g = e.add_argument_group(f"probe {name}")
            for f in flags:
                g.add_argument(f.flag, dest=_flag_dest(f.flag), default=None, help=f.help,
                               metavar=f.param.upper())
                seen.add(f.flag)

    sub.add_parser("models", help="list model sources and registered models").set_defaults(func=_cmd_models)
    sub.add_parser("datasets", help="list dataset sources and registered datasets").set_defaults(func=_cmd_datasets)
    sub.add_parser("probes", help="list probes and their parameters").set_defaults(func=_cmd_probes)
    a = sub.add_parser("assets", help="list registered assets and whether each is cached, mirrored or missing")
    a.add_argument("--verify", action="store_true", help="also verify checksums of present files")
    a.add_argument("--fetch", nargs="+", metavar="NAME", help="fetch these assets into the cache")
    a.set_defaults(func=_cmd_assets)
    r = sub.add_parser("report", help="re-render report.html from a results.json")
    r.add_argument("results")
    r.add_argument("--out")
    r.set_defaults(func=_cmd_report)
    from .commands import add_all

    add_all(sub)  # feature packages' own subcommands (imgclass/commands/*.py)
    return p


def _add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """``--debug`` before or after the subcommand (nested ones too: ``runs list --debug``): tracebacks behind
    one-line errors."""
    for action in parser._actions:  # argparse keeps its subparsers here; no public accessor
        if isinstance(action, argparse._SubParsersAction):
            for sp in action.choices.values():
                if "--debug" not in sp._option_string_actions:
                    sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                    help="show the traceback behind an error")
                _add_debug_flag(sp)


def main(argv: list[str] | None = None) -> int:
    """Run a command; errors print as one line: exit 2 for usage errors, 1 for data and run errors,
    130 when interrupted. ``--debug`` (or IMGCLASS_DEBUG=1) adds the traceback."""
    from .engine import BadImageError
    from .errors import ImgclassError, UsageError

    parser = build_parser()
    parser.add_argument("--debug", action="store_true", help="show the traceback behind an error")
    _add_debug_flag(parser)
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False) or os.environ.get("IMGCLASS_DEBUG"))
    try:
        return args.func(args)
    except KeyboardInterrupt:
        _traceback(debug)
        print(getattr(args, "interrupt_message", "interrupted"), file=sys.stderr)
        return EXIT_INTERRUPTED
    except BadImageError as e:
        _traceback(debug)
        print(f"error: unreadable image {e.path}: {e.reason} (run with --on-error skip to list and skip such files)",
              file=sys.stderr)
        return EXIT_ERROR
    except UsageError as e:
        _traceback(debug)
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except (ImgclassError, OSError) as e:
        _traceback(debug)
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:  # noqa: BLE001 - anything else is a bug: say so in one line
        import torch

        _traceback(debug)
        if isinstance(e, torch.OutOfMemoryError):
            print(f"error: out of memory on the device ({_one_line(e)[:200]}); lower --batch-size", file=sys.stderr)
            return EXIT_ERROR
        hint = "" if debug else "; rerun with --debug for the traceback"
        print(f"error: internal error, {type(e).__name__}: {_one_line(e)} (a bug in imgclass{hint})", file=sys.stderr)
        return EXIT_ERROR


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    first = text.splitlines()[0]
    return first if len(text.splitlines()) == 1 else first + " ..."


def _traceback(debug: bool) -> None:
    if debug:
        import traceback

        traceback.print_exc()
