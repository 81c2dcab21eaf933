"""Shard cards as first-class cards: rows found by their `shards/<file>#<key>` path, subsets and renamed shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from synthfm.data.manifest import load_card
from synthfm.data.prepare import prepare_card
from synthfm.data.preprocess import PrepareConfig
from synthfm.data.readers import CardDataset, ShardDataset
from synthfm.data.shard_index import IndexedShardDataset, open_random_access
from synthfm.data.shards import sample_refs
from synthfm.synth.writer import PhantomConfig, render_phantom


@pytest.fixture(scope="module")
def shard_card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 phantom images at 32 px as png shards of 6."""
    root = tmp_path_factory.mktemp("shardcard")
    return render_phantom(root / "shards", PhantomConfig(format="shards", n=20, size=32, shard_size=6))


def subset_card(card: Path, out: Path, rows: list[int], rename: dict[str, str] | None = None) -> Path:
    """A copy of a shard card listing only some rows (optionally with its shards renamed)."""
    spec = yaml.safe_load(card.read_text())
    df = pd.read_parquet(card.parent / spec["manifest"]).iloc[rows].reset_index(drop=True)
    (out / "shards").mkdir(parents=True)
    for tar in (card.parent / "shards").glob("*.tar"):
        (out / "shards" / (rename or {}).get(tar.name, tar.name)).symlink_to(tar)
    for old, new in (rename or {}).items():
        df["path"] = df["path"].str.replace(old, new, regex=False)
    df.to_parquet(out / "manifest.parquet")
    spec.update(manifest="manifest.parquet", source={"format": "shards", "root": "shards"})
    (out / "dataset.yaml").write_text(yaml.safe_dump(spec))
    return out / "dataset.yaml"


def test_sample_refs_keep_only_file_names() -> None:
    """A path reference is (file name, key); a path that leaves the folder keeps only its name; no '#', None."""
    assert sample_refs(["shards/train-000001.tar#0000007"]) == [("train-000001.tar", "0000007")]
    assert sample_refs(["../../etc/train-000001.tar#k"]) == [("train-000001.tar", "k")]
    assert sample_refs(["a.png", "shards/x.tar#1"]) is None and sample_refs([]) is None


def test_subset_card_reads_its_own_rows(shard_card: Path, tmp_path: Path) -> None:
    """A filtered manifest (rows 3, 11, 17) reads exactly those images, by offset and by stream."""
    full = IndexedShardDataset(load_card(shard_card))
    rows = [17, 3, 11]
    sub = load_card(subset_card(shard_card, tmp_path / "sub", rows))
    indexed = IndexedShardDataset(sub)
    for pos, row in enumerate(rows):
        assert np.array_equal(indexed.raw(pos), full.raw(row))
    streamed = {s["index"]: s for s in ShardDataset(sub)}
    assert sorted(streamed) == [0, 1, 2]
    for pos, row in enumerate(rows):
        assert np.array_equal(streamed[pos]["image"].numpy(), full[row]["image"].numpy())
        assert {k: int(v) for k, v in streamed[pos]["labels"].items()} == {
            k: int(v) for k, v in full[row]["labels"].items()}


def test_renamed_shards_follow_the_manifest(shard_card: Path, tmp_path: Path) -> None:
    """A merged card renames shards; its rows still find their images through the rewritten paths."""
    first = sorted(p.name for p in (shard_card.parent / "shards").glob("*.tar"))[0]
    card = subset_card(shard_card, tmp_path / "renamed", list(range(20)), {first: "job1-" + first})
    a, b = IndexedShardDataset(load_card(shard_card)), IndexedShardDataset(load_card(card))
    assert all(np.array_equal(a.raw(i), b.raw(i)) for i in range(20))


def test_prepare_accepts_shard_cards(shard_card: Path, tmp_path: Path) -> None:
    """prepare from a shard card gives the same images as from the same phantom rendered as a folder."""
    source = render_phantom(tmp_path / "src", PhantomConfig(n=20, size=32))
    from_folder = prepare_card(source, tmp_path / "a", PrepareConfig(size=16))
    from_shards = prepare_card(shard_card, tmp_path / "b", PrepareConfig(size=16))
    a, b = CardDataset(load_card(from_folder)), open_random_access(load_card(from_shards))
    assert len(a) == len(b) == 20
    assert all(np.array_equal(a.raw(i), b.raw(i)) for i in range(20))
