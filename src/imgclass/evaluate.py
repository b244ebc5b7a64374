"""``evaluate(model, data, probes=...)``: run probes, write results.json and report.html."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from . import __version__
from .data import ImageDataset, load_dataset
from .engine import Engine
from .errors import UsageError
from .files import write_json
from .models import Classifier, load_model
from .probes import PROBES, ProbeContext, get_probe, to_jsonable
from .results import SAMPLES_FILE, SCHEMA_VERSION, SampleTable, from_dict, write_samples

__all__ = ["evaluate", "SCHEMA_VERSION", "write_json", "record_run", "environment"]


def environment(engine: Engine | None) -> dict:
    """Versions and machine facts a run records (Python, torch, timm, platform, threads, the GPU's name)."""
    import timm

    env = {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
           "platform": platform.platform(), "torch_threads": torch.get_num_threads()}
    if engine is not None and engine.device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(engine.device)
    return env


def evaluate(
    model: str | Classifier | torch.nn.Module,
    data: str | ImageDataset,
    *,
    probes: Sequence[str] = ("accuracy", "calibration"),
    probe_params: dict[str, dict[str, Any]] | None = None,
    out: str | os.PathLike | None = None,
    batch_size: int = 128,
    workers: int | None = None,
    device: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    on_error: str = "skip",
    amp: bool = False,
    fast: bool = True,
    progress: bool = True,
    command: list[str] | None = None,
    model_options: dict[str, Any] | None = None,
    store: str | bool | None = True,
) -> dict:
    """Evaluate ``model`` on ``data`` with the named probes; return the results dict.

    With ``out``, writes ``out/results.json`` and ``out/report.html`` (rank 0 only under torchrun).
    ``limit`` evaluates a seeded random subset of that many samples (kept in dataset order). ``model`` may be a
    spec, a Classifier or a plain ``nn.Module``; ``model_options`` are passed to :func:`~imgclass.load_model` (a
    module's contract: ``mean``, ``std``, ``classes``, ``input_size``...; a spec's options).
    ``amp``: autocast where it is fast (float16 on CUDA, bfloat16 on CPUs with native bfloat16); ``fast``:
    predict with the folded inference copy when it matches the model (see ``Engine``).
    ``store``: record the run in the run store (True: the default store, ``$IMGCLASS_STORE`` or
    ``$IMGCLASS_HOME/runs.db``; a SQLAlchemy URL; False: not recorded). With ``out``, per-sample outputs go to
    ``out/samples.npz``. The returned dict is the results.json content (validated by :mod:`imgclass.results`);
    its ``run_id`` is the store's id of the run.
    """
    probe_params = probe_params or {}
    if not probes:
        raise UsageError("no probes to run; see `imgclass probes`")
    for name in probes:
        PROBES[name]  # an unknown name raises here, with the close matches and the list
    stray = set(probe_params) - set(probes)
    if stray:
        raise UsageError(f"parameters given for probe(s) that do not run: {', '.join(sorted(stray))} "
                         f"(running: {', '.join(probes)})")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be at least 1, got {limit}")
    instances = {name: get_probe(name, **probe_params.get(name, {})) for name in probes}
    torch.manual_seed(seed)
    full = load_dataset(data)
    clf = load_model(model, **(model_options or {}))
    if not full.labeled:
        need = [name for name in probes if PROBES[name].needs_labels]
        if need:
            raise UsageError(f"{full.spec} is unlabeled (a flat folder of images, or labels=none), and probe(s) "
                             f"{', '.join(need)} measure against labels: put the images in one sub-folder per class")
    ds = full
    subset = None
    if limit is not None and limit < len(full):
        idx = np.sort(np.random.default_rng(seed).choice(len(full), size=limit, replace=False))
        ds = full.subset(idx)
        subset = {"limit": int(limit), "selection": f"seeded random subset (seed {seed}), dataset order"}
    engine = Engine(clf, batch_size=batch_size, workers=workers, device=device, on_error=on_error, amp=amp,
                    fast=fast, progress=progress)
    alignment = engine.alignment(ds)
    table = SampleTable(np.array([ds.sample_id(i) for i in range(len(ds))], dtype=str), ds.labels)
    ctx = ProbeContext(clf, ds, engine, seed=seed, samples=table)
    ctx.shared["probes"] = {name: p.params for name, p in instances.items()}  # who else runs, with what settings
    group, group_label = clf.group()
    results: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "kind": "eval",
        "imgclass_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "seed": seed,
        "model": {"spec": clf.source, **clf.describe(), "weights_sha256": clf.weights_sha256(), "group": group,
                  "group_label": group_label},
        "data": {**ds.describe(), "files_sha256": ds.files_sha256(),
                 **({"subset": subset, "n_samples_full": len(full)} if subset else {})},
        "label_alignment": alignment.to_dict(),
        "settings": engine.settings(),
        "environment": environment(engine),
        "probe_params": {name: p.param_dict() for name, p in instances.items()},
        "probes": {},
        "timing": {},
        "warnings": [],
    }
    if limit is not None and limit >= len(full):
        results["warnings"].append(f"--limit {limit} is not below the dataset's {len(full)} samples: every sample "
                                   "was evaluated")
    for what in ("contract", "classes"):
        if str(clf.info.get(what, "")).startswith("assumed"):
            results["warnings"].append(f"model {what} {clf.info[what]} (pass model_options to state it)")
    if alignment.method == "index":
        results["warnings"].append(
            "Class names of the model or the data are unknown: classes were matched by index. "
            "Name the model's classes with ?classes=... to have them matched by name."
        )
    for name, probe in instances.items():
        t0 = time.perf_counter()
        results["probes"][name] = to_jsonable(probe.run(ctx))
        results["timing"][name] = time.perf_counter() - t0
        results["warnings"] += [f"{name}: {w}" for w in results["probes"][name].get("warnings") or []]
    pred = engine.cached_predictions(ds)  # the probes' own prediction pass, if one made it: no extra pass here
    if pred is not None:
        results["timing"]["inference_seconds"] = pred.seconds
        results["timing"]["images_per_second"] = len(pred.labels) / pred.seconds if pred.seconds > 0 else None
    results["settings"].update(engine.settings())  # the inference copy is made at the first prediction
    if amp and not engine.amp:
        results["warnings"].append(f"--amp: computed in float32 ({engine.precision_reason})")
    skipped = engine.skipped_files(ds)  # met by any probe's pass over the data
    if skipped:
        results["warnings"].append(f"{len(skipped)} file(s) could not be read and were skipped "
                                   "(listed under probes.accuracy.skipped when that probe runs).")
        results["skipped"] = [{"path": s["path"] or s["id"], "reason": s["reason"]} for s in skipped]
    if out is not None and table.probes:
        results["samples"] = SAMPLES_FILE
    typed = from_dict(to_jsonable(results), source="this run's results")
    results = typed.to_dict()
    if not engine.dist.is_main:
        return results
    if out is not None:
        from .report import render_report

        out = Path(out)
        write_json(results, out / "results.json")
        if table.probes:
            write_samples(table, out / SAMPLES_FILE)
        render_report(typed).write(out / "report.html")
    if store is not False:
        results["run_id"] = record_run(typed, None if out is None else out / "results.json",
                                       url=None if store is True or store is None else store)
    return results


def record_run(results, results_path: str | os.PathLike | None, *, url: str | None = None) -> int:
    """Record a run in the store; a store that fails says so in one line after the results are safe on disk."""
    from .errors import ImgclassError
    from .store import record_results

    try:
        return record_results(results, results_path, url=url)
    except ImgclassError as e:
        where = f"; the results are in {results_path} (index them later with `imgclass runs import`)" \
            if results_path is not None else ""
        raise ImgclassError(f"{e}{where}") from None
