"""``diagnose(data, models=..., checks=...)``: run data checks, write results.json, report.html and issues.csv."""

from __future__ import annotations

import csv
import datetime as _dt
import io
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..data import ImageDataset, load_dataset
from ..errors import UsageError
from ..files import atomic_write, write_json
from ..probes.base import to_jsonable
from .base import CHECKS, DiagnoseContext, Flag

__all__ = ["diagnose", "DEFAULT_CHECKS", "ISSUES_FILE"]

DEFAULT_CHECKS = ("label_issues",)
ISSUES_FILE = "issues.csv"
ISSUE_COLUMNS = ["sample_id", "index", "check", "issue", "score", "given_label", "suggested_label", "partner", "note"]


def _need(ctx: DiagnoseContext, name: str, need: str) -> str | None:
    ds = ctx.dataset
    if need == "labels" and not ds.labeled:
        return f"{ds.spec} is unlabeled"
    if need == "probs" and not ctx.models and ctx.probs_file is None and ctx.cv is None:
        return "out-of-sample probabilities: give --model SPEC (one or more), --probs FILE.npy or --cv K --recipe R"
    if need == "features" and not ctx.models:
        return "a model's features: give --model SPEC"
    if need == "against" and ctx.against is None:
        return "a second dataset: give --against DATA2 (e.g. the training set)"
    if need == "human" and ds.soft_labels is None:
        return f"human label distributions, which {ds.spec} does not carry (zoo:cifar10-jpeg:test-official and " \
               "zoo:cifar10-lossless:test carry CIFAR-10H)"
    return None


def _read_relabel(path: str, ds: ImageDataset) -> dict[int, int]:
    """``sample_id,label`` rows (label: class name or index) -> {dataset index: class index}."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--relabel {path}: no such file")
    index = {ds.sample_id(i): i for i in range(len(ds))}
    names = {n: k for k, n in enumerate(ds.classes.names)}
    out: dict[int, int] = {}
    with p.open(newline="", encoding="utf-8") as fh:
        rows = csv.DictReader(fh)
        if not rows.fieldnames or not {"sample_id", "label"} <= set(rows.fieldnames):
            raise UsageError(f"--relabel {path}: needs a header with the columns sample_id,label")
        for n_row, row in enumerate(rows, start=2):
            sid, lab = (row.get("sample_id") or "").strip(), (row.get("label") or "").strip()
            if sid not in index:
                raise UsageError(f"--relabel {path} line {n_row}: no sample {sid!r} in {ds.spec}")
            if lab in names:
                out[index[sid]] = names[lab]
            elif lab.isdigit() and int(lab) < len(names):
                out[index[sid]] = int(lab)
            else:
                raise UsageError(f"--relabel {path} line {n_row}: {lab!r} is not a class of {ds.spec}")
    return out


def _rescoring(ctx: DiagnoseContext, flags: list[Flag], relabel: dict[int, int] | None) -> dict | None:
    """Accuracy on the given labels, without the flagged label issues, and with corrected labels."""
    got = ctx.probs()
    if got is None or not ctx.dataset.labeled:
        return None
    p, ok = got
    y = ctx.labels()
    pred = p.argmax(1)
    flagged = np.zeros(len(y), dtype=bool)
    for f in flags:
        if f.check == "label_issues":
            flagged[f.index] = True
    keep = ok & ~flagged
    out = {"n_evaluated": int(ok.sum()), "accuracy": float((pred[ok] == y[ok]).mean()) if ok.any() else None,
           "n_label_issues_removed": int((ok & flagged).sum()),
           "accuracy_without_label_issues": float((pred[keep] == y[keep]).mean()) if keep.any() else None}
    if relabel:
        fixed = y.copy()
        for i, k in relabel.items():
            fixed[i] = k
        out["relabeled"] = int(sum(1 for i, k in relabel.items() if y[i] != k))
        out["accuracy_relabeled"] = float((pred[ok] == fixed[ok]).mean()) if ok.any() else None
    return out


def _issues_csv(flags: list[Flag], names: Sequence[str]) -> str:
    def cls(k):
        return "" if k is None else names[k] if 0 <= k < len(names) else str(k)

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(ISSUE_COLUMNS)
    for f in flags:
        w.writerow([f.sample_id, f.index, f.check, f.issue, "" if f.score is None else repr(float(f.score)),
                    cls(f.given), cls(f.suggested), f.partner or "", f.note])
    return buf.getvalue()


def diagnose(
    data: str | ImageDataset,
    *,
    models: Sequence[str] = (),
    probs: str | None = None,
    against: str | ImageDataset | None = None,
    checks: Sequence[str] = DEFAULT_CHECKS,
    check_params: dict[str, dict[str, Any]] | None = None,
    relabel: str | None = None,
    cv: int | None = None,
    recipe: str | None = None,
    train_settings: Sequence[str] = (),
    cv_model: str | None = None,
    out: str | os.PathLike | None = None,
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = 128,
    workers: int | None = None,
    device: str | None = None,
    on_error: str = "skip",
    progress: bool = True,
    store: str | bool | None = True,
    command: list[str] | None = None,
) -> dict:
    """Run the named checks on ``data``; return the results dict (also written to ``out`` with report.html and
    issues.csv, and recorded in the run store like an eval run).

    Probabilities (label issues, human labels, re-scoring) come from ``probs`` (an (N, K) .npy in dataset order),
    from ``cv``-fold cross-validation (``recipe`` and ``train_settings`` as for ``imgclass train``), or from
    ``models`` (averaged; models not trained on ``data``); features (outliers, semantic duplicates, slices) from
    the first model.
    """
    from ..evaluate import environment, record_run
    from ..models import load_model
    from ..results import from_dict

    check_params = check_params or {}
    if not checks:
        raise UsageError("no checks to run; see `imgclass diagnose --help`")
    for name in checks:
        CHECKS[name]
    stray = set(check_params) - set(checks)
    if stray:
        raise UsageError(f"parameters given for check(s) that do not run: {', '.join(sorted(stray))}")
    if probs is not None and cv is not None:
        raise UsageError("the probabilities come from --probs or from --cv, not both (with either, --model only "
                         "gives the features)")
    if cv is not None and not recipe and not cv_model:
        raise UsageError("--cv K trains K models: give --recipe NAME (and --set KEY=VALUE training settings)")
    if cv is not None and limit is not None:
        raise UsageError("--limit cannot be used with --cv (the folds split the whole dataset)")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be at least 1, got {limit}")
    instances = {name: CHECKS[name](**check_params.get(name, {})) for name in checks}
    full = load_dataset(data)
    ds = full
    if limit is not None and limit < len(full):
        if probs is not None:
            raise UsageError("--limit cannot be used with --probs (the file's rows are the whole dataset)")
        ds = full.subset(np.sort(np.random.default_rng(seed).choice(len(full), size=limit, replace=False)))
    clfs = [load_model(m) for m in models]
    ctx = DiagnoseContext(ds, load_dataset(against) if against is not None else None, clfs, probs, seed=seed,
                          batch_size=batch_size, workers=workers, device=device, on_error=on_error, progress=progress)
    if cv is not None:
        import tempfile

        cv_out = Path(out) / "cv" if out is not None else Path(tempfile.mkdtemp(prefix="imgclass-cv-"))
        ctx.cv = {"k": int(cv), "recipe": recipe, "settings": list(train_settings), "out": str(cv_out),
                  "model": cv_model, "spec": data}
    missing = [(n, why) for n, c in instances.items() for need in sorted(c.needs) if (why := _need(ctx, n, need))]
    if missing:
        n, why = missing[0]
        raise UsageError(f"check {n} needs {why}")
    relabels = _read_relabel(relabel, ds) if relabel else None
    model_spec = ",".join(c.source for c in clfs) or (f"probs:{probs}" if probs else "none")
    results: dict[str, Any] = {
        "schema_version": 2, "kind": "diagnose", "imgclass_version": __version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), "command": command, "seed": seed,
        "model": {"spec": model_spec, "models": [{"spec": c.source, **c.describe(), "weights_sha256": c.weights_sha256()}
                                                 for c in clfs],
                  "weights_sha256": clfs[0].weights_sha256() if len(clfs) == 1 else None,
                  "group": model_spec, "group_label": model_spec},
        "data": {**ds.describe(), "files_sha256": ds.files_sha256(),
                 **({"subset": {"limit": limit, "seed": seed}, "n_samples_full": len(full)} if ds is not full else {})},
        "against": None if ctx.against is None else {**ctx.against.describe(),
                                                     "files_sha256": ctx.against.files_sha256()},
        "settings": {"batch_size": batch_size, "workers": workers, "device": device, "on_error": on_error,
                     "probabilities": "file " + probs if probs else
                     (f"{cv}-fold cross-validation, recipe {recipe or '-'}" if cv else
                      (f"mean over {len(clfs)} model(s)" if clfs else None))},
        "environment": environment(ctx.engine(0) if clfs else None),
        "probe_params": {n: to_jsonable(c.params) for n, c in instances.items()},
        "probes": {}, "timing": {}, "warnings": [],
    }
    flags: list[Flag] = []
    for name, check in instances.items():
        t0 = time.perf_counter()
        res, found = check.run(ctx)
        res = to_jsonable(res)
        res["n_flagged"] = len(found)
        if out is not None and ctx.thumbnails:
            from .render import gallery_entries

            res["gallery"] = gallery_entries(ctx, found, ctx.thumbnails)
        results["probes"][name] = res
        results["timing"][name] = time.perf_counter() - t0
        results["warnings"] += [f"{name}: {w}" for w in res.get("warnings") or []]
        flags += found
    by_check = {n: {f.index for f in flags if f.check == n} for n in instances}
    if "label_issues" in by_check and "human_labels" in by_check:  # confident learning against human relabelling
        human, found = by_check["human_labels"], by_check["label_issues"]
        both = len(human & found)
        results["agreement"] = {"label_issues_vs_human_majority": {
            "human_majority_disagrees": len(human), "flagged_by_label_issues": len(found), "both": both,
            "recall": both / len(human) if human else None, "precision": both / len(found) if found else None}}
    resc = _rescoring(ctx, flags, relabels)
    if resc is not None:
        results["rescoring"] = resc
    if ctx.cv is not None and "folds" in ctx.cv:
        results["cross_validation"] = {k: v for k, v in ctx.cv.items() if k != "spec"}
    results["warnings"] += ctx.notes
    skipped = [{"dataset": w, "index": i, **v} for w, d in ctx.skipped.items() for i, v in sorted(d.items())]
    if skipped:
        results["skipped"] = skipped
        results["warnings"].append(f"{len(skipped)} file(s) could not be read and were skipped (listed under skipped)")
    results["issues"] = {"file": ISSUES_FILE if out is not None else None, "n_rows": len(flags),
                         "by_check": {n: sum(1 for f in flags if f.check == n) for n in instances}}
    typed = from_dict(to_jsonable(results), source="this diagnosis")
    results = typed.to_dict()
    if out is not None:
        from ..report import render_report

        out = Path(out)
        write_json(results, out / "results.json")
        atomic_write(out / ISSUES_FILE, _issues_csv(flags, list(ds.classes.names)))
        render_report(typed).write(out / "report.html")
    if store is not False:
        results["run_id"] = record_run(typed, None if out is None else out / "results.json",
                                       url=None if store is True or store is None else store)
    results["flags"] = flags
    return results
