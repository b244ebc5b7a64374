"""Per-sample outputs beside results.json (``samples.npz``), so two runs can be compared sample by sample.

Layout: ``sample_id`` and ``label`` over the evaluated samples (dataset order), and for each probe that
records samples ``PROBE.index`` (positions into those arrays) with the probe's arrays ``PROBE.NAME``
(first axis aligned with ``PROBE.index``; e.g. ``accuracy.pred``, ``accuracy.confidence``, ``accuracy.correct``).
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .models import ResultsError

__all__ = ["SAMPLES_FILE", "SampleTable", "write_samples", "read_samples"]

SAMPLES_FILE = "samples.npz"


@dataclass
class SampleTable:
    sample_id: np.ndarray  # (N,) str
    label: np.ndarray  # (N,) int64, -1 where unlabeled
    probes: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # probe -> {"index": ..., name: ...}

    def add(self, probe: str, positions: np.ndarray, **arrays: np.ndarray) -> None:
        """Record a probe's per-sample arrays for the samples at ``positions`` (into ``sample_id``)."""
        positions = np.asarray(positions, dtype=np.int64)
        entry = self.probes.setdefault(probe, {"index": positions})
        if not np.array_equal(entry["index"], positions):
            raise ValueError(f"probe {probe!r} recorded samples for two different index sets")
        for name, a in arrays.items():
            a = np.asarray(a)
            if len(a) != len(positions):
                raise ValueError(f"{probe}.{name}: {len(a)} values for {len(positions)} samples")
            entry[name] = a

    def column(self, probe: str, name: str) -> dict[str, object]:
        """``sample_id -> value`` of one probe's array (first axis)."""
        entry = self.probes[probe]
        return dict(zip(self.sample_id[entry["index"]].tolist(), entry[name].tolist()))

    def has(self, probe: str, name: str) -> bool:
        return probe in self.probes and name in self.probes[probe]


def write_samples(table: SampleTable, path: str | os.PathLike) -> Path:
    from ..files import atomic_write

    arrays = {"sample_id": np.asarray(table.sample_id, dtype=str), "label": np.asarray(table.label, dtype=np.int64)}
    for probe, entry in table.probes.items():
        for name, a in entry.items():
            arrays[f"{probe}.{name}"] = a
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return atomic_write(path, buf.getvalue())


def read_samples(path: str | os.PathLike) -> SampleTable:
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise ResultsError(f"{p}: no such file (per-sample outputs are written by imgclass eval --out since 0.2.0)") from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise ResultsError(f"{p}: not a readable samples file ({e})") from None
    if "sample_id" not in arrays or "label" not in arrays:
        raise ResultsError(f"{p}: not a samples file of imgclass (no sample_id/label arrays)")
    t = SampleTable(arrays.pop("sample_id"), arrays.pop("label"))
    for key, a in arrays.items():
        probe, _, name = key.partition(".")
        t.probes.setdefault(probe, {})[name] = a
    return t
