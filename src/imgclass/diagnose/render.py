"""Report parts of a diagnosis: the re-scoring and issue counts (``SECTIONS["diagnose"]``), thumbnails of flagged
samples stored in the results (so a report re-rendered from results.json is the same), and their galleries."""

from __future__ import annotations

import html

import numpy as np

from ..report import SECTIONS
from ..report.images import data_uri, image_base64
from .base import DiagnoseContext, Flag

__all__ = ["gallery_entries", "render_gallery", "render_diagnosis"]

THUMB = 96  # longest side of a thumbnail, pixels


def _thumb(img) -> str:
    from PIL import Image

    pil = Image.fromarray(np.ascontiguousarray(img.permute(1, 2, 0).numpy()))
    if max(pil.size) < THUMB // 2:  # small images (CIFAR's 32 px) enlarged by a whole factor, pixels kept sharp
        f = THUMB // max(pil.size)
        pil = pil.resize((pil.width * f, pil.height * f), Image.NEAREST)
    pil.thumbnail((THUMB, THUMB))
    return image_base64(pil, fmt="PNG")


def gallery_entries(ctx: DiagnoseContext, flags: list[Flag], limit: int) -> list[dict]:
    """The first ``limit`` flags as {sample_id, caption, png (base64), partner_png}: images read from the data."""
    names = list(ctx.dataset.classes.names)

    def cls(k):
        return "" if k is None else names[k] if 0 <= k < len(names) else str(k)

    out = []
    for f in flags[:limit]:
        e = {"sample_id": f.sample_id, "issue": f.issue, "score": f.score,
             "caption": " ".join(x for x in (f.issue.replace("_", " "),
                                             f"given {cls(f.given)}" if f.given is not None else "",
                                             f"-> {cls(f.suggested)}" if f.suggested is not None else "") if x)}
        try:
            e["png"] = _thumb(ctx.dataset.load(f.index))
        except Exception:  # noqa: BLE001 - an unreadable file shows as its id only
            e["png"] = None
        if f.partner_index is not None:
            e["partner"] = f.partner
            try:
                e["partner_png"] = _thumb(ctx.which(f.partner_in).load(f.partner_index))
            except Exception:  # noqa: BLE001
                e["partner_png"] = None
        out.append(e)
    return out


def render_gallery(sec, gallery: list[dict] | None, title: str = "Flagged samples") -> None:
    if not gallery:
        return
    sec.html(f"<h3>{html.escape(title)}</h3>")
    cells = []
    for e in gallery:
        imgs = "".join(f'<img src="{data_uri(e[k], "image/png")}" style="max-width:{THUMB}px;margin:1px">'
                       for k in ("png", "partner_png") if e.get(k))
        partner = f"<br>~ {html.escape(e['partner'])}" if e.get("partner") else ""
        score = "" if e.get("score") is None else f"<br>score {e['score']:.3g}"
        cells.append(f'<figure style="display:inline-block;margin:4px;text-align:center;vertical-align:top">{imgs}'
                     f"<figcaption><small>{html.escape(e['sample_id'])}{partner}<br>{html.escape(e['caption'])}"
                     f"{score}</small></figcaption></figure>")
    sec.html("<div>" + "".join(cells) + "</div>")


def render_diagnosis(r, rep) -> None:
    """The diagnosis' own section: what was checked against what, issue counts, accuracy re-scored."""
    sec = rep.section("Diagnosis", "diagnosis")
    issues = r.get("issues") if hasattr(r, "get") else getattr(r, "issues", None)
    issues = issues or {}
    against = getattr(r, "against", None)
    sec.kv([("data", r.data.spec), ("against", (against or {}).get("spec", "-")),
            ("probabilities", r.settings.get("probabilities") or "-"),
            ("flagged rows (issues.csv)", issues.get("n_rows", 0))])
    by = issues.get("by_check") or {}
    if by:
        sec.table(["check", "flagged"], list(by.items()))
    agree = (getattr(r, "agreement", None) or {}).get("label_issues_vs_human_majority")
    if agree:
        rec = "-" if agree["recall"] is None else f"{agree['recall']:.1%}"
        sec.p(f"Label issues against the human majority: of the {agree['human_majority_disagrees']} samples whose "
              f"human majority is not the given label, {agree['both']} ({rec}) are among the "
              f"{agree['flagged_by_label_issues']} label issues.")
    resc = getattr(r, "rescoring", None)
    if resc:
        rows = [("given labels", resc.get("accuracy"), resc.get("n_evaluated"))]
        if "label_issues" in r.probes:
            rows.append(("without the flagged label issues", resc.get("accuracy_without_label_issues"),
                         resc.get("n_evaluated", 0) - resc.get("n_label_issues_removed", 0)))
        if resc.get("accuracy_relabeled") is not None:
            rows.append((f"corrected labels ({resc['relabeled']} changed)", resc["accuracy_relabeled"],
                         resc.get("n_evaluated")))
        sec.p("Accuracy of the model(s) re-scored:")
        sec.table(["labels", "accuracy", "samples"], rows)


SECTIONS["diagnose"] = render_diagnosis
