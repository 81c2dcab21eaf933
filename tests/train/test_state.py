"""Training state: every RNG saved and restored as tensors."""

from __future__ import annotations

import random

import numpy as np
import torch

from synthfm.train.state import rng_state, set_rng_state


def test_rng_state_round_trip() -> None:
    """Restoring saved RNG state replays the same torch, numpy and python draws."""
    state = rng_state()
    draws = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1]) and draws[2] == again[2]
