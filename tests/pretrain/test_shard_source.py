"""Shard cards as pretraining sources: an offset index gives the folder card's rows, images and batches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from synthfm.data.manifest import load_card
from synthfm.data.readers import CardDataset
from synthfm.data.shard_index import IndexedShardDataset, index_shards
from synthfm.data.shards import shard_urls
from synthfm.pretrain.config import pretrain_config
from synthfm.pretrain.engine import Engine
from synthfm.synth.writer import PhantomConfig, render_phantom


@pytest.fixture(scope="module")
def cards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same 32 phantom images (seed 0, 64 px) as a folder card and as raw-encoded shards of 10."""
    root = tmp_path_factory.mktemp("cards")
    folder = render_phantom(root / "folder", PhantomConfig(n=32, size=64))
    shards = render_phantom(root / "shards", PhantomConfig(format="shards", encoding="raw", n=32, size=64,
                                                           shard_size=10))
    return folder, shards


def test_index_covers_every_row_once(cards: tuple[Path, Path]) -> None:
    """Every manifest row has one entry; raw images are 64*64*3 bytes at distinct offsets."""
    data = load_card(cards[1])
    index = index_shards(shard_urls(data.source_root))
    assert sorted(index) == list(range(32))
    assert {e.size for e in index.values()} == {64 * 64 * 3}
    assert len({(e.path, e.offset) for e in index.values()}) == 32
    assert len({e.path for e in index.values()}) > 3  # several shards (per split, 10 a shard)


@pytest.mark.parametrize("split", [None, "train"])
def test_indexed_shards_match_folder_card(cards: tuple[Path, Path], split: str | None) -> None:
    """Row for row, the indexed shard card yields the folder card's pixels and labels."""
    folder = CardDataset(load_card(cards[0]), split)
    shards = IndexedShardDataset(load_card(cards[1]), split)
    assert len(shards) == len(folder) and list(shards.rows) == list(folder.rows)
    for pos in range(len(folder)):
        a, b = folder[pos], shards[pos]
        assert torch.equal(a["image"], b["image"]) and a["index"] == b["index"]
        assert {k: int(v) for k, v in a["labels"].items()} == {k: int(v) for k, v in b["labels"].items()}


def mae_config(card: Path, cache: Path) -> dict:
    """A two-block ViT-Ti MAE at 32 px on one card source."""
    return {"recipe": "mae_vit_tiny_demo", "image_size": 32, "backbone_overrides": {"depth": 2}, "batch_size": 8,
            "mae": {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}, "optim": {"lr": 1e-3},
            "log_every": 1, "checkpoint_every": 100, "cache_dir": str(cache),
            "stages": [{"name": "s", "sources": [{"source": str(card)}], "steps": 3}]}


def test_pretraining_on_shards_matches_folder(cards: tuple[Path, Path], tmp_path: Path) -> None:
    """Same seed, same data: the shard card's first batches equal the folder card's, and training runs."""
    engines = [Engine(pretrain_config(mae_config(c, tmp_path)), tmp_path / name)
               for c, name in zip(cards, ("folder", "shards"), strict=True)]
    firsts = [list(e.batches(e.stage_plan(0), 0))[:3] for e in engines]
    for a, b in zip(*firsts, strict=True):
        assert torch.equal(a["image"], b["image"])
    assert not torch.equal(firsts[0][0]["image"], firsts[0][1]["image"])
    summary = engines[1].fit()
    assert summary["global_steps"] == 3 and summary["final_loss"] > 0
