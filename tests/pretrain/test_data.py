"""Tests of the batched data path: counter-based seeds and uniforms, batched crops, the training-size cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from synthfm.pretrain.config import SourceConfig
from synthfm.pretrain.data import (
    CachedCardSource,
    MixtureDataset,
    batch_crop,
    collate,
    counter_uniform,
    crop_params,
    hash_seeds,
    open_source,
    sample_seed,
    sample_seeds,
)
from synthfm.synth.writer import PhantomConfig, render_phantom


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


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12-image, 40 px fundus phantom card."""
    return render_phantom(tmp_path_factory.mktemp("ph") / "card", PhantomConfig(n=12, size=40))


def test_card_cache_is_written_once_at_training_size(phantom: Path, tmp_path: Path) -> None:
    """The first open decodes and resizes to the training size into raw shards; the second reads them."""
    src = CachedCardSource(phantom, None, 32, 3, tmp_path)
    assert src.images.shape == (12, 3, 32, 32) and src.images.dtype == torch.uint8
    shards = sorted(src.folder.glob("*.tar"))
    assert shards and (src.folder / "COMPLETE").is_file()
    stamp = shards[0].stat().st_mtime_ns
    again = CachedCardSource(phantom, None, 32, 3, tmp_path)
    assert torch.equal(again.images, src.images) and shards[0].stat().st_mtime_ns == stamp
    item = again[0]["image"]
    assert item.dtype == torch.float32 and item.shape == (3, 32, 32)
    assert CachedCardSource(phantom, None, 24, 3, tmp_path).folder != src.folder  # size is part of the key


def test_batched_augmentation_is_independent_of_the_batch(phantom: Path, tmp_path: Path) -> None:
    """A key's crop, flip and seed are the same in any batch; different keys of one image differ."""
    sources = [open_source(SourceConfig(source=str(phantom)), 32, 3, None, tmp_path),
               open_source(SourceConfig(source="rasd", n=8), 32, 3, None, tmp_path)]
    ds = MixtureDataset(sources, seed=4, scale=(0.2, 1.0))
    a = collate(ds.__getitems__([(0, 1, 0), (1, 2, 0), (0, 3, 1)]))
    b = collate(ds.__getitems__([(0, 3, 1), (0, 1, 0)]))
    assert torch.equal(a["image"][0], b["image"][1]) and torch.equal(a["image"][2], b["image"][0])
    assert a["seed"].tolist() == [sample_seed(4, k) for k in [(0, 1, 0), (1, 2, 0), (0, 3, 1)]]
    single = collate([ds[(1, 2, 0)]])
    assert torch.equal(single["image"][0], a["image"][1])
    other_round = collate(ds.__getitems__([(0, 1, 1)]))
    assert not torch.equal(other_round["image"][0], a["image"][0])  # same image, another round: another crop
    assert not torch.equal(a["image"][0], sources[0][1]["image"])  # it was augmented


def test_rasd_mask_follows_the_image_crop(tmp_path: Path) -> None:
    """Image and structure mask get the same box: with scale (1, 1) a flip of both or of neither."""
    src = open_source(SourceConfig(source="rasd", n=8), 32, 3, None, tmp_path)
    ds = MixtureDataset([src], seed=0, scale=(1.0, 1.0))
    for key in [(0, i, 0) for i in range(6)]:
        item, raw = ds[key], src[key[1]]
        flipped = torch.equal(item["mask"], raw["mask"].flip(-1))
        assert flipped or torch.equal(item["mask"], raw["mask"])
        ref = raw["image"].flip(-1) if flipped else raw["image"]
        assert torch.allclose(item["image"], ref, atol=1e-4)
