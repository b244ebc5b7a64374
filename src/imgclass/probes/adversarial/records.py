"""Per-sample outcomes of the attacks, keyed by (attack, epsilon), in the order of the evaluated samples."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["Records", "Key"]

Key = tuple[str, str]  # (attack, eps key); minimal attacks use "all" for the epsilon


@dataclass
class Records:
    """What happened to each evaluated sample. Clean errors are never attacked: they count as non-robust, their
    queries are NaN and their minimal distance 0. ``filled`` marks the samples attacked here (a process under
    torchrun attacks its share; :meth:`merge` puts the shares together)."""

    label: torch.Tensor  # (n,) int64
    clean_pred: torch.Tensor  # (n,) int64
    robust: dict[Key, torch.Tensor] = field(default_factory=dict)  # bool: the attack failed on the sample
    queries: dict[Key, torch.Tensor] = field(default_factory=dict)  # float: model calls (black-box attacks)
    distance: dict[str, torch.Tensor] = field(default_factory=dict)  # float: minimal attacks' norm, inf if none found
    ensemble: dict[str, torch.Tensor] = field(default_factory=dict)  # eps -> bool: resisted every member
    ensemble_white: dict[str, torch.Tensor] = field(default_factory=dict)  # eps -> bool: resisted the white-box ones
    large: torch.Tensor | None = None  # bool: resisted PGD at the large budget
    seconds: dict[Key, float] = field(default_factory=dict)  # attack time, summed over samples
    filled: torch.Tensor | None = None  # bool

    def __post_init__(self):
        if self.filled is None:
            self.filled = torch.zeros(len(self.label), dtype=torch.bool)

    @property
    def correct(self) -> torch.Tensor:
        return self.clean_pred == self.label

    def __len__(self) -> int:
        return len(self.label)

    def _slot(self, table: dict, key, fill, dtype) -> torch.Tensor:
        if key not in table:
            table[key] = torch.full((len(self),), fill, dtype=dtype)
        return table[key]

    def put(self, pos: torch.Tensor, part: "ChunkOutcome") -> None:
        """Write a chunk's outcomes at positions ``pos``."""
        pos = pos.cpu()
        for k, v in part.robust.items():
            self._slot(self.robust, k, False, torch.bool)[pos] = v.cpu()
        for k, v in part.queries.items():
            self._slot(self.queries, k, float("nan"), torch.float32)[pos] = v.float().cpu()
        for k, v in part.distance.items():
            self._slot(self.distance, k, 0.0, torch.float32)[pos] = v.float().cpu()
        for k, v in part.ensemble.items():
            self._slot(self.ensemble, k, False, torch.bool)[pos] = v.cpu()
        for k, v in part.ensemble_white.items():
            self._slot(self.ensemble_white, k, False, torch.bool)[pos] = v.cpu()
        if part.large is not None:
            if self.large is None:
                self.large = torch.zeros(len(self), dtype=torch.bool)
            self.large[pos] = part.large.cpu()
        for k, t in part.seconds.items():
            self.seconds[k] = self.seconds.get(k, 0.0) + t
        self.filled[pos] = True

    @classmethod
    def merge(cls, parts: list["Records"]) -> "Records":
        """One record from the shares of several processes (each sample attacked by one of them)."""
        out = cls(parts[0].label, parts[0].clean_pred)
        for p in parts:
            pos = p.filled.nonzero().flatten()
            out.put(pos, ChunkOutcome(
                robust={k: v[pos] for k, v in p.robust.items()}, queries={k: v[pos] for k, v in p.queries.items()},
                distance={k: v[pos] for k, v in p.distance.items()},
                ensemble={k: v[pos] for k, v in p.ensemble.items()},
                ensemble_white={k: v[pos] for k, v in p.ensemble_white.items()},
                large=None if p.large is None else p.large[pos], seconds=p.seconds))
        return out


@dataclass
class ChunkOutcome:
    """The outcomes of one attack batch (tensors over its samples), before they are written into :class:`Records`."""

    robust: dict[Key, torch.Tensor] = field(default_factory=dict)
    queries: dict[Key, torch.Tensor] = field(default_factory=dict)
    distance: dict[str, torch.Tensor] = field(default_factory=dict)
    ensemble: dict[str, torch.Tensor] = field(default_factory=dict)
    ensemble_white: dict[str, torch.Tensor] = field(default_factory=dict)
    large: torch.Tensor | None = None
    seconds: dict[Key, float] = field(default_factory=dict)
