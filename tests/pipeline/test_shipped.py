"""Every pipeline shipped in configs/ plans cleanly (keys, references and input files all check out)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from synthfm.pipeline.runner import run_pipeline

REPO = Path(__file__).resolve().parents[2]
CANDIDATES = [*(REPO / "configs").glob("*.yaml"), *(REPO / "configs" / "experiments").glob("*.yaml")]
PIPELINES = sorted(p for p in CANDIDATES if "report" in yaml.safe_load(p.read_text()))  # the rest are stage configs


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.stem)
def test_shipped_pipeline_plans(path: Path, tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    root, jobs = run_pipeline(path, tmp_path / "run", dry_run=True, say=lambda s: None)
    assert jobs and all(j.status == "to run" for j in jobs) and jobs[-1].spec.stage == "report"
    assert not root.exists()
