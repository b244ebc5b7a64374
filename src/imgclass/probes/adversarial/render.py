"""The probe's summary rows and report section."""

from __future__ import annotations

import numpy as np

from ...attacks import ATTACKS
from ...report.images import decode_base64_image

__all__ = ["summary", "render"]


def _acc(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def _dash(v):
    """A table cell: '-' where nothing applies."""
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else v


def _worst_differs(r: dict) -> bool:
    """The worst case says more than the rows above it: over two or more results per sample."""
    n_bounded = sum(1 for a in r.get("robust_accuracy", {}) if a in ATTACKS and not ATTACKS[a].minimal)
    several = n_bounded + bool(r.get("ensemble")) >= 2
    return bool(r.get("worst_case")) and several and r["worst_case"] != r.get("ensemble")


def summary(r: dict) -> list[tuple[str, str]]:
    """A row per attack that ran (robust accuracy at each eps), the ensemble's and the worst case when they ran."""
    out = [("clean accuracy", _acc(r.get("clean_accuracy")))]
    keys = list(r.get("eps", {}))
    at = ", ".join(keys)

    def row(label, values: dict):
        out.append((f"{label} @ {at}", ", ".join(_acc(values.get(k)) for k in keys)))

    for a, v in r.get("robust_accuracy", {}).items():
        row(a, v)
    if r.get("ensemble"):
        row(r["ensemble_name"], r["ensemble"])
    if _worst_differs(r):
        row("worst case over every attack", r["worst_case"])
    for a, m in r.get("minimal", {}).items():
        if m.get("median_successful") is not None:
            out.append((f"{a} median {m['norm'].upper()} of minimal perturbations", f"{m['median_successful']:.4f}"))
    if "patch" in r:
        out.append((f"patch ({r['patch']['size']:.0%} of the area) accuracy", f"{r['patch']['patched_accuracy']:.4f}"))
    w = r.get("warnings", [])
    sc = r.get("sanity_checks") or {}
    if w:
        out.append(("sanity checks", f"{len(w)} FAILED: SUSPECT"))
    elif sc.get("ran"):
        out.append(("sanity checks", f"{len(sc['ran'])} passed"))
    else:
        out.append(("sanity checks", "none run"))
    return out


def _attacked_model_text(am: dict | None) -> str | None:
    if not am:
        return None
    if not am.get("fast"):
        return "Attacked model: the model as loaded (fast=false)."
    parts = []
    if am.get("folded"):
        parts.append(f"batch norm folded into the layers before it ({am['batch_norms']} layers)")
    if am.get("channels_last"):
        parts.append("channels-last activations")
    what = "a frozen copy with " + " and ".join(parts) if parts else "a plain frozen copy"
    diff = am.get("max_logit_diff")
    checked = f"; max logit difference to the model as loaded on a check batch: {diff:.2g}" if diff is not None else ""
    why = f" ({am['reason']})" if am.get("reason") else ""
    return f"Attacked model: {what}{why}{checked}."


def render(r: dict, sec) -> None:
    w = r.get("warnings", [])
    sc = r.get("sanity_checks") or {}
    if w:
        sec.warn(f"SUSPECT EVALUATION: {len(w)} sanity check(s) failed. The robust accuracies below probably "
                 "overestimate the model's robustness (gradient masking); do not report them as such.")
        for line in w:
            sec.warn(line)
    elif sc.get("ran"):
        sec.p("Sanity checks passed: " + "; ".join(sc["ran"]) + ".")
    else:
        sec.p("No sanity check ran" + (" (sanity_checks=false)." if sc.get("enabled") is False else "."))
    if sc.get("skipped"):
        sec.p("Not checked: " + "; ".join(f"{k} ({v})" for k, v in sc["skipped"].items()) + ".")
    sec.p(f"{r['n_evaluated']} images ({r['n_selected']} selected of {r['n_dataset']}), threat model "
          f"{r['norm'].upper()}, clean accuracy {r['clean_accuracy']:.2%}. Protocol: {r['protocol']}.")
    am = _attacked_model_text(r.get("attacked_model"))
    if am:
        sec.p(am)
    keys = list(r["eps"])
    rows = [(a, ATTACKS[a].threat if a in ATTACKS else "", *[_dash(v.get(k)) for k in keys])
            for a, v in r["robust_accuracy"].items()]
    if r.get("ensemble"):
        rows.append((r["ensemble_name"], "worst case per sample", *[_dash(r["ensemble"].get(k)) for k in keys]))
    if _worst_differs(r):
        rows.append(("every attack above", "worst case per sample", *[_dash(r["worst_case"].get(k)) for k in keys]))
    sec.table(["attack", "threat", *[f"eps {k}" for k in keys]], rows)
    if len(keys) == 1:
        _bars(r, sec, keys[0])
    elif keys:
        _curves(r, sec, keys)
    _detail(r, sec, keys)
    if r.get("minimal"):
        sec.table(["minimal-perturbation attack", "norm", "median size (failures count as infinite)",
                   "median size (successful)", "success rate"],
                  [(a, m["norm"], _dash(m["median"]), _dash(m["median_successful"]), _dash(m["success_rate"]))
                   for a, m in r["minimal"].items()])
    if r.get("ensemble_black_box_only"):
        sec.p("Images that resisted every white-box member of the ensemble but fell to a black-box one: " + ", ".join(
            f"{v:.2%} at eps {k}" for k, v in r["ensemble_black_box_only"].items()) + " (should be ~0).")
    if r.get("large_eps"):
        sec.p(f"Large-budget check: PGD (margin loss, no random start) at eps {r['large_eps']['eps']} leaves "
              f"{r['large_eps']['accuracy']:.2%} accuracy.")
    if "patch" in r:
        _render_patch(r["patch"], sec)
    if r.get("gallery"):
        _render_gallery(r, sec)


def _bars(r: dict, sec, k: str) -> None:
    """One epsilon: clean accuracy, each attack, the ensemble and the worst case as bars."""
    import matplotlib.pyplot as plt

    items = [("clean", r["clean_accuracy"], "0.6")]
    items += [(a, v.get(k), "C0") for a, v in r["robust_accuracy"].items()]
    if r.get("ensemble"):
        items.append((r["ensemble_name"], r["ensemble"].get(k), "k"))
    if _worst_differs(r):
        items.append(("worst case", r["worst_case"].get(k), "0.3"))
    items = [(n, v, c) for n, v, c in items if v is not None]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(items) + 1.5), 3.6))
    ax.bar(range(len(items)), [v for _, v, _ in items], color=[c for _, _, c in items])
    for i, (_, v, _) in enumerate(items):
        ax.text(i, v + 0.01, f"{v:.1%}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(items)), [n for n, _, _ in items], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.08)
    ax.grid(alpha=0.3, axis="y")
    sec.figure(fig, f"Robust accuracy at eps {k} ({r['norm'].upper()}) per attack, against the clean accuracy")


def _curves(r: dict, sec, keys: list[str]) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    xs = [0.0] + [r["eps"][k] for k in keys]
    scale = 255 if r["norm"] == "linf" else 1
    sx = [e * scale for e in xs]
    for a, v in r["robust_accuracy"].items():
        ax.plot(sx, [r["clean_accuracy"]] + [v[k] for k in keys], "o-", ms=3, lw=1.2, label=a)
    for a, m in r.get("minimal", {}).items():
        if m["norm"] == r["norm"] and m["distances"]:
            d = np.array([np.inf if v is None else v for v in m["distances"]])
            grid = np.linspace(0, xs[-1], 200)
            ax.plot(grid * scale, [np.sum(d > g) / r["n_evaluated"] for g in grid], "--", lw=1, label=f"{a} (minimal)")
    if r.get("ensemble"):
        ax.plot(sx, [r["clean_accuracy"]] + [r["ensemble"][k] for k in keys], "k-", lw=2.4, label=r["ensemble_name"])
    if _worst_differs(r):
        ax.plot(sx, [r["clean_accuracy"]] + [r["worst_case"][k] for k in keys], "k:", lw=1.6,
                label="worst case over every attack")
    ax.set_xlabel("epsilon (x/255)" if r["norm"] == "linf" else "epsilon (L2)")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    sec.figure(fig, "Robust accuracy against epsilon per attack (eps 0: clean accuracy)"
               + ("; the thick line is the per-sample worst case over the ensemble" if r.get("ensemble") else ""))


def _detail(r: dict, sec, keys: list[str]) -> None:
    """Success rate and time per attack and eps; query columns only where an attack counts queries."""
    with_queries = bool(r.get("queries"))
    detail = []
    for a, v in r["success_rate"].items():
        q_all = r["queries"].get(a, {})
        s_all = r["seconds"].get(a, {})
        for k in keys:
            q = q_all.get(k) or q_all.get("all") or {}
            t = s_all.get(k, s_all.get("all"))
            row = [a, k, _dash(v.get(k))]
            if with_queries:
                row += [_dash(q.get("mean")), _dash(q.get("median_successful"))]
            detail.append((*row, _dash(t)))
    head = ["attack", "eps", "success rate"] + (["mean queries", "median queries (successful)"] if with_queries else [])
    sec.p("Attack success rate (among correctly classified images)"
          + (", queries per image (black-box attacks; '-' for white-box ones)" if with_queries else "")
          + " and compute time (seconds, summed over processes)")
    sec.table(head + ["seconds"], detail)


def _render_patch(pr: dict, sec) -> None:
    sec.p(f"Universal patch covering {pr['size']:.0%} of the image ({pr['side_px']} px square) at random positions, "
          f"{pr['how']}.")
    sec.table(["", "accuracy"], [("clean", pr["clean_accuracy"]), ("adversarial patch", pr["patched_accuracy"]),
                                 ("random patch of the same size (occlusion baseline)", pr["random_patch_accuracy"])])
    sec.image_png(pr["patch_png"], "The trained patch", width=128)


def _render_gallery(r: dict, sec) -> None:
    import matplotlib.pyplot as plt

    g = r["gallery"]
    names = r.get("class_names") or []

    def nm(i):
        return names[i].split(",")[0] if i < len(names) else str(i)

    fig, axes = plt.subplots(len(g), 3, figsize=(6, 2.1 * len(g)), squeeze=False)
    for row, item in zip(axes, g):
        imgs = [decode_base64_image(item[k]) for k in ("clean_png", "delta_png", "adv_png")]
        titles = [f"clean: {nm(item['label'])} (predicted)", f"perturbation x{item['amplification']:.0f}",
                  f"adversarial: {nm(item['adv_pred'])}"]
        for ax, im, t in zip(row, imgs, titles):
            ax.imshow(im, interpolation="nearest")
            ax.set_title(t, fontsize=8, color="C3" if t.startswith("adversarial") and item["adv_pred"] != item["label"]
                         else "k")
            ax.axis("off")
    sec.figure(fig, f"Clean image (correctly classified), amplified perturbation (grey is zero) and adversarial "
                    f"image with the model's predictions ({g[0]['attack']}, eps {g[0]['eps']}; red: fooled)")
