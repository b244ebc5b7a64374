"""Training checkpoints that survive a kill at any moment.

A checkpoint is two files: ``state-<step>.pt`` (everything needed to resume: model, optimizer, EMA,
position in the data order, best score, history; plain tensors and containers, so it loads with
``weights_only=True``) and ``last.safetensors``, a ``file:`` model checkpoint whose metadata names the
state file. Both are written to temporary names and renamed into place, the state first, so
``last.safetensors`` always points to a complete state; older state files are removed afterwards.
The logs (``log.jsonl``, ``log.csv``) are rewritten, atomically, from the history the checkpoint holds, so they
never list an epoch twice after a resume.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import torch

from ..files import atomic_write
from ..models.checkpoint import read_checkpoint, save_checkpoint
from ..models.classifier import Classifier

__all__ = ["save_training_checkpoint", "load_training_state", "write_logs", "LAST", "BEST"]

LAST, BEST = "last.safetensors", "best.safetensors"


def _atomic_torch_save(obj, path: Path) -> None:
    atomic_write(path, writer=lambda tmp: torch.save(obj, tmp))


def save_training_checkpoint(out: Path, *, classifier: Classifier, weights: dict, state: dict, meta: dict,
                             best: bool = False) -> Path:
    """Write the resume state, then ``last.safetensors`` (``weights`` with ``meta``) pointing to it."""
    out.mkdir(parents=True, exist_ok=True)
    name = f"state-{state['num_updates']:09d}-{state['epoch']:04d}-{state['step_in_epoch']:06d}.pt"
    _atomic_torch_save(state, out / name)
    save_checkpoint(classifier, out / LAST, extra={**meta, "resume_state": name}, state_dict=weights)
    if best:
        save_checkpoint(classifier, out / BEST, extra=meta, state_dict=weights)
    for old in out.glob("state-*.pt"):
        if old.name != name:
            old.unlink(missing_ok=True)
    return out / LAST


def load_training_state(out: Path) -> dict | None:
    """The state ``last.safetensors`` points to, or None when the folder has no checkpoint."""
    last = out / LAST
    if not last.is_file():
        return None
    _, meta = read_checkpoint(last)
    name = (meta or {}).get("extra", {}).get("resume_state")
    if not name or not (out / name).is_file():
        raise RuntimeError(f"{last} names no resume state (or {name} is missing); cannot resume from {out}")
    return torch.load(out / name, map_location="cpu", weights_only=True)


def write_logs(out: Path, history: list[dict]) -> None:
    """``log.jsonl`` (a row per line) and ``log.csv`` (the union of the rows' columns) from ``history``."""
    atomic_write(out / "log.jsonl", "".join(json.dumps(row) + "\n" for row in history), fsync=False)
    columns = list(dict.fromkeys(k for row in history for k in row))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    w.writerows(history)
    atomic_write(out / "log.csv", buf.getvalue(), fsync=False)
