"""The demo runs every existing stage on phantom data, ends with a verdict, and a second run reuses it all."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from synthfm.demo import run_demo, verdict


def test_demo_runs_and_reuses(tmp_path: Path) -> None:
    s = run_demo(tmp_path, n=60, size=32, steps=4, seeds=(0, 1))
    assert s["counts"]["fundus_phantom"]["rows"] == 60 and s["counts"]["fundus_shards"]["errors"] == 0
    assert s["loader"]["images"] == s["counts"]["fundus_shards"]["splits"]["train"]
    assert s["verdict"].startswith("On phantom DR grade, MAE pretraining")
    assert (tmp_path / "pretrain_mae/encoder").is_dir() and (tmp_path / "adapt_mae/results.parquet").is_file()
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.suffix in (".png", ".safetensors")}
    run_demo(tmp_path, n=60, size=32, steps=4, seeds=(0, 1))
    assert stamps and all(p.stat().st_mtime_ns == t for p, t in stamps.items())


def test_verdict_says_when_pretraining_did_not_help() -> None:
    row = {"mean_a": 0.70, "mean_b": 0.80, "mean_diff": -0.10, "n": 5, "p": 0.001, "p_holm": 0.002,
           "significant": True}
    assert "hurt" in verdict(pd.DataFrame([row]))
    row |= {"mean_diff": 0.01, "mean_a": 0.81, "p": 0.4, "p_holm": 0.4, "significant": False}
    assert "did not make a significant difference" in verdict(pd.DataFrame([row]))
    row |= {"mean_diff": 0.1, "mean_a": 0.9, "p": 0.001, "p_holm": 0.001, "significant": True}
    assert "helped" in verdict(pd.DataFrame([row]))
