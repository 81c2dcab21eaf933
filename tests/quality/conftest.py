"""Phantom images and cards shared by the quality tests (rendered once per session)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from synthfm.synth.fundus import FundusPhantom
from synthfm.synth.writer import PhantomConfig, image_seed, render_phantom

TINY_SPACE = {"encoder": "random:vit_tiny_p8_64",
              "backbone_overrides": {"depth": 2, "img_size": 32, "embed_dim": 48, "num_heads": 3}}


def render(n: int, size: int, seed: int, condition: dict[str, Any] | None = None, **priors: Any) -> np.ndarray:
    """n phantom fundus images (uint8, n x size x size x 3) from image seeds (seed, 0..n-1)."""
    gen = FundusPhantom(**priors)
    return np.stack([gen.generate(dict(condition or {}), image_seed(seed, i), size).image for i in range(n)])


@pytest.fixture(scope="session")
def audit_images() -> dict[str, np.ndarray]:
    """128 px phantoms: real train, real held-out and genuine synthetic (different seeds)."""
    return {"train": render(80, 128, 100), "heldout": render(60, 128, 101), "genuine": render(80, 128, 102)}


@pytest.fixture(scope="session")
def tiny_cards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A real phantom card (60, split 50/25/25) and a synthetic one from another seed (30), at 64 px."""
    root = tmp_path_factory.mktemp("cards")
    real = render_phantom(root / "real", PhantomConfig(n=60, size=64, seed=0, ratios=(0.5, 0.25, 0.25)))
    synth = render_phantom(root / "synth", PhantomConfig(n=30, size=64, seed=1))
    return {"real": real, "synth": synth}


def merge_cards(cards: list[Path], out: Path, edit: Any = None) -> Path:
    """One folder card whose manifest joins several phantom cards (absolute image paths); `edit` may change it."""
    frames = []
    for k, card in enumerate(cards):
        df = pd.read_parquet(card.parent / "manifest.parquet")
        df["path"] = [str(card.parent / p) for p in df["path"]]
        df["image_id"] = [f"{k}_{i}" for i in df["image_id"]]
        df["patient_id"] = [f"{k}_{i}" for i in df["patient_id"]]
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    if edit is not None:
        df = edit(df)
    out.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out / "manifest.parquet", index=False)
    (out / "dataset.yaml").write_text(cards[0].read_text())  # absolute paths ignore source.root
    return out / "dataset.yaml"
