"""Random draws per sample, so that an attack's result for one image does not depend on the batch around it.

Each sample has a 64-bit key (from the seed and its index in the dataset). Draw number ``d`` of a sample is the
counter-based stream ``mix64(k_d + (i + 1) * GAMMA)``, i = 0, 1, ... (SplitMix64's output function), where
``k_d = mix64(key ^ mix64((d + 1) * GAMMA))``: any row of any draw is computed without the others, on any
device, in int64 tensor arithmetic (which wraps modulo 2**64). Draws are numbered in the order the attack makes
them; subsets (:meth:`SampleRandom.subset`) share the numbering, so a sample's draws are the same whether it is
attacked alone or among others. Draws shared by the whole batch (Square's window positions) come from
:meth:`SampleRandom.shared`, which depends on the seed alone.
"""

from __future__ import annotations

import math

import torch

__all__ = ["SampleRandom", "sample_keys"]

GAMMA = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
_MASK = (1 << 64) - 1
_PIECE = 1 << 22  # elements per temporary while hashing (bounds the memory of a large draw)


def _signed(c: int) -> int:
    c &= _MASK
    return c - (1 << 64) if c >= 1 << 63 else c


def _lshr(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch shifts arithmetically)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def _mix(z: torch.Tensor) -> torch.Tensor:
    z = (z ^ _lshr(z, 30)) * _signed(_M1)
    z = (z ^ _lshr(z, 27)) * _signed(_M2)
    return z ^ _lshr(z, 31)


def _mix_int(z: int) -> int:
    z &= _MASK
    z = ((z ^ (z >> 30)) * _M1) & _MASK
    z = ((z ^ (z >> 27)) * _M2) & _MASK
    return z ^ (z >> 31)


def sample_keys(seed: int, index: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """int64 keys of the samples at ``index`` (dataset positions) under ``seed``:
    ``mix64(seed' + (index + 1) * GAMMA)``."""
    idx = torch.as_tensor(index, dtype=torch.int64, device=device)
    s = _signed(_mix_int(int(seed)))
    return _mix(s + (idx + 1) * _signed(GAMMA))


class SampleRandom:
    """Per-sample random numbers for a batch of ``len(keys)`` samples; every draw returns ``(N, *shape)``."""

    def __init__(self, keys: torch.Tensor, seed: int = 0, *, _state: dict | None = None):
        self.keys = keys.to(torch.int64)
        self.seed = int(seed)
        self._state = _state if _state is not None else {"draws": 0, "shared": 0}

    @classmethod
    def for_batch(cls, n: int, seed: int, device: torch.device | str | None = None) -> "SampleRandom":
        """Keys from the seed and each sample's position in the batch (when no dataset index is known)."""
        return cls(sample_keys(seed, torch.arange(n), device), seed)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def device(self) -> torch.device:
        return self.keys.device

    def subset(self, idx: torch.Tensor) -> "SampleRandom":
        """The rows ``idx`` (indices or a mask), sharing the draw numbering with this object."""
        return SampleRandom(self.keys[idx], self.seed, _state=self._state)

    def stream(self) -> int:
        """Reserve the next draw number (for a draw made in pieces: pass it with ``start``)."""
        d = self._state["draws"]
        self._state["draws"] += 1
        return d

    def shared(self) -> torch.Generator:
        """A CPU generator for draws shared by the whole batch; depends on the seed and how many came before."""
        k = self._state["shared"]
        self._state["shared"] += 1
        return torch.Generator().manual_seed(_mix_int(_mix_int(self.seed ^ 0x5EED) + (k + 1) * GAMMA) >> 1)

    def _bits(self, n: int, stream: int | None, start: int) -> torch.Tensor:
        """(N, n) int64 words ``start .. start + n - 1`` of a draw."""
        d = self.stream() if stream is None else stream
        kd = _mix(self.keys ^ _signed(_mix_int((d + 1) * GAMMA)))
        out = torch.empty((len(kd), n), dtype=torch.int64, device=self.device)
        step = max(1, _PIECE // max(len(kd), 1))
        for a in range(0, n, step):
            b = min(n, a + step)
            e = torch.arange(start + a + 1, start + b + 1, device=self.device, dtype=torch.int64)
            out[:, a:b] = _mix(kd[:, None] + e[None, :] * _signed(GAMMA))
        return out

    def uniform(self, *shape: int, low: float = 0.0, high: float = 1.0, stream: int | None = None, start: int = 0,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Uniforms in [low, high): 24 random bits each in float32, 53 in float64. ``start`` is in elements."""
        n = math.prod(shape)
        z = self._bits(n, stream, start)
        if dtype == torch.float64:
            u = _lshr(z, 11).to(torch.float64) * 2.0 ** -53
        else:
            u = _lshr(z, 40).to(torch.float32) * 2.0 ** -24
        u = u.to(dtype).view(len(self), *shape)
        return u if (low, high) == (0.0, 1.0) else low + (high - low) * u

    def normal(self, *shape: int, stream: int | None = None, start: int = 0,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Standard normals by Box and Muller from pairs of float64 uniforms (element ``i`` uses uniforms 2i, 2i+1)."""
        n = math.prod(shape)
        u = self.uniform(2 * n, stream=stream, start=2 * start, dtype=torch.float64).view(len(self), n, 2)
        r = torch.sqrt(-2.0 * torch.log1p(-u[..., 0]))
        return (r * torch.cos((2.0 * math.pi) * u[..., 1])).to(dtype).view(len(self), *shape)

    def randint(self, low: int, high: int, *shape: int, stream: int | None = None) -> torch.Tensor:
        """Integers uniform in [low, high) (int64)."""
        u = self.uniform(*shape, stream=stream, dtype=torch.float64)
        return (low + torch.floor(u * (high - low))).to(torch.int64).clamp_(low, high - 1)

    def sign(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """-1 or +1 with equal probability."""
        return (self.uniform(*shape) < 0.5).to(dtype) * 2 - 1
