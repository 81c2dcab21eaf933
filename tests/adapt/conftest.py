"""A tiny phantom card and a tiny adaptation config shared by the adaptation tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from synthfm.adapt.config import AdaptConfig
from synthfm.synth.writer import PhantomConfig, render_phantom


@pytest.fixture(scope="session")
def phantom_card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 fundus phantoms at 64 px, split 50/25/25 (cataract has both classes in every split)."""
    out = tmp_path_factory.mktemp("phantom")
    return render_phantom(out, PhantomConfig(n=64, size=64, ratios=(0.5, 0.25, 0.25)))


@pytest.fixture(scope="session")
def tiny_cfg(phantom_card: Path) -> Any:
    """Build an AdaptConfig on the phantom card with a 2-block, 48-wide ViT at 32 px."""

    def build(**kw: Any) -> AdaptConfig:
        base = {"card": str(phantom_card), "task": "cataract", "encoder": "random:vit_tiny_p8_64",
                "backbone_overrides": {"depth": 2, "img_size": 32, "embed_dim": 48, "num_heads": 3},
                "epochs": 2, "warmup_epochs": 1,
                "seeds": [0], "label_fractions": [1.0]}
        return AdaptConfig(**{**base, **kw})

    return build
