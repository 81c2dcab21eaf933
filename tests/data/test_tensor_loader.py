"""TensorLoader gives a DataLoader's batches over a TensorDataset, in the same order."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset, WeightedRandomSampler

from synthfm.data.tensor_loader import TensorLoader, loader_order


def _dataset(n: int = 23) -> TensorDataset:
    """Features, integer targets and row indices, as a probe caches them."""
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g), torch.arange(n))


def _sampler(n: int) -> WeightedRandomSampler:
    """A seeded sampler with replacement, like the class-balanced one."""
    return WeightedRandomSampler(torch.linspace(0.1, 1.0, n, dtype=torch.double), n, replacement=True,
                                 generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize(("shuffle", "drop_last", "with_sampler"),
                         [(False, False, False), (True, False, False), (True, True, False), (True, True, True)])
def test_same_batches_as_dataloader(shuffle: bool, drop_last: bool, with_sampler: bool) -> None:
    """Every batch equals the DataLoader's for the same seed, shuffle, sampler and drop_last."""
    ds = _dataset()
    reference = DataLoader(ds, batch_size=4, shuffle=shuffle and not with_sampler, drop_last=drop_last,
                           sampler=_sampler(len(ds)) if with_sampler else None,
                           generator=torch.Generator().manual_seed(11))
    order = loader_order(len(ds), shuffle, _sampler(len(ds)) if with_sampler else None,
                         torch.Generator().manual_seed(11))
    fast = TensorLoader(ds, 4, order, drop_last)
    expected = list(reference)
    got = list(fast)
    assert len(fast) == len(reference) == len(expected) == len(got)
    for a, b in zip(expected, got, strict=True):
        for x, y in zip(a, b, strict=True):
            assert x.dtype == y.dtype
            assert torch.equal(x, y)


def test_shuffle_depends_on_the_seed_only() -> None:
    """Two generators with the same seed give the same order; another seed gives another."""
    one = loader_order(50, True, None, torch.Generator().manual_seed(1))
    assert torch.equal(one, loader_order(50, True, None, torch.Generator().manual_seed(1)))
    assert not torch.equal(one, loader_order(50, True, None, torch.Generator().manual_seed(2)))
    assert sorted(one.tolist()) == list(range(50))
