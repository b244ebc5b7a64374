"""``imgclass runs list|show|rm|import``: the run store from the command line (see :mod:`imgclass.store`)."""

from __future__ import annotations

import argparse
import json
import shlex

STORE_HELP = ("run store: a SQLAlchemy URL (sqlite:///PATH, postgresql://USER@HOST/DB) or a SQLite file path "
              "(default: $IMGCLASS_STORE, else runs.db in the imgclass home folder)")
HEADLINE_COLUMNS = 3  # headline numbers `runs list` shows per run


def add_command(sub) -> None:
    p = sub.add_parser("runs", help="the run store: list, show, remove and import runs",
                       description="Every run recorded in the run store (a SQLite file or a PostgreSQL database). "
                                   "`imgclass runs import DIR` indexes existing results.json files.")
    add_runs_subcommands(p.add_subparsers(dest="runs_command", required=True, metavar="SUBCOMMAND"))


def store_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--store URL`` (shared by every command that reads or writes the run store)."""
    parser.add_argument("--store", metavar="URL", default=None, help=STORE_HELP)


def add_runs_subcommands(runs_sub) -> None:
    """The ``imgclass runs`` subcommands (other commands on the store add theirs here)."""
    ls = runs_sub.add_parser("list", help="runs, newest first, with their headline numbers")
    ls.add_argument("--model", help="runs whose model spec, group or label contains this (case-insensitive)")
    ls.add_argument("--data", help="runs whose data spec contains this (case-insensitive)")
    ls.add_argument("--probe", help="runs that ran this probe")
    ls.add_argument("--kind", help="eval, train, diagnose ...")
    ls.add_argument("--limit", type=int, help="at most this many runs")
    store_argument(ls)
    ls.set_defaults(func=_list)

    show = runs_sub.add_parser("show", help="everything the store holds about one run")
    show.add_argument("id", type=int)
    store_argument(show)
    show.set_defaults(func=_show)

    rm = runs_sub.add_parser("rm", help="remove runs from the store (their files stay)")
    rm.add_argument("ids", type=int, nargs="+", metavar="ID")
    store_argument(rm)
    rm.set_defaults(func=_rm)

    imp = runs_sub.add_parser("import", help="index results.json files (folders are searched recursively)")
    imp.add_argument("paths", nargs="+", metavar="DIR_OR_FILE")
    imp.add_argument("--quiet", action="store_true", help="no progress bar")
    store_argument(imp)
    imp.set_defaults(func=_import)

    from .leaderboard import add_compare  # `runs compare` lives beside the leaderboard

    if "compare" not in runs_sub.choices:
        add_compare(runs_sub)


def _open(args):
    from ..store import open_store

    return open_store(args.store)


def _list(args: argparse.Namespace) -> int:
    from ..errors import UsageError

    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be at least 1 (got {args.limit})")
    with _open(args) as store:
        runs = store.list(kind=args.kind, model=args.model, data=args.data, probe=args.probe, limit=args.limit)
        shown = store.url
    if not runs:
        print(f"no runs in {shown}" + (" match" if any((args.kind, args.model, args.data, args.probe)) else ""))
        return 0
    header = ("id", "created", "kind", "model", "data", "probes", "headline")
    rows = [(str(r.id), _short_time(r.created), r.kind, r.model_label, r.data_spec, _probes(r.probes),
             _headline_cells(r)) for r in runs]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header[:-1])]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    return 0


def _show(args: argparse.Namespace) -> int:
    with _open(args) as store:
        r = store.get(args.id)
    model = r.model_spec if r.model_label == r.model_spec else f"{r.model_label} ({r.model_spec})"
    fields = [
        ("kind", r.kind), ("status", r.status), ("created", r.created), ("model", model),
        ("model group", r.model_group), ("weights sha256", r.weights_sha256), ("data", r.data_spec),
        ("files sha256", r.files_sha256), ("probes", ", ".join(r.probes)), ("seed", r.seed), ("device", r.device),
        ("versions", ", ".join(f"{k} {v}" for k, v in r.versions.items())),
        ("command", shlex.join(r.command) if r.command else None),
        ("results", r.results_path), ("results sha256", r.results_sha256), ("report", r.report_path),
    ]
    print(f"run {r.id}")
    _print_pairs(fields, indent="  ")
    print("headline")
    _print_pairs([(k, format_number(v)) for k, v in r.headline.items()], indent="  ")
    print("protocols")
    for probe, protocol in r.protocols.items():
        print(f"  {probe}")
        _print_pairs([(k, v) for k, v in protocol.items()], indent="    ")
    print("probe parameters")
    _print_pairs([(k, v) for k, v in r.probe_params.items()], indent="  ")
    print("timings")
    _print_pairs([(k, format_number(v)) for k, v in r.timings.items()], indent="  ")
    return 0


def _rm(args: argparse.Namespace) -> int:
    with _open(args) as store:
        for run_id in dict.fromkeys(args.ids):
            store.get(run_id)  # every id must exist before anything is removed
        for run_id in dict.fromkeys(args.ids):
            store.remove(run_id)
            print(f"removed run {run_id}")
    return 0


def _import(args: argparse.Namespace) -> int:
    indexed: list[tuple[int, str]] = []
    with _open(args) as store:
        ids, skipped = store.import_paths(args.paths, progress=not args.quiet,
                                          on_record=lambda run_id, path: indexed.append((run_id, path)))
        shown = store.url
    for run_id, path in indexed:
        print(f"run {run_id}: {path}")
    for path, reason in skipped:
        print(f"skipped {path}: {reason}")
    print(f"indexed {len(ids)} run(s) into {shown}, skipped {len(skipped)}")
    unreadable = [p for p, reason in skipped if not reason.startswith("already in the store")]
    return 1 if unreadable and not ids else 0  # nothing indexed and something unreadable: a typo, say so


# -- formatting ---------------------------------------------------------------------------------------------------

def _short_time(created: str) -> str:
    return created[:16].replace("T", " ")


def _probes(probes: list[str], width: int = 40) -> str:
    text = ",".join(probes)
    return text if len(text) <= width else text[:width - 3] + "..."


def _headline_cells(run) -> str:
    """Up to a few headline numbers: each probe's primary metric (else its first), in the order the probes ran."""
    from ..results import result_type

    cells = []
    for probe in run.probes:
        keys = [k for k in run.headline if k.startswith(probe + ".")]
        if not keys:
            continue
        primary = result_type(probe).primary
        key = f"{probe}.{primary}" if primary and f"{probe}.{primary}" in run.headline else keys[0]
        cells.append(f"{key}={format_number(run.headline[key])}")
    more = " ..." if len(cells) > HEADLINE_COLUMNS else ""
    return " ".join(cells[:HEADLINE_COLUMNS]) + more


def format_number(v) -> str:
    """A headline number as `runs list/show` and the serve pages print it: 4 significant digits, "-" for none."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _print_pairs(pairs: list[tuple[str, object]], *, indent: str) -> None:
    if not pairs:
        print(f"{indent}(none)")
        return
    width = max(len(k) for k, _ in pairs)
    for k, v in pairs:
        if isinstance(v, (dict, list)):
            v = json.dumps(v, sort_keys=False)
        print(f"{indent}{k:<{width}}  {'-' if v is None else v}")
