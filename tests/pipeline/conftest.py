"""A tiny pipeline spec and one finished run of it, shared by the runner and report tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from synthfm.pipeline.runner import run_pipeline


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
    """One finished tiny pipeline run shared by the tests of this module (and the report tests)."""
    base = tmp_path_factory.mktemp("pipe")
    root, jobs = run_pipeline(write(base / "tiny.yaml", tiny_pipeline()), base / "run", say=lambda s: None)
    assert [j.status for j in jobs] == ["ran"] * len(jobs)
    return root
