"""``imgclass diagnose DATA [--model SPEC ...] [--probs FILE.npy] [--against DATA2] --checks C1,C2 --out DIR``."""

from __future__ import annotations

import argparse
import sys


def add_command(sub) -> None:
    import dataclasses
    import textwrap

    from ..diagnose import CHECKS

    def params(cls) -> str:
        return ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(cls.Params)) or "none"

    description = (
        "Run data checks on DATA and write OUT/results.json, OUT/report.html (galleries of the flagged images) and "
        "OUT/issues.csv (one row per flagged sample). Probabilities come from --model (one or more, averaged: models "
        "not trained on DATA), --probs (an N x K .npy in dataset order) or --cv K --recipe R (K models trained on "
        "folds, each predicting the fold it did not see); features from the first --model. Checks: "
        + "; ".join(f"{n}: {c.description}" for n, c in sorted(CHECKS.items())) + ".")
    epilog = "check parameters (--set CHECK.PARAM=VALUE):\n" + "\n".join(
        f"  {n}: {params(c)}" for n, c in sorted(CHECKS.items()))
    p = sub.add_parser(
        "diagnose", help="find problems in the data: label issues, duplicates and leakage, outliers, error slices",
        description=textwrap.fill(description, width=100), epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data", help="dataset spec, e.g. zoo:cifar10-jpeg:test-official, folder:DIR")
    p.add_argument("--model", action="append", default=[], metavar="SPEC",
                   help="a model for probabilities and features (repeat for several; probabilities are averaged)")
    p.add_argument("--probs", metavar="FILE.npy", help="out-of-sample probabilities, N x K in dataset order")
    p.add_argument("--against", metavar="DATA2", help="a second dataset for leakage (e.g. the training set)")
    p.add_argument("--checks", default="label_issues", help="comma-separated checks (default: %(default)s)")
    p.add_argument("--relabel", metavar="FILE.csv", help="corrected labels (sample_id,label) to re-score accuracy with")
    p.add_argument("--cv", type=int, metavar="K", help="cross-validated probabilities: train K models with --recipe "
                   "(and training settings as --set KEY=VALUE), each predicting its held-out fold")
    p.add_argument("--recipe", help="training recipe for --cv (see `imgclass train --help`)")
    p.add_argument("--cv-model", metavar="ARCH", help="architecture for --cv (default: the recipe's)")
    p.add_argument("--out", help="output folder for results.json, report.html and issues.csv")
    p.add_argument("--set", action="append", default=[], metavar="CHECK.PARAM=VALUE",
                   help="a check's parameter; with --cv, KEY=VALUE (no dot) is a training setting")
    p.add_argument("--limit", type=int, help="diagnose a seeded random subset of this many samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--on-error", choices=["skip", "fail"], default="skip",
                   help="unreadable images: skip and list them (default) or stop with an error")
    p.add_argument("--store", default=None, metavar="URL", help="record the run in this store (a SQLAlchemy URL)")
    p.add_argument("--no-store", action="store_true", help="do not record the run in the run store")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..diagnose import CHECKS
    from ..diagnose.run import diagnose
    from ..settings import parse_sets

    checks = [c.strip() for c in args.checks.split(",") if c.strip()]
    training = [s for s in args.set if "." not in s.split("=", 1)[0]] if args.cv else []
    params = parse_sets([s for s in args.set if s not in training], form="CHECK.PARAM=VALUE")
    res = diagnose(args.data, models=args.model, probs=args.probs, against=args.against, checks=checks,
                   check_params=params, relabel=args.relabel, cv=args.cv, recipe=args.recipe,
                   train_settings=training, cv_model=args.cv_model, out=args.out, limit=args.limit, seed=args.seed,
                   batch_size=args.batch_size, workers=args.workers, device=args.device, on_error=args.on_error,
                   progress=not args.quiet, store=False if args.no_store else (args.store or True), command=sys.argv)
    print(f"\n{res['data']['spec']}: {res['data']['n_samples']} samples; probabilities: "
          f"{res['settings'].get('probabilities') or '-'}")
    for name, r in res["probes"].items():
        typed = CHECKS[name].Result.model_validate(r)
        for k, v in CHECKS[name]().summary(typed):
            print(f"  {name:<14} {k}: {v}")
        print(f"  {name:<14} flagged: {r['n_flagged']}")
    resc = res.get("rescoring")
    if resc:
        line = f"accuracy {resc['accuracy']:.4f}"
        if "label_issues" in res["probes"]:
            line += f"; without the {resc['n_label_issues_removed']} label issues " \
                    f"{resc['accuracy_without_label_issues']:.4f}"
        if resc.get("accuracy_relabeled") is not None:
            line += f"; with corrected labels {resc['accuracy_relabeled']:.4f}"
        print("  " + line)
    for w in res.get("warnings", []):
        print(f"warning: {w}")
    if args.out:
        out = Path(args.out)
        print(f"\nwrote {out / 'results.json'}, {out / 'report.html'} and {out / 'issues.csv'}")
    if res.get("run_id") is not None:
        print(f"recorded as run {res['run_id']}")
    return 0
