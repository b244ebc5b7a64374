"""A training run's results.json (kind ``"train"``), its report section (curves, history, settings) and its record.

``run_results`` builds the typed results of a finished (or max_steps-stopped) run from the saved checkpoint whose
weights the final validation measured; ``write_run`` writes results.json and report.html and records the run in
the run store. Importing this module registers the report section as ``imgclass.report.SECTIONS["train"]``.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..report import SECTIONS, Report
from .state import BEST, LAST

if TYPE_CHECKING:
    import torch

    from ..data import ImageDataset
    from ..distributed import DistInfo
    from ..results import Results
    from .config import TrainConfig

__all__ = ["render_training", "run_results", "write_run"]

# the settings the report's table shows first (every setting is in training.config)
_MAIN_SETTINGS = ("model", "data", "subset", "val_data", "epochs", "batch_size", "accum_steps", "opt", "lr", "sched",
                  "warmup_epochs", "weight_decay", "label_smoothing", "mixup", "cutmix", "ema", "ssl", "amp", "seed")


def _data_block(ds: ImageDataset) -> dict:
    return {**ds.describe(), "files_sha256": ds.files_sha256()}


def run_results(out: Path, *, cfg: TrainConfig, history: list[dict], validation: dict | None, best: float,
                num_updates: int, stopped: str | None, train_ds: ImageDataset, val_ds: ImageDataset | None,
                subset_info: dict | None, dist: DistInfo, device: torch.device, seconds: float,
                warnings: list[str], command: list[str] | None = None) -> Results:
    """The typed results of a run in ``out``.

    ``validation``: the final validation (``results``: each probe's raw result, ``settings``: its engine's,
    ``epoch``, ``is_best``: whether it wrote best.safetensors), None without one. The model is the checkpoint whose
    weights that validation measured: best.safetensors when it set the best (the same weights as last.safetensors),
    else last.safetensors, loaded back so that its description, hash and group are what ``imgclass eval`` finds.
    """
    from .. import __version__
    from ..engine import Engine
    from ..evaluate import environment
    from ..models import load_model
    from ..probes import get_probe, to_jsonable
    from ..results import SCHEMA_VERSION, from_dict

    name = BEST if validation is not None and validation["is_best"] else LAST
    spec = f"file:{out / name}"
    clf = load_model(spec)
    group, group_label = clf.group()
    model = {"spec": spec, **clf.describe(), "weights_sha256": clf.weights_sha256(), "group": group,
             "group_label": group_label}
    engine = Engine(clf, device=str(device), progress=False, dist=dist)  # a copy: for the environment only
    probes = to_jsonable(validation["results"]) if validation is not None else {}
    data = _data_block(train_ds)
    if subset_info:
        data.update(subset=subset_info, n_samples_full=subset_info["of"])
    warnings = list(warnings) + [f"{p}: {w}" for p, r in probes.items() for w in (r.get("warnings") or [])]
    skipped = sum(int(row.get("skipped") or 0) for row in history)
    if skipped:
        warnings.append(f"{skipped} training image(s) could not be read and were skipped")
    results: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "kind": "train",
        "imgclass_version": __version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": command,
        "seed": cfg.seed,
        "model": model,
        "data": data,
        **({"label_alignment": engine.alignment(val_ds).to_dict()} if val_ds is not None else {}),
        "settings": {"device": str(device), "world_size": dist.world_size, "amp": device.type == "cuda" and cfg.amp,
                     "channels_last": cfg.channels_last, "batch_size": cfg.batch_size,
                     "accum_steps": cfg.accum_steps, "workers": cfg.workers,
                     "validation": validation["settings"] if validation is not None else None},
        "environment": environment(engine),
        "probe_params": {p: get_probe(p).param_dict() for p in probes},
        "probes": probes,
        "timing": {"train_seconds": sum(float(row.get("seconds") or 0.0) for row in history),
                   "wall_seconds": seconds},
        "warnings": warnings,
        "training": {
            "history": history, "config": cfg.to_dict(), "best_val_top1": best if best >= 0 and not cfg.ssl else None,
            **({"best_val_knn_top1": best if best >= 0 else None, "ssl": cfg.ssl} if cfg.ssl else {}),
            "num_updates": num_updates, "stopped": stopped, "checkpoint": name,
            "best_checkpoint": str(out / BEST) if (out / BEST).is_file() else None,
            "validated_epoch": validation["epoch"] if validation is not None else None,
            "validation_data": _data_block(val_ds) if val_ds is not None else None,
        },
    }
    return from_dict(to_jsonable(results), source="this run's results")


def write_run(out: Path, results: Results, *, store: str | bool | None = True) -> tuple[dict, int | None]:
    """``out/results.json`` and ``out/report.html``, then the run store's record (``store``: True for the default
    store, a URL, False for none); returns the results dict and the run's id in the store."""
    from ..evaluate import record_run
    from ..files import write_json
    from ..report import render_report

    d = results.to_dict()
    write_json(d, out / "results.json")
    render_report(results).write(out / "report.html")
    run_id = None
    if store is not False:
        run_id = record_run(results, out / "results.json", url=None if store is True or store is None else store)
    return d, run_id


# -- the report section ---------------------------------------------------------------------------------------

def _curve(x: list, ys: dict[str, list], ylabel: str, *, log: bool = False):
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 3.2))
    for label, y in ys.items():
        ax.plot(x, y, marker="o", ms=3, label=label)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    if log and all(v is not None and v > 0 for y in ys.values() for v in y):
        ax.set_yscale("log")
    if len(ys) > 1:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def _val_metrics(history: list[dict], columns: list[str]):
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(columns), figsize=(3.2 * len(columns) + 0.6, 3.0), squeeze=False)
    for ax, col in zip(axes[0], columns):
        rows = [r for r in history if isinstance(r.get(col), (int, float))]
        ax.plot([r["epoch"] for r in rows], [r[col] for r in rows], marker="o", ms=3, color="#4a7ab5")
        ax.set_title(col.removeprefix("val_"), fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def render_training(results: Results, rep: Report) -> None:
    """The "Training" section: loss, learning-rate and validation curves per epoch, the history, the settings."""
    t = getattr(results, "training", None) or {}
    history: list[dict] = t.get("history") or []
    cfg: dict = t.get("config") or {}
    s = rep.section("Training", "training")
    best = t.get("best_val_top1")
    line = f"{len(history)} epoch(s), {t.get('num_updates')} update(s)"
    if isinstance(best, (int, float)):
        line += f", best validation top-1 {best:.4f}"
    if isinstance(t.get("best_val_knn_top1"), (int, float)):
        line += (f", self-supervised ({t.get('ssl')}): best validation kNN top-1 {t['best_val_knn_top1']:.4f} "
                 f"(k {cfg.get('knn_k')}, temperature {cfg.get('knn_t')}, bank of the training set)")
    if t.get("stopped"):
        line += f", stopped: {t['stopped']}"
    s.p(line + ".")
    if t.get("validated_epoch") and not results.probes:
        s.p(f"Validated after epoch {t['validated_epoch']}: no probes ran; the history holds the monitor's figures.")
    elif t.get("validated_epoch"):
        s.p(f"The probe sections below are the validation of {results.model.spec} after epoch "
            f"{t['validated_epoch']}.")
    else:
        s.p("No validation data: no probe results.")
    if history:
        x = [r["epoch"] for r in history]
        s.figure(_curve(x, {"train loss": [r.get("train_loss") for r in history]}, "training loss"),
                 "training loss per epoch (mean over the epoch's images)")
        s.figure(_curve(x, {"lr": [r.get("lr") for r in history]}, "learning rate", log=True),
                 "learning rate at the end of each epoch")
        val_cols = [c for c in dict.fromkeys(k for r in history for k in r) if c.startswith("val_")]
        if val_cols:
            s.figure(_val_metrics(history, val_cols), "validation metrics per validated epoch")
        columns = list(dict.fromkeys(k for r in history for k in r))
        s.table(columns, [["" if r.get(c) is None else r[c] for c in columns] for r in history])
    main = [(k, cfg[k]) for k in _MAIN_SETTINGS if k in cfg and (k != "ssl" or cfg[k])]
    main += [("world size", results.settings.get("world_size")), ("device", results.settings.get("device")),
             ("checkpoint", t.get("checkpoint")), ("best checkpoint", t.get("best_checkpoint") or "")]
    s.kv([(k, "" if v is None else v) for k, v in main])


SECTIONS["train"] = render_training
