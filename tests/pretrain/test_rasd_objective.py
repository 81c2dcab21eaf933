"""Tests of the RaSD prototype objective: coverage, prototypes, the prototype InfoNCE, views, masks, training."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from synthfm.errors import SynthfmError
from synthfm.pretrain.config import pretrain_config
from synthfm.pretrain.data import RaSDSource
from synthfm.pretrain.engine import Engine
from synthfm.pretrain.rasd_objective import (
    build_rasd,
    patch_coverage,
    prototype_nce,
    second_view,
    structure_prototypes,
)
from synthfm.train.mixture import MixtureDataset, collate


def two_structures() -> torch.Tensor:
    """16x16 labels, 2x2 patches of 8: left half 1, top-right 2, bottom-right half background, half 2."""
    mask = torch.zeros(1, 16, 16, dtype=torch.long)
    mask[0, :, :8] = 1
    mask[0, :8, 8:] = 2
    mask[0, 8:, 12:] = 2
    return mask


def tiny(**kw: object) -> dict:
    """A two-block ViT-Ti at 32 px with a small head, batch 8, on RaSD images."""
    return {"recipe": "rasd_vit_tiny_demo", "image_size": 32, "backbone_overrides": {"depth": 2}, "batch_size": 8,
            "rasd": {"hidden_dim": 64, "proj_dim": 32}, "log_every": 5, "checkpoint_every": 100,
            "optim": {"lr": 1e-3, "warmup_steps": 2}, **kw}


def test_patch_coverage_is_fractional() -> None:
    """Each patch's coverage by every class is the fraction of its pixels with that label."""
    cov = patch_coverage(two_structures(), 8, 3)
    assert cov.shape == (1, 3, 4)
    assert cov[0].tolist() == [[0, 0, 0, 0.5], [1, 0, 1, 0], [0, 1, 0, 0.5]]
    assert torch.allclose(cov.sum(1), torch.ones(1, 4))


def test_prototypes_are_coverage_weighted_means() -> None:
    """Prototype k = sum_n cov[k, n] f_n / sum_n cov[k, n], computed by hand on the 2-structure mask."""
    feats = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [3.0, 0.0], [2.0, 2.0]]])
    protos = structure_prototypes(feats, patch_coverage(two_structures(), 8, 3))
    expected = torch.tensor([[[2.0, 2.0], [2.0, 0.0], [2 / 3, 4 / 3]]])
    assert torch.allclose(protos, expected)


def clustered_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Label maps of 3 structures on a 4x4 patch grid (whole patches) and their coverage."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (2, 4, 4), generator=g)
    labels[:, 0, :3] = torch.tensor([0, 1, 2])  # every structure present
    mask = labels.repeat_interleave(8, 1).repeat_interleave(8, 2)
    return labels.flatten(1), patch_coverage(mask, 8, 3)


def nce(feats: torch.Tensor, cov: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """prototype_nce with the image's own normalised prototypes, all valid."""
    protos = torch.nn.functional.normalize(structure_prototypes(feats, cov), dim=-1)
    return prototype_nce(feats, cov, protos, torch.ones(cov.shape[:2], dtype=torch.bool), tau)


def test_clustered_features_beat_random() -> None:
    """Features equal to their structure's one-hot give -log(e^10 / (e^10 + 2)); random features give ~log 3."""
    labels, cov = clustered_batch()
    clustered = torch.nn.functional.one_hot(labels, 8).float()
    assert nce(clustered, cov).item() == pytest.approx(-math.log(math.exp(10) / (math.exp(10) + 2)), rel=1e-3)
    torch.manual_seed(0)
    random = torch.nn.functional.normalize(torch.randn(2, 16, 8), dim=-1)
    assert nce(random, cov).item() > 0.5
    assert nce(random, cov).item() > 1000 * nce(clustered, cov).item()


def test_invalid_prototypes_are_ignored() -> None:
    """Patches of an invalid structure carry no loss and its prototype is no negative."""
    labels, cov = clustered_batch()
    feats = torch.nn.functional.one_hot(labels, 8).float()
    protos = torch.nn.functional.normalize(structure_prototypes(feats, cov), dim=-1)
    valid = torch.tensor([[False, True, True]] * 2)
    expected = -math.log(math.exp(10) / (math.exp(10) + 1))
    assert prototype_nce(feats, cov, protos, valid, 0.1).item() == pytest.approx(expected, rel=1e-3)


def test_second_view_warps_image_and_labels_alike() -> None:
    """An image equal to its one-hot labels stays equal to the warped labels up to the per-image gain/offset."""
    torch.manual_seed(0)
    onehot = torch.nn.functional.one_hot(torch.randint(0, 3, (4, 16, 16)), 3).permute(0, 3, 1, 2).float()
    out, labels = second_view(onehot, onehot, (0.3, 0.6))
    lo, hi = out.amin((1, 2, 3), keepdim=True), out.amax((1, 2, 3), keepdim=True)
    lab_lo, lab_hi = labels.amin((1, 2, 3), keepdim=True), labels.amax((1, 2, 3), keepdim=True)
    assert torch.allclose((out - lo) / (hi - lo), (labels - lab_lo) / (lab_hi - lab_lo), atol=1e-5)
    assert torch.allclose(labels.sum(1), torch.ones(4, 16, 16), atol=1e-5)  # still a partition
    assert not torch.allclose(labels, onehot)


def test_second_view_of_a_sample_depends_only_on_its_seed() -> None:
    """With per-sample seeds a sample's second view is the same alone or in any batch, whatever the global RNG."""
    torch.manual_seed(0)
    onehot = torch.nn.functional.one_hot(torch.randint(0, 3, (4, 16, 16)), 3).permute(0, 3, 1, 2).float()
    imgs, seeds = torch.rand(4, 3, 16, 16), torch.tensor([11, 12, 13, 14])
    batch, batch_labels = second_view(imgs, onehot, (0.3, 0.6), seeds)
    torch.manual_seed(99)
    alone, alone_labels = second_view(imgs[2:3], onehot[2:3], (0.3, 0.6), seeds[2:3])
    assert torch.allclose(batch[2:3], alone) and torch.allclose(batch_labels[2:3], alone_labels)
    other, _ = second_view(imgs[2:3], onehot[2:3], (0.3, 0.6), torch.tensor([15]))
    assert not torch.allclose(alone, other)


def explained_variance(image: torch.Tensor, mask: torch.Tensor) -> float:
    """Fraction of the image's variance explained by its label map's region means."""
    x, m = image.flatten(), mask.flatten()
    means = torch.zeros(int(m.max()) + 1).index_add_(0, m, x) / torch.bincount(m).clamp_min(1)
    return 1 - float((x - means[m]).var() / x.var())


def test_rasd_source_crops_image_and_mask_together() -> None:
    """After the random resized crop + flip the mask still explains the image; a flipped mask does not."""
    ds = MixtureDataset([RaSDSource(64, 1, 8, seed=3, scale=(0.2, 0.4))], seed=0)
    items = [ds[(0, i, 0)] for i in range(8)]
    batch = collate(items)
    assert batch["mask"].shape == (8, 64, 64) and batch["image"].shape == (8, 1, 64, 64)
    aligned = [explained_variance(x["image"], x["mask"]) for x in items]
    flipped = [explained_variance(x["image"], x["mask"].flip(-1)) for x in items if x["mask"].unique().numel() > 1]
    assert min(aligned) > 0.4
    assert sum(aligned) / len(aligned) > sum(flipped) / len(flipped) + 0.2
    assert torch.equal(ds[(0, 5, 0)]["mask"], items[5]["mask"])  # seeded per sample


def test_objective_needs_masks() -> None:
    """A batch without masks (e.g. from a card source) is refused with advice."""
    objective = build_rasd(pretrain_config(tiny(stages=[{"name": "s", "sources": [{"source": "rasd"}], "steps": 1}])))
    with pytest.raises(SynthfmError, match="structure masks"):
        objective.loss({"image": torch.zeros(2, 1, 32, 32)})


def test_loss_decreases_through_engine(tmp_path: Path) -> None:
    """20 optimiser steps of the rasd objective on the rasd source: the last 5 steps' loss < the first 5's."""
    cfg = pretrain_config(tiny(stages=[{"name": "s", "sources": [{"source": "rasd", "n": 64}], "steps": 20}]))
    engine = Engine(cfg, tmp_path / "run")
    engine.fit()
    losses = [r["loss"] for r in engine.run.metrics() if "loss" in r]
    assert len(losses) == 4
    assert losses[-1] < 0.85 * losses[0], losses
    assert (tmp_path / "run" / "encoder").is_dir()
