"""The demo runs every existing stage on phantom data, and a second run reuses every stage."""

from __future__ import annotations

from pathlib import Path

from synthfm.demo import run_demo


def test_demo_runs_and_reuses(tmp_path: Path) -> None:
    s = run_demo(tmp_path, n=12, size=32)
    assert s["counts"]["fundus_phantom"]["rows"] == 12 and s["counts"]["fundus_shards"]["errors"] == 0
    assert s["loader"]["images"] == s["counts"]["fundus_shards"]["splits"]["train"]
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.png")}
    run_demo(tmp_path, n=12, size=32)
    assert stamps and all(p.stat().st_mtime_ns == t for p, t in stamps.items())
