"""Phantom images and cards shared by the quality tests (rendered once per session)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

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
    """128 px phantoms: real train, real held-out and genuine synthetic (different seeds). 120 held-out images, so
    that the audit's 99% calibration quantile is not simply their maximum."""
    return {"train": render(80, 128, 100), "heldout": render(120, 128, 101), "genuine": render(80, 128, 102)}


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


TINY_DOMAIN = {"start": "random:vit_tiny_p8_64", "epochs": 15, "warmup_epochs": 1, "batch_size": 32,
               "backbone_overrides": {"depth": 2, "img_size": 32, "embed_dim": 48, "num_heads": 3}}


def write_card(root: Path, images: np.ndarray, grades: np.ndarray, splits: list[str] | None = None,
               classes: list[str] | None = None) -> Path:
    """A folder card of uint8 HxWx3 images (PNG) with an ordinal task `dr_grade` and an optional split column."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    classes = classes or ["0", "1", "2", "3", "4"]
    paths = [f"img/{i:04d}.png" for i in range(len(images))]
    (root / "img").mkdir(exist_ok=True)
    for p, img in zip(paths, images, strict=True):
        Image.fromarray(np.ascontiguousarray(img)).save(root / p)
    df = pd.DataFrame({"path": paths, "dr_grade": [classes[int(g)] for g in grades]})
    spec: dict[str, Any] = {"name": root.name, "modality": "fundus", "split": None,
                            "tasks": [{"name": "dr_grade", "type": "ordinal", "classes": classes}]}
    if splits is not None:
        df["split"] = splits
        spec["split"] = {"column": "split"}
    df.to_csv(root / "manifest.csv", index=False)
    (root / "dataset.yaml").write_text(yaml.safe_dump(spec))
    return root / "dataset.yaml"


@pytest.fixture(scope="session")
def retina(shared_data: Path) -> dict[str, np.ndarray]:
    """RetinaMNIST's official arrays (28 px RGB) and grades."""
    with np.load(shared_data / "retinamnist" / "retinamnist.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="session")
def retina_cards(retina: dict[str, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small real RetinaMNIST card and, as 'synthetic' cards, a held-out real split, the same images blurred or
    colour-shifted, and chest X-ray phantoms filed as fundus images (another modality).

    MedMNIST's train and val rows share patients (4 photos each) and its test rows come from other patients, so
    the card's training rows are official train rows and everything held out (the card's val and test rows and
    the held-out split passed in as synthetic) is official test rows: patient-disjoint from training."""
    from scipy.ndimage import gaussian_filter

    from synthfm.synth.cxr import CXRPhantom
    from synthfm.synth.writer import image_seed

    root = tmp_path_factory.mktemp("retina")
    tr, te = retina["train_images"], retina["test_images"]
    ytr, yte = retina["train_labels"][:, 0], retina["test_labels"][:, 0]
    real = write_card(root / "real", np.concatenate([tr[:240], te[:120]]), np.concatenate([ytr[:240], yte[:120]]),
                      ["train"] * 240 + ["val"] * 60 + ["test"] * 60)
    held, y = te[200:300], yte[200:300]
    blurred = np.stack([gaussian_filter(x.astype(np.float32), (1.2, 1.2, 0)) for x in held]).round().astype(np.uint8)
    shifted = np.clip(held * np.array([0.7, 1.0, 1.35]), 0, 255).astype(np.uint8)
    cxr = CXRPhantom()
    xray = np.stack([np.repeat(cxr.generate({}, image_seed(7, i), 28).image[..., None], 3, -1) for i in range(100)])
    return {"real": real, "heldout": write_card(root / "heldout", held, y),
            "blurred": write_card(root / "blurred", blurred, y), "colour": write_card(root / "colour", shifted, y),
            "xray": write_card(root / "xray", xray, y)}
