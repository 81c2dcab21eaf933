"""Shared fixtures: offline environment, the real data folder, and tiny cards built on the fly."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


# ---- one tiny pipeline, finished once: used by the runner tests (tests/pipeline) and the report tests --------
@pytest.fixture(scope="session")
def spec() -> Any:
    """The tiny pipeline builder: spec(steps=4) -> a fresh mapping."""
    return tiny_pipeline


@pytest.fixture(scope="session")
def write_spec() -> Any:
    """Write a pipeline mapping to a YAML file."""
    return write


def tiny_pipeline(steps: int = 4) -> dict[str, Any]:
    """Phantoms -> tiny MAE -> probe vs random -> compare -> report, sized for seconds on CPU."""
    probe = {"card": "${data.fundus}", "task": "dr_grade", "encoder": "${pretrain.mae}", "policy": "linear_probe",
             "image_size": 32, "epochs": 2, "warmup_epochs": 0, "lr": 5e-3, "seeds": [0, 1],
             "label_fractions": [0.5, 1.0]}
    return {
        "name": "tiny",
        "data": {"fundus": {"phantom": {"n": 48, "size": 32, "seed": 0}}},
        "pretrain": {"mae": {"recipe": "mae_vit_tiny_demo", "backbone_overrides": {"img_size": 32}, "image_size": 32,
                             "batch_size": 8, "log_every": 1, "checkpoint_every": 2,
                             "stages": [{"name": "phantom", "steps": steps,
                                         "sources": [{"source": "${data.fundus}", "split": "train"}]}]}},
        "adapt": {"mae_probe": probe, "random_probe": {**probe, "encoder": "random:vit_tiny_p8_64",
                                                       "backbone_overrides": {"img_size": 32}}},
        "evaluate": {
            "mae_vs_random": {"compare": {"a": "${adapt.mae_probe}", "b": "${adapt.random_probe}"}},
            "fairness": {"fairness": {"experiment": "${adapt.mae_probe}",
                                      "fairness": {"attributes": ["sex", "age"], "min_n": 4, "min_per_class": 1,
                                                   "n_boot": 20}}},
            "labels": {"efficiency": {"models": {"MAE": "${adapt.mae_probe}", "random": "${adapt.random_probe}"},
                                      "reference": "random"}},
            "arms": {"arms": {"title": "tiny arms", "arms": {"MAE": "${adapt.mae_probe}",
                                                              "random": "${adapt.random_probe}"},
                              "baselines": ["random"], "reference": "random"}},
        },
        "analyze": {
            "latent": {"latent": {"cards": ["${data.fundus}"], "encoder": "${pretrain.mae}", "n": 48,
                                  "methods": ["tsne"], "perplexity": 5}},
            "gradcam": {"gradcam": {"adapt_run": "${adapt.mae_probe}/fraction_1/seed_0", "n": 4}},
        },
        "report": {"title": "tiny"},
    }


def write(path: Path, spec: dict[str, Any]) -> Path:
    """Write a pipeline YAML."""
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished tiny pipeline run shared by the runner tests and the report tests."""
    from synthfm.pipeline.runner import run_pipeline

    base = tmp_path_factory.mktemp("pipe")
    root, jobs = run_pipeline(write(base / "tiny.yaml", tiny_pipeline()), base / "run", say=lambda s: None)
    assert [j.status for j in jobs] == ["ran"] * len(jobs)
    return root


# ---- the tiny conditional generator (diffusion objective, generation, consortium) --------------------------
TINY_UNET = {"block_out_channels": [16, 32], "attention": [False, False], "layers_per_block": 1, "norm_num_groups": 8}


def tiny_config(cards: list[Path], steps: int, **kw: Any) -> dict[str, Any]:
    """A tiny pixel-space generator at 8 px conditioned on cataract, batch 32, x0 prediction, EMA."""
    cfg = {"objective": "diffusion", "image_size": 8, "batch_size": 32, "log_every": 20, "checkpoint_every": 1000,
           "diffusion": {"conditions": ["cataract"], "unet": TINY_UNET, "ema_decay": 0.999,
                         "prediction_type": "sample"},
           "optim": {"lr": 2e-3, "warmup_steps": 10, "weight_decay": 0.0},
           "stages": [{"name": "main", "sources": [{"source": str(c)} for c in cards], "steps": steps}]}
    return {**cfg, **kw}


@pytest.fixture(scope="session")
def diffusion_config() -> Callable[..., dict[str, Any]]:
    """The tiny generator config builder: (cards, steps, **top-level overrides) -> config mapping."""
    return tiny_config


@pytest.fixture(scope="session")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Fundus phantom cards at 16 px: training (64 without / 64 with cataract) and held-out (32 + 32)."""
    from synthfm.synth.writer import PhantomConfig, render_phantom

    root = tmp_path_factory.mktemp("phantoms")
    cards = {}
    for name, n, seed in (("train", 64, 0), ("held", 32, 10)):
        for c in (0, 1):
            cards[f"{name}{c}"] = render_phantom(root / f"{name}{c}", PhantomConfig(n=n, size=16, seed=seed + c,
                                                                                   condition={"cataract": c}))
    return cards


TINY_CLASSIFIER = {"task": "cataract", "encoder": "random:vit_tiny_p8_64",
                   "backbone_overrides": {"depth": 2, "img_size": 32, "embed_dim": 48, "num_heads": 3},
                   "epochs": 2, "warmup_epochs": 1, "seeds": [0], "label_fractions": [1.0]}


@pytest.fixture(scope="session")
def phantom_card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 fundus phantoms at 64 px, split 50/25/25 (cataract has both classes in every split)."""
    from synthfm.synth.writer import PhantomConfig, render_phantom

    out = tmp_path_factory.mktemp("phantom")
    return render_phantom(out, PhantomConfig(n=64, size=64, ratios=(0.5, 0.25, 0.25)))


@pytest.fixture(scope="session")
def tiny_recipe(phantom_card: Path) -> Any:
    """Build a ClassifierConfig on the phantom card with a 2-block, 48-wide ViT at 32 px."""
    from synthfm.train.classifier_config import ClassifierConfig

    return lambda **kw: ClassifierConfig(**{**TINY_CLASSIFIER, "card": str(phantom_card), **kw})


@pytest.fixture(scope="session")
def tiny_cfg(phantom_card: Path) -> Any:
    """Build an AdaptConfig (the same recipe, run as an adaptation experiment) on the phantom card."""
    from synthfm.adapt.config import AdaptConfig

    return lambda **kw: AdaptConfig(**{**TINY_CLASSIFIER, "card": str(phantom_card), **kw})
