"""Training state that must survive kill -9: every RNG as tensors, and our own state files read back safely."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, torch.Tensor]:
    """Every RNG this process uses, as tensors (torch CPU/CUDA, numpy, python)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, words, py_gauss = random.getstate()
    state = {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
             "numpy_pos": torch.tensor([pos, has_gauss]), "numpy_gauss": torch.tensor([gauss], dtype=torch.float64),
             "python": torch.tensor([version, *words], dtype=torch.int64),
             "python_gauss": torch.tensor([math.nan if py_gauss is None else py_gauss], dtype=torch.float64)}
    if torch.cuda.is_available():
        state.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    """Restore the RNGs saved by `rng_state`."""
    torch.set_rng_state(state["torch"])
    pos, has_gauss = (int(v) for v in state["numpy_pos"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss,
                         float(state["numpy_gauss"][0])))
    py = state["python"].tolist()
    gauss = float(state["python_gauss"][0])
    random.setstate((py[0], tuple(py[1:]), None if math.isnan(gauss) else gauss))
    cuda = [state[k] for k in sorted(state) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def torch_load(path: Path) -> Any:
    """torch.load of our own state files: tensors, numbers and containers only."""
    return torch.load(path, map_location="cpu", weights_only=True)
