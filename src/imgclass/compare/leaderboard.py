"""The leaderboard: one row per model (seeds of one recipe aggregated as mean +- std), one column per headline
number, the protocol of each column in its header, each number linking to its runs' reports.

Reads only the store's runs and metrics tables (``Store.metric_rows``), never results files: its cost does not
depend on how many samples the runs had.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..errors import UsageError
from ..registry import Registry

__all__ = ["Column", "COLUMNS", "Cell", "Board", "leaderboard", "board_html", "board_text"]


@dataclass(frozen=True)
class Column:
    """A leaderboard column: a probe's headline metric and the protocol fields that must agree to compare it."""

    name: str
    probe: str
    metric: str  # key in the probe's headline()
    label: str
    higher_is_better: bool = True
    protocol_keys: tuple[str, ...] = ()  # the parts of the probe's protocol shown in the header
    percent: bool = True

    @property
    def key(self) -> str:
        return f"{self.probe}.{self.metric}"


COLUMNS: Registry[Column] = Registry("leaderboard column")
for _c in (
    Column("clean", "accuracy", "top1", "clean accuracy", protocol_keys=("prediction",)),
    Column("adversarial", "adversarial", "robust_accuracy", "robust accuracy",
           protocol_keys=("norm", "primary_eps", "ensemble", "attacks", "robust_accuracy")),
    Column("corruptions", "corruptions", "mean_accuracy", "corruption accuracy",
           protocol_keys=("parameter_set", "corruptions", "severities")),
    Column("mce", "corruptions", "mce", "mCE", higher_is_better=False,
           protocol_keys=("parameter_set", "corruptions", "severities", "mce_normalization")),
    Column("calibration", "calibration", "ece", "ECE", higher_is_better=False, protocol_keys=("ece",)),
    Column("ood", "ood", "auroc", "OOD AUROC", protocol_keys=("detector", "ood_sets", "positive")),
    Column("shape_bias", "shape_bias", "shape_bias", "shape bias", protocol_keys=("decision_rule",), percent=False),
):
    COLUMNS[_c.name] = _c


@dataclass
class Cell:
    values: list[float] = field(default_factory=list)
    runs: list[dict] = field(default_factory=list)  # {"id", "report_path", "seed"} of the runs averaged
    other_protocol: list[int] = field(default_factory=list)  # runs left out: their protocol differs from the header

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return math.fsum(self.values) / len(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation (n - 1); None for a single run."""
        if len(self.values) < 2:
            return None
        m = self.mean
        return math.sqrt(math.fsum((v - m) ** 2 for v in self.values) / (len(self.values) - 1))


@dataclass
class Board:
    data: str | None
    columns: list[Column]
    protocols: dict[str, dict | None]  # column name -> the protocol its numbers share (the most common one)
    rows: list[dict]  # {"group", "label", "models": [...], "cells": {column: Cell}}
    n_runs: int

    def sorted_by(self, column: str) -> list[dict]:
        col = next(c for c in self.columns if c.name == column)
        sign = -1 if col.higher_is_better else 1

        def key(r):
            m = r["cells"][column].mean
            return (m is None, sign * m if m is not None else 0.0, r["label"])

        return sorted(self.rows, key=key)


def _protocol_part(row: dict, col: Column) -> dict | None:
    """The part of a run's protocol that must agree for its number to share a column: the probe's settings named by
    the column and the evaluated sample set (the hash of its file list)."""
    p = (row.get("protocols") or {}).get(col.probe)
    if p is None:
        return None
    part = {k: p.get(k) for k in col.protocol_keys} if col.protocol_keys else dict(p)
    files = row.get("files_sha256")
    part["sample_set"] = files[:12] if files else None
    return part


def leaderboard(store, *, data: str | None, columns: Sequence[str]) -> Board:
    """Aggregate the store's runs on ``data`` (a dataset spec; None: every dataset) into a board."""
    cols = [COLUMNS[c] for c in columns]
    if not cols:
        raise UsageError("no leaderboard columns; known: " + ", ".join(COLUMNS.names()))
    # eval runs only: a training run's numbers are its validation monitor, on other data than its data spec
    rows = [r for r in store.metric_rows(data=data, names=sorted({c.key for c in cols}), kind="eval")
            if data is None or r["data_spec"] == data]  # the exact spec, not every spec that contains it
    # the protocol of a column: the one most of its runs share; runs measured otherwise are listed, not mixed in
    # (on a tie: the one more models were measured with, then the earliest recorded)
    protocols: dict[str, dict | None] = {}
    for c in cols:
        runs: Counter = Counter()
        models: dict[str, set] = {}
        first: dict[str, int] = {}
        for r in rows:
            if r["values"].get(c.key) is None:
                continue
            k = json.dumps(_protocol_part(r, c), sort_keys=True)
            runs[k] += 1
            models.setdefault(k, set()).add(r["model_group"])
            first[k] = min(first.get(k, r["id"]), r["id"])
        best = max(runs, key=lambda k: (runs[k], len(models[k]), -first[k])) if runs else None
        protocols[c.name] = json.loads(best) if best else None
    groups: dict[str, dict] = {}
    for r in sorted(rows, key=lambda r: (r["created"] or "", r["id"])):
        g = groups.setdefault(r["model_group"], {"group": r["model_group"], "label": r["model_label"] or r["model_spec"],
                                                 "models": [], "cells": {c.name: Cell() for c in cols}})
        if r["model_spec"] not in g["models"]:
            g["models"].append(r["model_spec"])
        for c in cols:
            v = r["values"].get(c.key)
            if v is None:
                continue
            cell = g["cells"][c.name]
            if _protocol_part(r, c) != protocols[c.name]:
                cell.other_protocol.append(r["id"])
                continue
            cell.values.append(float(v))
            cell.runs.append({"id": r["id"], "report_path": r["report_path"], "seed": r["seed"]})
    return Board(data, cols, protocols, list(groups.values()), len(rows))


def _fmt(v: float | None, col: Column) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.2f}" if col.percent else f"{v:.3f}"


def cell_text(cell: Cell, col: Column) -> str:
    if not cell.n:
        return "-"
    s = _fmt(cell.mean, col)
    if cell.n > 1:
        s += f" ± {_fmt(cell.std, col)} (n={cell.n})"
    return s


def _protocol_text(p: dict | None) -> str:
    if not p:
        return "no runs"

    def v(x):
        return ",".join(map(str, x)) if isinstance(x, list) else str(x)

    return "; ".join(f"{k}={v(x)}" for k, x in p.items() if x is not None)


def board_text(board: Board, *, sort: str | None = None) -> str:
    """A plain-text table for the terminal."""
    sort = sort or board.columns[0].name
    header = ["model"] + [c.label + (" %" if c.percent else "") for c in board.columns]
    lines = [header]
    for r in board.sorted_by(sort):
        lines.append([r["label"]] + [cell_text(r["cells"][c.name], c) for c in board.columns])
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    out = ["  ".join(s.ljust(w) for s, w in zip(row, widths)).rstrip() for row in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    out.append("")
    for c in board.columns:
        out.append(f"{c.name}: {c.key} ({'higher' if c.higher_is_better else 'lower'} is better); "
                   f"protocol: {_protocol_text(board.protocols[c.name])}")
    left = sum(len(r["cells"][c.name].other_protocol) for r in board.rows for c in board.columns)
    if left:
        out.append(f"{left} number(s) measured with another protocol are left out (see the HTML board)")
    return "\n".join(out)


_SORT_JS = """
document.querySelectorAll('table.board th[data-col]').forEach(function(th){th.style.cursor='pointer';
 th.addEventListener('click',function(){var t=th.closest('table'),b=t.tBodies[0],i=+th.dataset.col,
 asc=th.dataset.dir!=='asc';th.dataset.dir=asc?'asc':'desc';
 var rows=Array.from(b.rows);rows.sort(function(x,y){var a=x.cells[i].dataset.v,c=y.cells[i].dataset.v;
 if(a===undefined||a===''){return 1}if(c===undefined||c===''){return -1}
 var p=parseFloat(a),q=parseFloat(c);if(isNaN(p)||isNaN(q)){return asc?a.localeCompare(c):c.localeCompare(a)}
 return asc?p-q:q-p});rows.forEach(function(r){b.appendChild(r)});});});
"""


def board_html(board: Board, *, out: str | os.PathLike | None = None, title: str | None = None) -> str:
    """The board as a self-contained HTML page (sortable columns; numbers link to the runs' reports, relative to
    ``out`` when given)."""
    from ..report import Report

    base = Path(out).resolve().parent if out is not None else None

    def link(path: str | None) -> str | None:
        if not path:
            return None
        if base is None:
            return Path(path).resolve().as_uri()
        return os.path.relpath(Path(path).resolve(), base)

    rep = Report(title or f"imgclass leaderboard{': ' + board.data if board.data else ''}")
    rep.meta = [("data", board.data or "every dataset"), ("runs", board.n_runs), ("models", len(board.rows))]
    sec = rep.section("Leaderboard", "leaderboard")
    head = ['<th data-col="0">model</th>']
    for i, c in enumerate(board.columns, start=1):
        arrow = "↑" if c.higher_is_better else "↓"
        head.append(f'<th data-col="{i}" title="{html.escape(c.key)}">{html.escape(c.label)}'
                    f'{" (%)" if c.percent else ""} {arrow}<br><small>{html.escape(_protocol_text(board.protocols[c.name]))}'
                    "</small></th>")
    body = []
    for r in board.sorted_by(board.columns[0].name):
        models = ", ".join(r["models"])
        tds = [f'<td data-v="{html.escape(r["label"])}" title="{html.escape(models)}">{html.escape(r["label"])}</td>']
        for c in board.columns:
            cell = r["cells"][c.name]
            v = "" if cell.mean is None else repr(cell.mean)
            text = html.escape(cell_text(cell, c))
            first = link(cell.runs[0]["report_path"]) if cell.runs else None
            inner = f'<a href="{html.escape(first)}">{text}</a>' if first else text
            if cell.n > 1:
                inner += " " + " ".join(
                    f'<a href="{html.escape(link(run["report_path"]) or "#")}" title="seed {run["seed"]}">'
                    f'[{run["id"]}]</a>' for run in cell.runs)
            if cell.other_protocol:
                inner += f' <span title="runs {cell.other_protocol} used another protocol">†</span>'
            tds.append(f'<td class="num" data-v="{v}">{inner}</td>')
        body.append("<tr>" + "".join(tds) + "</tr>")
    sec.html(f'<table class="board"><thead><tr>{"".join(head)}</tr></thead><tbody>{"".join(body)}</tbody></table>')
    sec.p("Click a column header to sort. mean ± sample standard deviation over runs of one model (seeds of one "
          "training recipe, or repeated evaluations) with their count; [id] links each run's report. † marks runs "
          "measured with another protocol than the column's, left out of its numbers.")
    sec.table(["column", "metric", "better", "protocol"],
              [(c.name, c.key, "higher" if c.higher_is_better else "lower", _protocol_text(board.protocols[c.name]))
               for c in board.columns], numeric=False)
    page = rep.to_html()
    return page.replace("</body>", f"<script>{_SORT_JS}</script></body>")
