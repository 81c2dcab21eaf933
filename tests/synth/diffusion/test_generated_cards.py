"""Generated shards are a card like any other: label filter -> prepare -> latent map -> pretraining, and merge."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from synthfm.analyze.latent import LatentConfig, run_latent
from synthfm.data.manifest import load_card
from synthfm.data.prepare import prepare_card
from synthfm.data.preprocess import PrepareConfig
from synthfm.data.shard_index import open_random_access
from synthfm.pretrain.config import pretrain_config
from synthfm.pretrain.engine import pretrain
from synthfm.quality.labels import write_filtered_card
from synthfm.synth.diffusion.config import GenerateConfig
from synthfm.synth.diffusion.generate import generate
from synthfm.synth.merge import merge_cards

TINY = {"depth": 1, "img_size": 16, "embed_dim": 24, "num_heads": 2, "patch_size": 4}


@pytest.fixture(scope="module")
def generated(trained: Path, tmp_path_factory: pytest.TempPathFactory, single_thread) -> Path:
    """16 generated images in 4 shards (the card synth generate writes)."""
    out = tmp_path_factory.mktemp("generated") / "gen"
    with single_thread():
        generate(GenerateConfig(generator=str(trained / "generator"), n=16, seed=3, shard_size=4, batch_size=8,
                                sampler={"name": "ddim", "steps": 4}), out)
    return out / "dataset.yaml"


def test_filter_prepare_latent_pretrain_on_generated_shards(generated: Path, tmp_path: Path) -> None:
    """Every stage reads the generated card and its label-filtered subset, row for row the same images."""
    data = load_card(generated)
    keep = np.arange(len(data)) % 3 != 0
    filtered = load_card(write_filtered_card(data, keep, tmp_path / "filtered"))
    assert len(filtered) == int(keep.sum())
    whole, sub = open_random_access(data), open_random_access(filtered)
    for pos, row in enumerate(np.flatnonzero(keep)):
        assert np.array_equal(sub.raw(pos), whole.raw(int(row)))

    prepared = load_card(prepare_card(filtered.card_dir / "dataset.yaml", tmp_path / "prep", PrepareConfig(size=16)))
    assert len(prepared) == len(filtered) and prepared.card.source.format == "folder"
    assert list(prepared.df["image_id"]) == list(filtered.df["image_id"])

    latent = LatentConfig(cards=[str(filtered.card_dir / "dataset.yaml")], encoder="vit_tiny_p8_64",
                          backbone_overrides=TINY, n=8, perplexity=2, methods=["tsne"], threads=1)
    points = pd.read_csv(run_latent(latent, tmp_path / "latent"))
    assert len(points) == 8 and points["row"].between(0, len(filtered) - 1).all() and points["tsne_x"].notna().all()

    cfg = pretrain_config({"recipe": "mae_vit_tiny_demo", "image_size": 16, "backbone_overrides": TINY,
                           "batch_size": 4, "mae": {"decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2},
                           "log_every": 1, "checkpoint_every": 100, "cache_dir": str(tmp_path / "cache"),
                           "stages": [{"name": "s", "steps": 2,
                                       "sources": [{"source": str(filtered.card_dir / "dataset.yaml")}]}]})
    assert pretrain(cfg, tmp_path / "mae")["global_steps"] == 2


def test_two_generation_folders_merge_into_one_card(trained: Path, generated: Path, tmp_path: Path) -> None:
    """A second generation job (another seed) and the first become one card of 16 + 8 images."""
    other = tmp_path / "gen2"
    generate(GenerateConfig(generator=str(trained / "generator"), n=8, seed=4, shard_size=4, batch_size=8,
                            sampler={"name": "ddim", "steps": 4}), other)
    merged = load_card(merge_cards([generated, other / "dataset.yaml"], tmp_path / "merged"))
    assert len(merged) == 24 and merged.df["image_id"].is_unique
    assert merged.card.provenance.checkpoint_hash == load_card(generated).card.provenance.checkpoint_hash
