"""Per-sample counter-based draws: pure functions of (seed, stream, position), checked against splitmix64 by hand."""

from __future__ import annotations

import math

import torch

from synthfm.synth.diffusion.noise import GOLDEN, MASK, NOISE, TIMESTEP, normals, uniforms


def splitmix_mix(z: int) -> int:
    """splitmix64's finaliser in Python integers (the reference the numpy version must match)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def test_splitmix_reference_constant() -> None:
    # the first output of splitmix64 from state 0 (Vigna's reference implementation)
    assert splitmix_mix(GOLDEN) == 0xE220A8397B1DCDAF


def test_uniforms_match_the_hand_computed_counter_hash() -> None:
    seeds = torch.tensor([0, 12345, -7, 2**62 + 3])
    u = uniforms(seeds, NOISE, 3)
    for b, seed in enumerate(seeds.tolist()):
        key = splitmix_mix((seed & MASK) + (NOISE + 1) * 0xD1B54A32D192ED03 & MASK)
        for k in range(3):
            bits = splitmix_mix((key + (k + 1) * GOLDEN) & MASK) >> 11
            assert u[b, k].item() == (bits + 0.5) * 2.0 ** -53


def test_a_sample_draws_the_same_in_any_batch() -> None:
    alone = normals(torch.tensor([99]), NOISE, (3, 4, 4))
    in_batch = normals(torch.tensor([5, 99, 7]), NOISE, (3, 4, 4))
    assert torch.equal(alone[0], in_batch[1])
    assert not torch.equal(in_batch[0], in_batch[1])
    assert not torch.equal(uniforms(torch.tensor([99]), TIMESTEP, 4), uniforms(torch.tensor([99]), NOISE, 4))


def test_normals_are_standard_normal() -> None:
    z = normals(torch.arange(64), NOISE, (3, 32, 33)).double()  # odd element count: the last pair is cut
    assert z.shape == (64, 3, 32, 33)
    n = z.numel()
    assert abs(z.mean().item()) < 4 / math.sqrt(n)
    assert abs(z.var().item() - 1) < 4 * math.sqrt(2 / n)
    assert abs((z > 1.96).double().mean().item() - 0.025) < 0.003
