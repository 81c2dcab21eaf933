"""Phantom helpers for the analysis tests: clean eyes with one parameter swept, and small folder cards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from synthfm.data.images import encode_png
from synthfm.synth.base import PhantomSample
from synthfm.synth.fundus import FundusPhantom

# A healthy, clear eye on a good camera: only the swept parameter changes between renders of one seed.
CLEAN = {"dr_grade": 0, "amd": 0, "glaucoma": 0, "cataract": 0, "device": "topcon", "ethnicity": "white",
         "age": 50.0}


def render(seed: int, size: int = 256, **condition: Any) -> PhantomSample:
    """One clean phantom with the given condition on top."""
    return FundusPhantom().generate({**CLEAN, **condition}, seed, size)


def write_card(root: Path, samples: list[PhantomSample], columns: dict[str, list[Any]],
               metadata: dict[str, Any], masks: tuple[str, ...] = ("vessels", "lesions")) -> Path:
    """A folder card of phantom images with extra manifest columns, metadata mapping and masks."""
    rows = []
    for i, s in enumerate(samples):
        (root / "img").mkdir(parents=True, exist_ok=True)
        (root / "img" / f"{i:03d}.png").write_bytes(encode_png(s.image))
        row = {"path": f"img/{i:03d}.png", "dr": s.labels["dr_grade"]}
        for m in masks:
            (root / m).mkdir(exist_ok=True)
            (root / m / f"{i:03d}.png").write_bytes(encode_png(s.masks[m].astype(np.uint8)))
            row[f"mask_{m}"] = f"{m}/{i:03d}.png"
        rows.append(row | {k: v[i] for k, v in columns.items()})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    card = {"name": root.name, "modality": "fundus", "split": None, "metadata": metadata,
            "tasks": [{"name": "dr", "type": "ordinal", "classes": ["0", "1", "2", "3", "4"]}],
            "masks": {m: f"mask_{m}" for m in masks}, "provenance": {"kind": "synthetic"}}
    (root / "dataset.yaml").write_text(yaml.safe_dump(card))
    return root


@pytest.fixture
def clean() -> Any:
    """The `render` helper: a clean phantom for (seed, size, **condition)."""
    return render


@pytest.fixture
def card_writer() -> Any:
    """The `write_card` helper: phantom samples into a folder card."""
    return write_card


@pytest.fixture(scope="session")
def planted_card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 clean 128 px phantoms; `site` B eyes are rendered more tortuous (planted), `batch` is random.

    `site` and `batch` are balanced and independent (10 eyes per site x batch cell); sex comes from the
    phantom's prior. The card has vessel, artery/vein and lesion masks.
    """
    site = ["A", "B"] * 20
    batch = ["x"] * 10 + ["y"] * 10 + ["x"] * 10 + ["y"] * 10
    samples = [render(i, 128, vessel_tortuosity=1.1 if s == "B" else 0.2) for i, s in enumerate(site)]
    root = tmp_path_factory.mktemp("planted") / "planted"
    return write_card(root, samples, {"site": site, "batch": batch, "age": [s.metadata["age"] for s in samples]},
                      {"site": "site", "age": "age", "extra": ["batch"]}, masks=("vessels", "artery_vein", "lesions"))
