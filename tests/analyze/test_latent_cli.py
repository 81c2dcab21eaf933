"""Latent maps (t-SNE, UMAP) from a registry encoder, latent separability in key metadata, and the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from typer.testing import CliRunner

from synthfm.analyze.commands import app
from synthfm.analyze.keymeta import KeyMetaConfig, run_keymeta
from synthfm.analyze.latent import LatentConfig, run_latent, sample_rows

TINY = {"depth": 1, "img_size": 32, "embed_dim": 24, "num_heads": 2}


def test_sample_rows_caps_and_is_seeded() -> None:
    """At most n rows, the same for the same seed, all rows when there are fewer."""
    a, b = sample_rows(100, 10, 3), sample_rows(100, 10, 3)
    assert len(a) == 10 and (a == b).all() and len(set(a)) == 10
    assert (sample_rows(5, 10, 0) == range(5)).all()


def test_latent_maps_and_keymeta_from_them(planted_card: Path, tmp_path: Path) -> None:
    """Points and PNGs for every colouring; key metadata reads the latent run."""
    cfg = LatentConfig(cards=[str(planted_card)], encoder="vit_tiny_p8_64", backbone_overrides=TINY, n=30,
                       perplexity=5, neighbours=5, threads=1)
    pts = pd.read_csv(run_latent(cfg, tmp_path / "lat"))
    assert len(pts) == 30 and {"tsne_x", "umap_y", "source", "site", "batch", "label_dr"} <= set(pts.columns)
    assert set(pts["source"]) == {"synthetic"} and pts["tsne_x"].notna().all()
    for name in ("tsne_source", "tsne_site", "umap_batch", "umap_label_dr", "tsne_age"):
        assert (tmp_path / "lat" / f"{name}.png").stat().st_size > 1000, name
    ranked = pd.read_csv(run_keymeta(KeyMetaConfig(latent=str(tmp_path / "lat"), fields=["site", "batch"],
                                                   min_group=3), tmp_path / "km"))
    assert ranked["knn_balanced_accuracy"].between(0, 1).all() and ranked["silhouette"].notna().all()


def test_latent_adapts_an_encoder_of_another_channel_count(planted_card: Path, tmp_path: Path) -> None:
    """A 1-channel encoder on an RGB card has its patch embedding adapted (timm's adapt_input_conv), not refused."""
    from synthfm.analyze.latent import encoder_from
    from synthfm.models.backbones import create_backbone
    from synthfm.models.checkpoint import save_pretrained

    encoder = save_pretrained(create_backbone("vit_tiny_p8_64", in_chans=1, **TINY), tmp_path / "gray_encoder")
    gray = LatentConfig(cards=[str(planted_card)], encoder=str(encoder), n=8, perplexity=2, methods=["tsne"],
                        threads=1)
    assert encoder_from(gray, 3).patch_embed.proj.in_channels == 3
    assert len(pd.read_csv(run_latent(gray, tmp_path / "gray"))) == 8


def test_latent_maps_shard_cards_like_folder_cards(planted_card: Path, tmp_path: Path) -> None:
    """A shard card (what generation writes) is sampled by row: the same rows and points as its folder copy."""
    from synthfm.data.prepare import prepare_card
    from synthfm.data.preprocess import PrepareConfig
    from synthfm.models.backbones import create_backbone
    from synthfm.models.checkpoint import save_pretrained

    encoder = save_pretrained(create_backbone("vit_tiny_p8_64", in_chans=3, **TINY), tmp_path / "encoder")
    points = []
    for fmt in ("folder", "shards"):
        card = prepare_card(planted_card, tmp_path / fmt, PrepareConfig(size=32, format=fmt, limit=12))
        cfg = LatentConfig(cards=[str(card)], encoder=str(encoder), n=10,
                           perplexity=3, neighbours=3, threads=1, methods=["tsne"])
        points.append(pd.read_csv(run_latent(cfg, tmp_path / f"lat_{fmt}")))
    assert list(points[0]["id"]) == list(points[1]["id"]) and len(points[0]) == 10
    pd.testing.assert_series_equal(points[0]["tsne_x"], points[1]["tsne_x"])


def test_cli_morphology_and_bad_input(planted_card: Path, tmp_path: Path) -> None:
    """`analyze morphology` writes the table; an unknown segmenter is rejected naming the key."""
    runner = CliRunner()
    ok = runner.invoke(app, ["morphology", str(planted_card), "--out", str(tmp_path / "m"), "--limit", "2",
                             "--size", "128"])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "m" / "morphology_planted.csv").is_file()
    bad = runner.invoke(app, ["morphology", str(planted_card), "--out", str(tmp_path / "b"), "--segmenter", "x"])
    assert bad.exit_code != 0 and "segmenter" in str(bad.exception)


def test_latent_features_take_the_probe_poolings(planted_card: Path) -> None:
    """`pool` picks the feature as the probes do (models/pooling.py); left out, the dump and key are as before."""
    from synthfm.analyze.latent import card_features

    base = {"cards": [str(planted_card)], "encoder": "vit_tiny_p8_64", "backbone_overrides": TINY, "n": 8}
    assert "pool" not in LatentConfig(**base).model_dump()

    def features(**kw: str) -> np.ndarray:
        torch.manual_seed(0)  # the same random encoder each time
        return card_features(LatentConfig(**base, **kw), str(planted_card), 0)[0]

    own, cls, both = features(), features(pool="cls"), features(pool="cls+mean")
    np.testing.assert_allclose(cls, own, atol=1e-6)
    np.testing.assert_allclose(both[:, :own.shape[1]], own, atol=1e-6)
    assert both.shape == (8, 2 * own.shape[1]) and not np.allclose(both[:, own.shape[1]:], own, atol=1e-3)
