"""Tests of the batched data path: counter-based seeds and uniforms, batched crops, the training-size cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from synthfm.pretrain.config import SourceConfig
from synthfm.pretrain.data import CachedCardSource, open_source
from synthfm.synth.writer import PhantomConfig, render_phantom
from synthfm.train.mixture import MixtureDataset, collate, sample_seed


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
