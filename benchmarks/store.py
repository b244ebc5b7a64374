"""Run store benchmark: importing many results.json files, and the leaderboard (query and HTML) over them.

Writes ``--runs`` results.json files made from the 0.1.0 fixtures (tests/data/results-0.1.0: a CIFAR-10 ResNet-20
run with seven probes and a shape-bias run), each with its own model spec, seed, creation time and headline
numbers, into a temporary folder; imports them into a fresh SQLite store with ``Store.import_paths`` (timed, in
two steps: the first ``--small`` runs, then the rest), and times ``Store.metric_rows`` (the leaderboard's query:
the runs and metrics tables only, never the results files) at ``--small`` runs and at ``--runs`` runs, so the
scaling shows. Each query is timed ``--repeats`` times (best and median); its peak Python memory is measured in a
separate pass under tracemalloc (which slows it), the process's peak resident memory at the end.

    python benchmarks/store.py                     # 10,000 runs, query timed at 1,000 and 10,000
    python benchmarks/store.py --runs 2000 --small 200 --store sqlite:////tmp/bench.db
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from imgclass.compare.leaderboard import board_html, leaderboard
from imgclass.store import open_store

FIXTURES = ROOT / "tests" / "data" / "results-0.1.0"
NAMES = ["accuracy.top1", "calibration.ece", "corruptions.mean_accuracy", "adversarial.robust_accuracy",
         "shape_bias.shape_bias"]


def write_runs(folder: Path, n: int, *, seed: int = 0) -> list[Path]:
    """n results.json files: the fixtures in turn, each with its own model spec, seed, time and top numbers."""
    rng = random.Random(seed)
    bases = [json.loads((FIXTURES / f).read_text()) for f in ("cifar10-resnet20.json", "cue-conflict-mobilenet.json")]
    texts = [json.dumps(b) for b in bases]  # re-parsed per run: a fresh copy without deepcopy's cost
    start = datetime.fromisoformat(bases[0]["created"])
    paths = []
    for i in range(n):
        raw = json.loads(texts[i % 2])
        raw["model"]["spec"] = f"{raw['model']['spec']}-v{i // 2}"
        raw["seed"] = i
        raw["created"] = (start + timedelta(seconds=i)).isoformat()
        if "accuracy" in raw["probes"]:
            raw["probes"]["accuracy"]["top1"] = round(rng.uniform(0.5, 0.99), 6)
            raw["probes"]["calibration"]["ece"] = round(rng.uniform(0.0, 0.2), 6)
        else:
            raw["probes"]["shape_bias"]["shape_bias"] = round(rng.uniform(0.1, 0.9), 6)
        p = folder / f"{i:05d}" / "results.json"
        p.parent.mkdir(parents=True)
        p.write_text(json.dumps(raw))
        paths.append(p)
    return paths


def time_query(store, *, data: str | None, repeats: int) -> dict:
    times, rows = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        rows = store.metric_rows(data=data, names=NAMES)
        times.append(time.perf_counter() - t0)
    tracemalloc.start()
    store.metric_rows(data=data, names=NAMES)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"rows": len(rows), "best_s": min(times), "median_s": statistics.median(times),
            "peak_python_mib": peak / 2**20}


def time_board(store, *, data: str | None) -> dict:
    """The whole leaderboard: the query, grouping and protocol agreement, and the HTML page."""
    t0 = time.perf_counter()
    board = leaderboard(store, data=data, columns=["clean", "adversarial", "corruptions", "calibration", "shape_bias"])
    t1 = time.perf_counter()
    page = board_html(board)
    t2 = time.perf_counter()
    return {"rows": len(board.rows), "board_s": t1 - t0, "html_s": t2 - t1, "html_mib": len(page) / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--small", type=int, default=1_000, help="also time the query after this many runs")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--store", help="store URL (default: a fresh SQLite file in the temporary folder)")
    args = ap.parse_args()
    if not 0 < args.small <= args.runs:
        ap.error("need 0 < --small <= --runs")

    with tempfile.TemporaryDirectory(prefix="imgclass-store-bench-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        paths = write_runs(tmp / "runs", args.runs)
        size = sum(p.stat().st_size for p in paths)
        print(f"wrote {len(paths)} results.json files ({size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.1f} s")
        url = args.store or f"sqlite:///{tmp / 'runs.db'}"
        store = open_store(url)
        print(f"store: {store.url}")
        report = {}
        done = 0
        for step_end in dict.fromkeys([args.small, args.runs]):
            t0 = time.perf_counter()
            ids, skipped = store.import_paths(paths[done:step_end], progress=False)
            dt = time.perf_counter() - t0
            if skipped:
                raise SystemExit(f"skipped {len(skipped)} files, e.g. {skipped[0]}")
            print(f"import runs {done + 1}..{step_end}: {dt:.1f} s ({len(ids) / dt:.0f} files/s)")
            done = step_end
            for data in (None, "cifar10"):
                q = time_query(store, data=data, repeats=args.repeats)
                report[(done, data)] = q
                print(f"  metric_rows(data={data!r}, {len(NAMES)} names) over {done} runs: {q['rows']} rows, "
                      f"best {q['best_s'] * 1000:.0f} ms, median {q['median_s'] * 1000:.0f} ms, "
                      f"peak Python memory {q['peak_python_mib']:.1f} MiB")
            b = time_board(store, data=None)
            print(f"  leaderboard over {done} runs: {b['rows']} models, aggregated in {b['board_s'] * 1000:.0f} ms, "
                  f"HTML ({b['html_mib']:.1f} MiB) in {b['html_s'] * 1000:.0f} ms")
            t0 = time.perf_counter()
            n = len(store.list())
            print(f"  list() of all {n} runs: {(time.perf_counter() - t0) * 1000:.0f} ms")
        store.close()
        if args.small != args.runs:
            small, big = report[(args.small, None)], report[(args.runs, None)]
            print(f"query time ratio {args.runs} / {args.small} runs: {big['best_s'] / small['best_s']:.1f}x "
                  f"(runs ratio {args.runs / args.small:.0f}x)")
        print(f"peak resident memory of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
