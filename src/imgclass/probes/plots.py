"""Matplotlib figures shared by the probes' report sections (Agg backend, no display needed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

MAX_BARS = 40


def _short(name: str, n: int = 22) -> str:
    s = name.split(",")[0].strip()
    return s if len(s) <= n else s[: n - 1] + "…"


def per_class_bars(names: list[str], acc: list, support: list):
    """Per-class accuracy; with many classes, the worst and best MAX_BARS/2 of them."""
    a = np.array([np.nan if v is None else v for v in acc], dtype=float)
    idx = np.arange(len(names))
    idx = idx[~np.isnan(a)]
    title = "per-class accuracy"
    if len(idx) > MAX_BARS:
        order = idx[np.argsort(a[idx], kind="stable")]
        idx = np.concatenate([order[: MAX_BARS // 2], order[-MAX_BARS // 2:]])
        title += f" (worst and best {MAX_BARS // 2} of {len(names)} classes)"
    fig, ax = plt.subplots(figsize=(max(6, 0.28 * len(idx) + 2), 3.6))
    ax.bar(range(len(idx)), a[idx], color="#4a7ab5")
    ax.set_xticks(range(len(idx)))
    ax.set_xticklabels([f"{_short(names[i])} ({support[i]})" for i in idx], rotation=70, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.axhline(np.nanmean(a), color="k", lw=0.8, ls="--", label="mean")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def confusion_heatmap(cm: np.ndarray, names: list[str]):
    """Row-normalised confusion matrix; with many classes, the MAX_BARS most confused ones."""
    cm = np.asarray(cm, dtype=float)
    idx = np.arange(len(names))
    title = "confusion matrix"
    if len(names) > MAX_BARS:
        off = cm.sum(1) - np.diag(cm) + cm.sum(0) - np.diag(cm)
        idx = np.sort(np.argsort(-off, kind="stable")[:MAX_BARS])
        title += f" ({MAX_BARS} most confused of {len(names)} classes)"
    sub = cm[np.ix_(idx, idx)]
    rows = cm[idx].sum(1, keepdims=True)
    norm = np.divide(sub, rows, out=np.zeros_like(sub), where=rows > 0)
    size = max(4.5, 0.22 * len(idx) + 2.5)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(idx)))
    ax.set_yticks(range(len(idx)))
    fs = 8 if len(idx) <= 20 else 6
    ax.set_xticklabels([_short(names[i], 14) for i in idx], rotation=90, fontsize=fs)
    ax.set_yticklabels([_short(names[i], 14) for i in idx], fontsize=fs)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if len(idx) <= 12:
        for i in range(len(idx)):
            for j in range(len(idx)):
                if sub[i, j]:
                    ax.text(j, i, int(sub[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return fig


def reliability_diagram(rel: dict, ece: float):
    conf = np.asarray(rel["confidence"])
    acc = np.asarray(rel["accuracy"])
    count = np.asarray(rel["count"])
    nb = len(count) - 1  # the last slot holds confidences of exactly 1.0
    width = 1.0 / nb
    centers = (np.arange(nb) + 0.5) * width
    acc_b, conf_b, cnt_b = acc[:nb].copy(), conf[:nb].copy(), count[:nb].copy()
    if count[nb] > 0:  # fold the conf == 1 slot into the top bin for display
        tot = cnt_b[-1] + count[nb]
        acc_b[-1] = (acc_b[-1] * cnt_b[-1] + acc[nb] * count[nb]) / tot
        conf_b[-1] = (conf_b[-1] * cnt_b[-1] + conf[nb] * count[nb]) / tot
        cnt_b[-1] = tot
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    filled = cnt_b > 0
    ax.bar(centers[filled], acc_b[filled], width=width, edgecolor="k", color="#4a7ab5", label="accuracy")
    ax.bar(centers[filled], conf_b[filled] - acc_b[filled], bottom=acc_b[filled], width=width, edgecolor="r",
           color="#e07070", alpha=0.35, label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set_ylim(0, 1)
    ax.set_xlim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability diagram (ECE = {ece:.4f})")
    ax.legend(loc="upper left", fontsize=8)
    ax2.bar(centers, cnt_b, width=width, color="#888", edgecolor="k")
    ax2.set_xlabel("confidence")
    ax2.set_ylabel("samples (log)")
    if cnt_b.max() > 0:
        ax2.set_yscale("log")
        ax2.set_ylim(0.8, cnt_b.max() * 1.5)
    return fig
