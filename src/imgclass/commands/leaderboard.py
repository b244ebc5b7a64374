"""``imgclass leaderboard --data SPEC --columns clean,adversarial,... [--out board.html]`` and the handler of
``imgclass runs compare ID ID ...`` (registered by the ``runs`` command)."""

from __future__ import annotations

import argparse


def add_command(sub) -> None:
    from ..compare.leaderboard import COLUMNS

    p = sub.add_parser(
        "leaderboard", help="one row per model over the store's runs (seeds aggregated as mean ± std)",
        description="A table of the store's runs on one dataset: one row per model (runs of one training recipe with "
                    "different seeds, or repeated evaluations, are aggregated as mean ± std with their count), one "
                    "column per headline number, each column's protocol (attack ensemble and eps, corruption "
                    "parameters and severities, ECE bins) stated. Columns: " + ", ".join(COLUMNS.names()) + ".",
    )
    p.add_argument("--data", help="dataset spec the runs evaluated, exactly as given to eval (default: every dataset)")
    p.add_argument("--columns", default="clean,adversarial,corruptions,calibration,ood,shape_bias",
                   help="comma-separated columns (default: %(default)s)")
    p.add_argument("--sort", help="column to sort by (default: the first)")
    p.add_argument("--out", help="write a sortable HTML board here (numbers link to the runs' reports)")
    p.add_argument("--store", default=None, metavar="URL",
                   help="run store: a SQLAlchemy URL (default: $IMGCLASS_STORE, else $IMGCLASS_HOME/runs.db)")
    p.set_defaults(func=_leaderboard)


def _leaderboard(args: argparse.Namespace) -> int:
    from ..compare.leaderboard import COLUMNS, board_html, board_text, leaderboard
    from ..errors import UsageError
    from ..files import atomic_write
    from ..store import open_store

    cols = [c.strip() for c in args.columns.split(",") if c.strip()]
    for c in cols:
        COLUMNS[c]  # an unknown name: close matches and the list
    if args.sort and args.sort not in cols:
        raise UsageError(f"--sort {args.sort}: not among the columns ({', '.join(cols)})")
    store = open_store(args.store)
    try:
        board = leaderboard(store, data=args.data, columns=cols)
    finally:
        store.close()
    if not board.rows:
        where = f" on {args.data}" if args.data else ""
        print(f"no runs{where} in {store.url} with any of: {', '.join(c.key for c in board.columns)}")
        return 0
    print(board_text(board, sort=args.sort))
    if args.out:
        atomic_write(args.out, board_html(board, out=args.out))
        print(f"\nwrote {args.out}")
    return 0


def add_compare(runs_sub) -> None:
    """``runs compare``: added to the ``runs`` command's subcommands."""
    p = runs_sub.add_parser(
        "compare", help="headline metrics side by side, and the samples one run gets right and the other wrong",
        description="Compare runs (store ids, or results.json files / run folders): every headline metric with its "
                    "difference to the first run, and per-sample flips against the first run (from samples.npz). "
                    "--out writes an HTML page with the flipped images as a gallery.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run id in the store, or a results.json / run folder")
    p.add_argument("--out", help="write the comparison as HTML (with image galleries of the flips)")
    p.add_argument("--show", type=int, default=20, help="flipped sample ids to print per direction (default 20)")
    p.add_argument("--store", default=None, metavar="URL",
                   help="run store: a SQLAlchemy URL (default: $IMGCLASS_STORE, else $IMGCLASS_HOME/runs.db)")
    p.set_defaults(func=_compare)


def _compare(args: argparse.Namespace) -> int:
    from ..compare.runs import compare, comparison_text, resolve_runs, write_comparison
    from ..errors import UsageError

    if len(args.runs) < 2:
        raise UsageError("runs compare needs at least two runs")
    store = None
    if any(r.isdigit() for r in args.runs):
        from ..store import open_store

        store = open_store(args.store)
    try:
        refs = resolve_runs(args.runs, store)
    finally:
        if store is not None:
            store.close()
    c = compare(refs)
    print(comparison_text(c, show=args.show))
    if args.out:
        write_comparison(c, args.out)
        print(f"\nwrote {args.out}")
    return 0
