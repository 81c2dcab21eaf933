"""Every pipeline shipped in configs/ plans cleanly and runs end to end at smoke size (the same file with its
sizes and steps overridden, on a few rows of each real card); every shipped card loads, prepares and adapts."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from shipped_smoke import REPO, small_data, smoke

from synthfm.pipeline.runner import run_pipeline

CANDIDATES = [*(REPO / "configs").glob("*.yaml"), *(REPO / "configs" / "experiments").glob("*.yaml")]
PIPELINES = sorted(p for p in CANDIDATES if "report" in yaml.safe_load(p.read_text()))  # the rest are stage configs
CARDS = sorted((REPO / "configs" / "cards").glob("*.yaml"))


@pytest.fixture(scope="module")
def few_rows(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """SYNTHFM_DATA with a few rows per split and class of every real card."""
    return small_data(shared_data, tmp_path_factory.mktemp("data"))


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.stem)
def test_shipped_pipeline_plans(path: Path, tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    root, jobs = run_pipeline(path, tmp_path / "run", dry_run=True, say=lambda s: None)
    assert jobs and all(j.status == "to run" for j in jobs) and jobs[-1].spec.stage == "report"
    assert not root.exists()


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.stem)
def test_shipped_pipeline_runs_at_smoke_size(path: Path, tmp_path: Path, few_rows: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("SYNTHFM_DATA", str(few_rows))
    spec = tmp_path / path.name
    spec.write_text(yaml.safe_dump(smoke(yaml.safe_load(path.read_text()), tmp_path / "run"), sort_keys=False))
    root, jobs = run_pipeline(spec, say=lambda s: None)
    assert [j.status for j in jobs] == ["ran"] * len(jobs)
    assert (root / "report.html").is_file()
    assert not [p for p in root.rglob(".*") if ".tmp" in p.name or p.name == ".synthfm.lock"]


@pytest.mark.parametrize("card", CARDS, ids=lambda p: p.stem)
def test_shipped_card_loads_prepares_and_adapts(card: Path, tmp_path: Path, few_rows: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from synthfm.adapt.config import AdaptConfig
    from synthfm.adapt.experiment import run_experiment
    from synthfm.data.manifest import load_card
    from synthfm.data.prepare import prepare_card
    from synthfm.data.preprocess import PrepareConfig
    from synthfm.data.splits import SplitConfig, split_card

    monkeypatch.setenv("SYNTHFM_DATA", str(few_rows))
    data = load_card(card)
    assert len(data) > 0
    if not {"train", "val"} <= set(data.df["_split"]):  # cards shipped without a split are split first
        keep = ["test"] if "test" in set(data.df["_split"]) else []
        card = split_card(card, tmp_path / "split", SplitConfig(ratios=(0.5, 0.25, 0.25), keep=keep))
    prepared = prepare_card(card, tmp_path / "prep", PrepareConfig(size=32))
    ready = load_card(prepared)
    assert len(ready) == len(data) and set(ready.card.masks) == set(data.card.masks)
    if not ready.card.tasks:  # a segmentation set (CHASE_DB1): masks, no classification task to adapt
        assert ready.card.masks and all((prepared.parent / p).is_file() for p in ready.df[ready.card.masks["vessel"]])
        return
    for task in ready.card.tasks:
        cfg = AdaptConfig(card=str(prepared), task=task.name, encoder="random:vit_tiny_p8_64", policy="linear_probe",
                          image_size=32, epochs=1, warmup_epochs=0, seeds=[0],
                          backbone_overrides={"img_size": 32, "depth": 1})
        results = run_experiment(cfg, tmp_path / f"adapt_{task.name}")
        assert set(results["split"]) >= {"val", "test"}
    assert os.environ["SYNTHFM_DATA"] == str(few_rows)
