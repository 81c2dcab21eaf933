"""Counter-based seeds and uniforms, and the batched random-resized-crop of the source mixture, by hand."""

from __future__ import annotations

import numpy as np
import torch

from synthfm.train.mixture import (
    BLOCK,
    MixturePlan,
    PlanBatchSampler,
    batch_crop,
    crop_params,
    sample_seed,
    sample_seeds,
)
from synthfm.train.rng import counter_uniform, hash_seeds


def test_hash_seeds_vectorised_equals_scalar_and_spreads() -> None:
    """Batch and one-at-a-time seeds agree; nearby keys give unrelated 63-bit seeds."""
    keys = [(0, i, 0) for i in range(100)] + [(1, 5, 2)]
    batch = sample_seeds(3, keys)
    assert [sample_seed(3, k) for k in keys] == batch.tolist()
    assert len(set(batch.tolist())) == len(keys) and (batch >= 0).all()
    assert int(hash_seeds(1, 2)) != int(hash_seeds(2, 1))
    bits = np.unpackbits(batch[:100].view(np.uint8)).reshape(100, 64)[:, :63]  # little-endian: top bit is 0
    assert 0.45 < bits.mean() < 0.55


def test_counter_uniform_rows_depend_only_on_their_seed() -> None:
    """Row b is a function of seeds[b] alone, whatever else is in the batch; values are uniform on [0, 1)."""
    a = counter_uniform(np.array([5, 9, 11]), 1000)
    b = counter_uniform(torch.tensor([11, 5]), 1000)
    assert torch.equal(a[0], b[1]) and torch.equal(a[2], b[0])
    assert not torch.equal(a[0], a[1])
    assert a.min() >= 0 and a.max() < 1
    assert abs(a.mean().item() - 0.5) < 0.02 and abs(a.var().item() - 1 / 12) < 0.005


def test_crop_params_follow_random_resized_crop() -> None:
    """Scale (1, 1) on a square image: the whole image (the fallback); else boxes fit and have the drawn area."""
    u = counter_uniform(np.arange(200), 41)
    full = crop_params(u, 16, 16, (1.0, 1.0))
    assert torch.allclose(full[:, :4], torch.tensor([0.0, 0.0, 16.0, 16.0], dtype=full.dtype).expand(200, 4))
    p = crop_params(u, 16, 16, (0.2, 0.5))
    x0, y0, w, h, flip = p.unbind(1)
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + w <= 16 + 1e-9).all() and (y0 + h <= 16 + 1e-9).all()
    assert ((w * h / 256 >= 0.2 - 1e-9) & (w * h / 256 <= 0.5 + 1e-9)).all()
    assert ((w / h >= 3 / 4 - 1e-9) & (w / h <= 4 / 3 + 1e-9)).all()
    assert 0.35 < flip.mean() < 0.65


def test_batch_crop_against_hand_computation() -> None:
    """Identity box = the image; a flipped one = torch.flip; the left half of a column ramp, bilinear:
    output column k samples input x = (k + 0.5) / 2 - 0.5, clamped at the border."""
    ramp = torch.arange(8.0).expand(1, 1, 8, 8).clone()
    ident = torch.tensor([[0.0, 0.0, 8.0, 8.0, 0.0], [0.0, 0.0, 8.0, 8.0, 1.0]])
    out = batch_crop(ramp.expand(2, 1, 8, 8), ident, "bilinear")
    assert torch.allclose(out[0], ramp[0], atol=1e-5) and torch.allclose(out[1], ramp[0].flip(-1), atol=1e-5)
    half = batch_crop(ramp, torch.tensor([[0.0, 0.0, 4.0, 8.0, 0.0]]), "bilinear")
    expected = torch.tensor([0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.25])
    assert torch.allclose(half[0, 0, 3], expected, atol=1e-5)


def test_plan_single_source_is_a_permutation_per_round() -> None:
    """One source: each round visits every index once, rounds are reshuffled, and positions are reproducible."""
    plan = MixturePlan([10], [1.0], seed=3)
    first = [plan.at(k) for k in range(20)]
    assert sorted(i for _, i, r in first if r == 0) == list(range(10))
    assert sorted(i for _, i, r in first if r == 1) == list(range(10))
    assert [i for _, i, _ in first[:10]] != [i for _, i, _ in first[10:]]
    assert first == [MixturePlan([10], [1.0], seed=3).at(k) for k in range(20)]


def test_plan_mixing_ratio() -> None:
    """Weights 2:1 give 683 / 341 draws per block of 1024, and no source index repeats within its round."""
    plan = MixturePlan([5000, 7], [2.0, 1.0], seed=0)
    keys = [plan.at(k) for k in range(BLOCK)]
    counts = np.bincount([s for s, _, _ in keys])
    assert counts.tolist() == [683, 341]
    big = [i for s, i, _ in keys if s == 0]
    assert len(set(big)) == len(big)
    small_round0 = sorted(i for s, i, r in keys if s == 1 and r == 0)
    assert small_round0 == list(range(7))


def test_sampler_ranks_partition_global_batches() -> None:
    """Two ranks take disjoint halves of each global micro-batch; starting at batch 3 skips exactly 3."""
    plan = MixturePlan([50], [1.0], seed=0)
    ranks = [list(PlanBatchSampler(plan, 4, start=0, count=5, rank=r, world=2)) for r in range(2)]
    assert [plan.at(k) for k in range(8)] == ranks[0][0] + ranks[1][0]
    resumed = list(PlanBatchSampler(plan, 4, start=3, count=2, rank=1, world=2))
    assert resumed == ranks[1][3:]
