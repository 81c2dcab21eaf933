"""Batches over in-memory tensors (a linear probe's cached features) in exactly a DataLoader's order.

A DataLoader over a TensorDataset indexes and collates every sample one by one, which dominates a linear probe
on cached features (thousands of tiny head steps). `TensorLoader` slices whole batches out of the tensors
instead, in the sample order the DataLoader would have drawn for the same sampler, `shuffle` and generator, so
a probe gives the same numbers either way (tests/data/test_tensor_loader.py checks it batch by batch).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler, TensorDataset


def loader_order(n: int, shuffle: bool, sampler: Sampler | None, generator: torch.Generator) -> torch.Tensor:
    """The sample order of a DataLoader's first pass with this sampler / shuffle over `generator`.

    With `shuffle`, the DataLoader draws its base seed from the generator before its RandomSampler draws the
    permutation from the same generator; both draws are replayed here in that order.
    """
    if sampler is not None:
        return torch.as_tensor(list(sampler), dtype=torch.long)
    if not shuffle:
        return torch.arange(n)
    torch.empty((), dtype=torch.int64).random_(generator=generator)  # the DataLoader's base seed
    return torch.randperm(n, generator=generator)


class TensorLoader:
    """Batches of a TensorDataset's tensors in a given sample order (the last short batch kept or dropped)."""

    def __init__(self, ds: TensorDataset, batch_size: int, order: torch.Tensor, drop_last: bool) -> None:
        self.tensors, self.batch_size, self.order, self.drop_last = ds.tensors, batch_size, order, drop_last

    def __len__(self) -> int:
        """Batches per pass, as a DataLoader counts them."""
        n = len(self.order)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        """One batch (a tuple with a slice of every tensor) at a time."""
        for b in range(len(self)):
            idx = self.order[b * self.batch_size:(b + 1) * self.batch_size]
            yield tuple(t[idx] for t in self.tensors)
