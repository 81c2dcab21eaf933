"""run_quality end to end: the output contract, the gate's verdict and error, resume, the CLI sub-app."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from synthfm.errors import SynthfmError
from synthfm.quality.commands import app
from synthfm.quality.config import GateConfig, QualityConfig
from synthfm.quality.gate import evaluate_gate
from synthfm.quality.run import run_quality

from .conftest import TINY_SPACE

SPACE = "synthfm-random-vit_tiny_p8_64"
CFG = {"spaces": [TINY_SPACE], "labels": {"tasks": ["cataract"], "adapt": {"epochs": 2}},
       "fidelity": {"min_per_label": 5, "kid_subset_size": 20}}


def test_run_quality_writes_the_documented_tables(tiny_cards: dict[str, Path], tmp_path: Path) -> None:
    cfg = QualityConfig.model_validate({**CFG, "gate": {"at_most": {"near_copies": 0, "FD": 1e6}}})
    out = tmp_path / "q"
    summary = run_quality(tiny_cards["synth"], tiny_cards["real"], cfg, out)
    assert summary["verdict"] == "pass"
    assert {c["metric"] for c in summary["checks"]} == {"near_copies", f"FD_{SPACE}"}
    saved = json.loads((out / "quality.json").read_text())
    assert saved["verdict"] == "pass" and saved["n_synthetic"] == 30 and saved["n_real"] == 60
    for name in ("FD", "KID", "precision", "recall", "density", "coverage"):
        assert f"{name}_{SPACE}" in saved["metrics"]
    fid = pd.read_csv(out / "fidelity.csv")
    assert list(fid.columns) == ["space", "task", "class", "metric", "value", "n_synthetic", "n_real"]
    assert (fid["task"] == "dr_grade").any()  # per-label rows
    mem = pd.read_csv(out / "memorisation.csv")
    assert len(mem) == 30 and {"pixel_real_id", "pixel_score", "feature_score", "flagged"} <= set(mem.columns)
    assert (out / "near_copies.png").stat().st_size > 0
    assert set(pd.read_csv(out / "label_agreement.csv")["class"]) == {"no", "yes"}
    dist = pd.read_csv(out / "metadata_distributions.csv")
    assert {"age", "sex", "label:dr_grade"} <= set(dist["field"])
    assert set(dist.loc[dist["field"] == "age", "test"]) == {"ks"}
    pred = pd.read_csv(out / "metadata_predictions.csv")
    assert set(pred["field"]) == {"age", "sex"}
    assert (out / "filtered" / "dataset.yaml").is_file()
    assert pd.read_csv(out / "gate.csv")["passed"].all()
    again = run_quality(tiny_cards["synth"], tiny_cards["real"], cfg, out)  # finished: read back, not recomputed
    assert again["metrics"] == summary["metrics"]


def test_gate_failure_stops_with_metric_and_threshold(tiny_cards: dict[str, Path], tmp_path: Path) -> None:
    cfg = QualityConfig.model_validate({**CFG, "labels": {"enabled": False}, "metadata": {"enabled": False},
                                        "gate": {"at_most": {"FD": 0.0}, "at_least": {"coverage": 0.0}}})
    with pytest.raises(SynthfmError, match=rf"FD_{SPACE} = [0-9.e-]+ > at_most 0"):
        run_quality(tiny_cards["synth"], tiny_cards["real"], cfg, tmp_path / "q")
    summary = json.loads((tmp_path / "q" / "quality.json").read_text())
    assert summary["verdict"] == "fail"
    assert [c["passed"] for c in summary["checks"]] == [False, True]


def test_gate_matching_and_unknown_names() -> None:
    metrics = {"FD_a": 3.0, "FD_b": 1.0, "KID_a": 0.1, "KIDstd_a": 0.01, "near_copies": 0.0}
    checks = evaluate_gate(metrics, GateConfig(at_most={"FD": 2.0, "KID": 1.0}, at_least={}))
    assert [(c["metric"], c["passed"]) for c in checks] == [("FD_a", False), ("FD_b", True), ("KID_a", True)]
    with pytest.raises(SynthfmError, match="names no computed metric"):
        evaluate_gate(metrics, GateConfig(at_most={"label_disagreement": 0.1}))


def test_cli_sub_app(tiny_cards: dict[str, Path], tmp_path: Path) -> None:
    cfg = {**CFG, "labels": {"enabled": False}, "metadata": {"enabled": False}, "memorisation": {"enabled": False},
           "gate": {"at_most": {"FD": 1e6}}}  # the default near_copies bound needs the (disabled) audit
    path = tmp_path / "gate.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, [str(tiny_cards["synth"]), "--real", str(tiny_cards["real"]), "--config", str(path),
                                   "--out", str(tmp_path / "q")])
    assert res.exit_code == 0, res.output
    assert "verdict: pass" in res.output
    bad = CliRunner().invoke(app, [str(tiny_cards["synth"]), "--real", str(tiny_cards["real"]), "--out",
                                   str(tmp_path / "q2"), "--config", str(tmp_path / "missing.yaml")])
    assert isinstance(bad.exception, SynthfmError)
