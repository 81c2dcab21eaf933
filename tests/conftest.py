"""Shared fixtures: offline environment, the real data folder, and tiny cards built on the fly."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SYNTHFM_PROGRESS", "0")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real image sets beside the repository (../shared/data, or $SYNTHFM_DATA)."""
    path = Path(os.environ.get("SYNTHFM_DATA", REPO.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.fail(f"real test data not found at {path}; set SYNTHFM_DATA")
    return path


@pytest.fixture(scope="session")
def cards_dir() -> Path:
    """The shipped dataset cards."""
    return REPO / "configs" / "cards"


def write_rgb(path: Path, value: int, size: int = 16) -> None:
    """A small RGB PNG whose pixels encode `value` (so tests can tell images apart)."""
    rng = np.random.default_rng(value)
    arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    arr[0, 0] = (value % 256, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture
def make_card(tmp_path: Path) -> Callable[..., Path]:
    """Build a folder card with n RGB images, a 3-class task, patients and metadata; returns the card dir."""

    def build(n: int = 24, card: dict | None = None, rows: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
              name: str = "tiny") -> Path:
        root = tmp_path / name
        df = pd.DataFrame({
            "path": [f"img/{i:03d}.png" for i in range(n)],
            "grade": [i % 3 for i in range(n)],
            "patient": [f"p{i // 2:03d}" for i in range(n)],
            "age": [30 + i for i in range(n)],
            "sex": ["F" if i % 4 < 2 else "M" for i in range(n)],
        })
        for i, p in enumerate(df["path"]):
            write_rgb(root / p, i)
        if rows is not None:
            df = rows(df)
        df.to_csv(root / "manifest.csv", index=False)
        spec = {"name": name, "modality": "fundus", "split": None,
                "tasks": [{"name": "grade", "type": "ordinal", "classes": ["none", "mild", "severe"]}],
                "metadata": {"patient_id": "patient", "age": "age", "sex": "sex"}}
        spec.update(card or {})
        (root / "dataset.yaml").write_text(yaml.safe_dump(spec))
        return root

    return build
