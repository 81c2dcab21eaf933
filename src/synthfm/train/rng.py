"""Counter-based random numbers: seeds and uniforms as pure functions of integers, vectorised over a batch.

A sample's draws depend only on its own seed and a counter (splitmix64's finaliser over uint64, wrapping), never
on the batch it sits in, the rank that draws it or a resume; so resumed and multi-process runs equal one
uninterrupted run. `seed_of` derives independent stream seeds with numpy's SeedSequence.
"""

from __future__ import annotations

import numpy as np
import torch

GOLDEN = 0x9E3779B97F4A7C15  # 2^64 / phi, splitmix64's increment (a Python int; np.uint64(GOLDEN) in arrays)
_GOLDEN64 = np.uint64(GOLDEN)


def splitmix(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, elementwise on uint64 (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def hash_seeds(*parts: int | np.ndarray) -> np.ndarray:
    """63-bit seeds hashed from integers or integer arrays (broadcast), one per element."""
    with np.errstate(over="ignore"):
        h = np.uint64(0x243F6A8885A308D3)
        for p in parts:
            h = splitmix(h ^ splitmix(np.asarray(p).astype(np.int64).astype(np.uint64) + _GOLDEN64))
        return (np.asarray(h) >> np.uint64(1)).astype(np.int64)


@torch.compiler.disable  # numpy uint64 arithmetic: run eagerly inside a compiled step
def counter_uniform(seeds: np.ndarray | torch.Tensor, n: int) -> torch.Tensor:
    """(B, n) float64 uniforms in [0, 1): entry (b, k) a hash of (seeds[b], k), so row b depends on seeds[b] only."""
    seeds = np.asarray(seeds.cpu() if isinstance(seeds, torch.Tensor) else seeds, dtype=np.int64).reshape(-1, 1)
    with np.errstate(over="ignore"):
        x = splitmix(seeds.astype(np.uint64) ^ splitmix(np.arange(n, dtype=np.uint64) + _GOLDEN64))
    return torch.from_numpy((x >> np.uint64(11)).astype(np.float64) * 2.0**-53)


def seed_of(*parts: int) -> int:
    """A 63-bit seed from integers (independent streams via SeedSequence; the plan and per-sample transforms)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1, np.uint64)[0] >> 1)
