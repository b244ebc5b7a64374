"""Out-of-sample probabilities by K-fold cross-validation: K models trained with ``imgclass train`` on K-1 folds
each (seeded, stratified: ``?folds=K&fold=k&part=train`` of the data layer), each predicting its held-out fold."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from ..data import fold_assignment, load_dataset
from ..errors import UsageError

__all__ = ["cross_val_probs"]


def _with_options(spec: str, options: str) -> str:
    return f"{spec}{'&' if '?' in spec else '?'}{options}"


def cross_val_probs(spec: str, *, k: int, recipe: str | None, settings: list[str] = (), out: str | Path,
                    model: str | None = None, seed: int = 0, batch_size: int = 128, workers: int | None = None,
                    device: str | None = None, progress: bool = True) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """(N, K classes) probabilities of every sample from the model that did not see it, the (N,) mask of samples
    that have them, and one record per fold (its run folder and held-out size). Training runs resume: rerunning
    continues where a killed run stopped."""
    from ..engine import Engine
    from ..train import train
    from ..train.config import resolve_settings

    if not isinstance(spec, str):
        raise UsageError("cross-validation needs DATA as a spec (the training runs load it by name)")
    if k < 2:
        raise UsageError(f"--cv needs at least 2 folds, got {k}")
    full = load_dataset(spec)
    n, c = len(full), len(full.classes)
    folds = fold_assignment(full.labels, k, seed)
    counts = np.bincount(full.labels, minlength=c)
    if counts.min() < k:
        raise UsageError(f"--cv {k}: class {full.classes.names[int(counts.argmin())]!r} has only {counts.min()} "
                         f"sample(s), fewer than the folds")
    probs = np.zeros((n, c))
    ok = np.zeros(n, dtype=bool)
    records = []
    for fold in range(k):
        opts = f"folds={k}&fold={fold}&fold_seed={seed}"
        given = {"data": _with_options(spec, opts + "&part=train"), "model": model, "val_data": None}
        cfg, _ = resolve_settings(recipe, list(settings), command_line=given)
        cfg = dataclasses.replace(cfg, val_data=None)  # the held-out fold is predicted below; no other validation
        run_dir = Path(out) / f"fold{fold}"
        result = train(cfg, run_dir, progress=progress, store=False)
        clf = result["classifier"]
        held = load_dataset(_with_options(spec, opts + "&part=heldout"))
        where = np.flatnonzero(folds == fold)
        if len(held) != len(where):
            raise RuntimeError(f"fold {fold}: {len(held)} held-out samples, expected {len(where)}")
        pred = Engine(clf, batch_size=batch_size, workers=workers, device=device, progress=progress).predict(held)
        rows = where[pred.indices]
        probs[rows] = torch.softmax(pred.logits.double(), 1).numpy()
        ok[rows] = True
        records.append({"fold": fold, "run": str(run_dir), "n_heldout": int(len(where)),
                        "n_train": int(n - len(where))})
    return probs, ok, records
