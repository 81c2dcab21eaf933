"""Per-sample random draws as pure functions of (sample seed, stream, position), for a whole batch at once.

A counter-based generator: element k of stream s of the sample with seed z is splitmix64(key(z, s) + k * phi),
computed for every sample and element of a batch in a few vectorised uint64 operations (numpy wraps on
overflow). A sample's timestep, dropout draws and noise therefore do not depend on the batch it sits in, the
rank that draws it or a resume, without building a torch.Generator per sample. Normals come from uniforms by
Box-Muller. Under torch.compile these functions run eagerly (a graph break), as data preparation.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from synthfm.train.rng import GOLDEN, splitmix

MASK = (1 << 64) - 1
# streams of a training sample's draws
TIMESTEP, DROPOUT, NOISE, LATENT = 0, 1, 2, 3


def _seeds(seeds: torch.Tensor | np.ndarray) -> np.ndarray:
    """Sample seeds (any integer dtype, 64-bit two's complement) as uint64."""
    arr = seeds.detach().cpu().numpy() if isinstance(seeds, torch.Tensor) else np.asarray(seeds)
    return arr.astype(np.int64).view(np.uint64).reshape(-1)


@torch.compiler.disable  # numpy uint64 arithmetic: run eagerly inside a compiled training step
def uniforms(seeds: torch.Tensor | np.ndarray, stream: int, n: int) -> torch.Tensor:
    """(B, n) float64 uniforms in (0, 1): row b depends only on seeds[b], `stream` and the column."""
    with np.errstate(over="ignore"):
        key = splitmix(_seeds(seeds) + np.uint64((stream + 1) * 0xD1B54A32D192ED03 & MASK))
        ctr = (np.arange(1, n + 1, dtype=np.uint64) * np.uint64(GOLDEN))
        bits = splitmix(key[:, None] + ctr[None, :]) >> np.uint64(11)
    return torch.from_numpy((bits.astype(np.float64) + 0.5) * 2.0 ** -53)


@torch.compiler.disable
def normals(seeds: torch.Tensor | np.ndarray, stream: int, shape: tuple[int, ...],
            dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, *shape) standard normals (Box-Muller on `uniforms`): row b depends only on seeds[b] and `stream`."""
    n = math.prod(shape)
    half = (n + 1) // 2
    u = uniforms(seeds, stream, 2 * half)
    r = torch.sqrt(-2.0 * torch.log(u[:, :half]))
    angle = 2.0 * math.pi * u[:, half:]
    z = torch.cat([r * torch.cos(angle), r * torch.sin(angle)], dim=1)[:, :n]
    return z.to(dtype).reshape(-1, *shape)
