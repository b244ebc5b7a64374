"""A self-contained HTML report: sections of text, tables and inline PNG figures."""

from __future__ import annotations

import html
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

from .images import data_uri

if TYPE_CHECKING:
    from ..results import Results

__all__ = ["Report", "Section", "render_report"]

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}td,th{border:1px solid #ddd;padding:.3em .6em;text-align:left}
th{background:#f5f5f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1em 0}figcaption{font-size:.85em;color:#555}img{max-width:100%}
.meta{color:#666;font-size:.9em}.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:.5em 1em}
nav a{margin-right:1em}code{background:#f4f4f4;padding:0 .2em}
"""


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1e4 else f"{v:.4g}"
    return str(v)


@dataclass
class Section:
    title: str
    anchor: str
    parts: list[str] = field(default_factory=list)

    def html(self, raw: str) -> None:
        self.parts.append(raw)

    def p(self, text: str, cls: str | None = None) -> None:
        c = f' class="{cls}"' if cls else ""
        self.parts.append(f"<p{c}>{html.escape(text)}</p>")

    def warn(self, text: str) -> None:
        self.p(text, "warn")

    def table(self, headers: Sequence[str], rows: Iterable[Sequence], *, numeric: bool = True) -> None:
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
        body = []
        for r in rows:
            cells = []
            for v in r:
                num = numeric and isinstance(v, (int, float)) and not isinstance(v, bool)
                cells.append(f'<td class="num">{html.escape(_fmt(v))}</td>' if num else f"<td>{html.escape(_fmt(v))}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        self.parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")

    def kv(self, pairs: Iterable[tuple[str, object]]) -> None:
        self.table(["", ""], [(k, v) for k, v in pairs])

    def figure(self, fig, caption: str = "") -> None:
        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        self.image_png(buf.getvalue(), caption)

    def image_png(self, png: bytes | str, caption: str = "", width: int | None = None) -> None:
        """A PNG (bytes, or base64 text as stored in results) as a figure."""
        self.image(png, caption, width=width, mime="image/png")

    def image(self, data: bytes | str, caption: str = "", *, width: int | None = None, mime: str = "image/png") -> None:
        """An encoded image (bytes, or base64 text as stored in results) as a figure."""
        w = f' width="{width}"' if width else ""
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self.parts.append(f'<figure><img src="{data_uri(data, mime)}"{w} alt="{html.escape(caption)}">{cap}</figure>')


@dataclass
class Report:
    title: str
    meta: list[tuple[str, str]] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)

    def section(self, title: str, anchor: str | None = None) -> Section:
        s = Section(title, anchor or title.lower().replace(" ", "-"))
        self.sections.append(s)
        return s

    def to_html(self) -> str:
        nav = "".join(f'<a href="#{html.escape(s.anchor)}">{html.escape(s.title)}</a>' for s in self.sections)
        meta = "".join(f"<div><b>{html.escape(k)}:</b> <code>{html.escape(str(v))}</code></div>" for k, v in self.meta)
        body = "".join(
            f'<section id="{html.escape(s.anchor)}"><h2>{html.escape(s.title)}</h2>{"".join(s.parts)}</section>'
            for s in self.sections
        )
        return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{_CSS}</style></head><body><h1>{html.escape(self.title)}</h1>"
                f"<div class='meta'>{meta}</div><nav>{nav}</nav>{body}</body></html>")

    def write(self, path: str | os.PathLike) -> Path:
        from ..files import atomic_write

        return atomic_write(path, self.to_html())


SECTIONS: dict[str, Callable[["Results", Report], None]] = {}  # kind -> extra sections (e.g. "train": curves)
_SECTION_MODULES = {"train": "imgclass.train.report", "diagnose": "imgclass.diagnose.render"}  # kind -> the module that fills SECTIONS[kind] on import


def render_report(results: "Results | dict") -> Report:
    """Build the report of a run's results (typed, or a results dict, validated first); each probe renders its own
    section from its typed result."""
    import matplotlib

    matplotlib.use("Agg")
    from ..diagnose import CHECKS
    from ..probes import PROBES
    from ..results import Results, from_dict

    r = results if isinstance(results, Results) else from_dict(results)
    owners = {**CHECKS, **PROBES}  # who renders each result: a probe, or a check of `imgclass diagnose`
    m = r.model.model_dump()
    d = r.data.model_dump()
    rep = Report(f"imgclass report: {r.model.spec} on {r.data.spec}")
    rep.meta = [("model", r.model.spec), ("data", r.data.spec), ("imgclass", r.imgclass_version),
                ("created", r.created), ("seed", r.seed)]
    summary = rep.section("Summary", "summary")
    rows = []
    for name, res in r.probes.items():
        if name in owners:
            rows += [(f"{name}: {k}", v) for k, v in owners[name]().summary(res)]
    knn = (getattr(r, "training", None) or {}).get("best_val_knn_top1")
    if isinstance(knn, (int, float)):  # a self-supervised run: its validation is the kNN monitor, not a probe
        rows.append(("training: best validation kNN top-1 (self-supervised)", knn))
    if rows:
        summary.table(["metric", "value"], rows)
    cfg = m.get("config") or {}
    if r.kind != "diagnose":  # a diagnosis states its models and data in its own section
        summary.kv([
            ("model source", m.get("source") or ""), ("model classes", m.get("num_classes") or ""),
            ("input", f"{cfg.get('input_size')} mean={cfg.get('mean')} std={cfg.get('std')}"),
            ("dataset samples", d.get("n_samples", "")), ("dataset classes", d.get("n_classes") or ""),
            ("label alignment", (getattr(r, "label_alignment", None) or {}).get("method", "")),
        ])
    for w in r.warnings:
        summary.warn(w)
    if r.kind not in SECTIONS and r.kind in _SECTION_MODULES:
        import importlib

        importlib.import_module(_SECTION_MODULES[r.kind])
    if r.kind in SECTIONS:
        SECTIONS[r.kind](r, rep)
    for name, res in r.probes.items():
        if name in owners:
            owners[name]().render(res, rep.section(owners[name].title or name, name))
    return rep
