"""Compare runs: headline metrics side by side with differences, and per-sample flips (samples one run gets right
and the other wrong), read from each run's results.json and samples.npz."""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence


from ..errors import ImgclassError, UsageError
from ..results import SAMPLES_FILE, Results, SampleTable, load, read_samples

__all__ = ["RunRef", "Comparison", "Flips", "compare", "resolve_runs", "comparison_html", "comparison_text",
           "write_comparison"]


@dataclass
class RunRef:
    name: str  # "run 12" or the folder
    results: Results
    results_path: Path
    run_id: int | None = None

    @property
    def folder(self) -> Path:
        return self.results_path.parent

    def samples(self) -> SampleTable | None:
        if not self.results.samples:
            return None
        return read_samples(self.folder / self.results.samples)


@dataclass
class Flips:
    """Samples whose correctness differs between run ``a`` and run ``b`` (by sample id, on the samples both ran)."""

    probe: str
    column: str
    a: str
    b: str
    n_common: int
    a_right_b_wrong: list[str] = field(default_factory=list)
    a_wrong_b_right: list[str] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)
    predicted: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)  # id -> (a's class, b's)


@dataclass
class Comparison:
    runs: list[RunRef]
    metrics: list[tuple[str, list[float | None]]]  # (PROBE.METRIC, value per run)
    flips: list[Flips]
    notes: list[str]


def resolve_runs(items: Sequence[str], store=None) -> list[RunRef]:
    """Run ids (from the store) or results.json paths / run folders."""
    refs = []
    for it in items:
        if str(it).isdigit():
            if store is None:
                raise UsageError(f"{it}: a run id needs a store")
            rec = store.get(int(it))
            if not rec.results_path:
                raise ImgclassError(f"run {it} has no results file (it ran without --out)")
            refs.append(RunRef(f"run {it}", load(rec.results_path), Path(rec.results_path), int(it)))
        else:
            p = Path(it)
            p = p / "results.json" if p.is_dir() else p
            refs.append(RunRef(str(p.parent), load(p), p))
    return refs


def _flips(a: RunRef, sa: SampleTable, b: RunRef, sb: SampleTable) -> Flips | None:
    for probe, column in (("accuracy", "correct"), ("shape_bias", "correct"), ("tta", "correct@center")):
        if sa.has(probe, column) and sb.has(probe, column):
            break
    else:
        return None
    ca, cb = sa.column(probe, column), sb.column(probe, column)
    common = [s for s in ca if s in cb]
    f = Flips(probe, column, a.name, b.name, len(common))
    f.a_right_b_wrong = [s for s in common if ca[s] and not cb[s]]
    f.a_wrong_b_right = [s for s in common if not ca[s] and cb[s]]
    labels = dict(zip(sa.sample_id.tolist(), sa.label.tolist()))
    flipped = f.a_right_b_wrong + f.a_wrong_b_right
    f.labels = {s: labels[s] for s in flipped}
    pa = sa.column(probe, "pred") if sa.has(probe, "pred") else {}
    pb = sb.column(probe, "pred") if sb.has(probe, "pred") else {}
    f.predicted = {s: (pa.get(s), pb.get(s)) for s in flipped}
    return f


def compare(runs: Sequence[RunRef]) -> Comparison:
    """Headline metrics of every run (differences against the first) and flips of each run against the first."""
    if len(runs) < 2:
        raise UsageError("compare needs at least two runs")
    heads = [r.results.headline() for r in runs]
    keys = list(dict.fromkeys(k for h in heads for k in h))
    metrics = [(k, [h.get(k) for h in heads]) for k in keys]
    notes = []
    data = {r.results.data.spec for r in runs}
    if len(data) > 1:
        notes.append(f"the runs evaluated different datasets ({', '.join(sorted(data))}): flips are over the sample "
                     "ids they share")
    for p in sorted({p for r in runs for p in r.results.probes}):
        protos = {r.name: r.results.protocols().get(p) for r in runs if p in r.results.probes}
        if len({repr(v) for v in protos.values()}) > 1:
            notes.append(f"{p}: the runs used different protocols, so its numbers are not directly comparable")
    flips = []
    base = runs[0]
    sb = base.samples()
    for other in runs[1:]:
        so = other.samples()
        if sb is None or so is None:
            missing = base.name if sb is None else other.name
            notes.append(f"no per-sample outputs for {missing} ({SAMPLES_FILE}; written by imgclass eval --out from "
                         "0.2.0 on): no flips against it")
            continue
        f = _flips(base, sb, other, so)
        if f is None:
            notes.append(f"{base.name} and {other.name} share no per-sample correctness (run accuracy in both)")
        else:
            flips.append(f)
    return Comparison(list(runs), metrics, flips, notes)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def comparison_text(c: Comparison, *, show: int = 20) -> str:
    names = [r.name for r in c.runs]
    rows = [["metric"] + names + [f"{n} - {names[0]}" for n in names[1:]]]
    for k, vals in c.metrics:
        diffs = [("-" if v is None or vals[0] is None else f"{v - vals[0]:+.4f}") for v in vals[1:]]
        rows.append([k] + [_fmt(v) for v in vals] + diffs)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = ["  ".join(s.ljust(w) for s, w in zip(r, widths)).rstrip() for r in rows]
    out.insert(1, "  ".join("-" * w for w in widths))
    for f in c.flips:
        out.append(f"\n{f.probe}.{f.column} on {f.n_common} shared samples: {len(f.a_right_b_wrong)} right in {f.a} "
                   f"and wrong in {f.b}, {len(f.a_wrong_b_right)} the other way")
        for what, ids in (("right in " + f.a + ", wrong in " + f.b, f.a_right_b_wrong),
                          ("wrong in " + f.a + ", right in " + f.b, f.a_wrong_b_right)):
            if ids:
                more = f" ... and {len(ids) - show} more" if len(ids) > show else ""
                out.append(f"  {what}: {', '.join(ids[:show])}{more}")
    for n in c.notes:
        out.append(f"note: {n}")
    return "\n".join(out)


def _thumbnails(run: RunRef, ids: list[str], limit: int) -> dict[str, str]:
    """sample id -> data URI of the image, read through the run's dataset spec (empty when it cannot be read)."""
    from ..data import load_dataset
    from ..report.images import data_uri, image_base64

    try:
        ds = load_dataset(run.results.data.spec)
    except Exception:  # noqa: BLE001 - a moved dataset only costs the thumbnails
        return {}
    want = set(ids[:limit])
    out = {}
    for i in range(len(ds)):
        sid = ds.sample_id(i)
        if sid in want:
            try:
                from PIL import Image

                img = Image.fromarray(ds.load(i).permute(1, 2, 0).numpy())
                img.thumbnail((96, 96))
                out[sid] = data_uri(image_base64(img, fmt="PNG"), "image/png")
            except Exception:  # noqa: BLE001 - an unreadable file shows as its id only
                pass
            if len(out) == len(want):
                break
    return out


def comparison_html(c: Comparison, *, gallery: int = 48) -> str:
    from ..report import Report

    names = [r.name for r in c.runs]
    rep = Report("imgclass run comparison: " + " vs ".join(names))
    rep.meta = [(r.name, f"{r.results.model.spec} on {r.results.data.spec} (seed {r.results.seed})") for r in c.runs]
    sec = rep.section("Metrics", "metrics")
    for n in c.notes:
        sec.warn(n)
    rows = []
    for k, vals in c.metrics:
        diffs = [None if v is None or vals[0] is None else v - vals[0] for v in vals[1:]]
        rows.append([k] + [("-" if v is None else v) for v in vals] + [("-" if d is None else d) for d in diffs])
    sec.table(["metric"] + names + [f"{n} - {names[0]}" for n in names[1:]], rows)
    for f in c.flips:
        s = rep.section(f"Flips: {f.a} vs {f.b}", f"flips-{len(rep.sections)}")
        s.p(f"{f.probe}.{f.column} on {f.n_common} samples both runs evaluated: {len(f.a_right_b_wrong)} right in "
            f"{f.a} and wrong in {f.b}; {len(f.a_wrong_b_right)} wrong in {f.a} and right in {f.b}.")
        run = next(r for r in c.runs if r.name == f.a)
        classes = run.results.data.model_dump().get("classes", {}).get("names") or []
        for title, ids in ((f"right in {f.a}, wrong in {f.b}", f.a_right_b_wrong),
                           (f"wrong in {f.a}, right in {f.b}", f.a_wrong_b_right)):
            s.html(f"<h3>{html.escape(title)} ({len(ids)})</h3>")
            thumbs = _thumbnails(run, ids, gallery)
            cells = []
            def name(k) -> str:
                return "?" if k is None else classes[k] if 0 <= k < len(classes) else str(k)

            for sid in ids[:gallery]:
                pa, pb = f.predicted.get(sid, (None, None))
                preds = "" if pa is None and pb is None else \
                    f'<br><small title="{html.escape(f.a)} / {html.escape(f.b)}">{html.escape(name(pa))} / ' \
                    f"{html.escape(name(pb))}</small>"
                img = f'<img src="{thumbs[sid]}" width="96"><br>' if sid in thumbs else ""
                cells.append(f'<figure style="display:inline-block;margin:4px;text-align:center">{img}'
                             f'<figcaption>{html.escape(sid)}<br>{html.escape(name(f.labels.get(sid, -1)))}{preds}'
                             "</figcaption></figure>")
            if ids:
                s.p("Under each image: its id, its label, and the two runs' predictions (first / second).")
            s.html("<div>" + "".join(cells) + "</div>")
            if len(ids) > gallery:
                s.p(f"... and {len(ids) - gallery} more: " + ", ".join(ids[gallery:]))
    return rep.to_html()


def write_comparison(c: Comparison, out: str | os.PathLike) -> Path:
    from ..files import atomic_write

    return atomic_write(out, comparison_html(c))

