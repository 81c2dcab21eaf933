"""The report's warnings about adaptation jobs, from results tables with known answers."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from synthfm.evaluate.results import tidy_rows
from synthfm.report.html import Run, limit_lines


def _experiment(folder: Path, auroc: dict[float, list[float]]) -> str:
    """An experiment folder holding only results.parquet: test AUROC and accuracy (at the majority rate 0.6)."""
    rows = [r for f, vs in auroc.items() for seed, v in enumerate(vs)
            for r in tidy_rows({"test": {"auroc": v, "accuracy": 0.6}}, dataset="d", task="t", policy="p",
                               encoder="e", fraction=f, seed=seed, eval_set="internal")]
    folder.mkdir(parents=True)
    pd.DataFrame(rows).assign(majority_rate=0.6).to_parquet(folder / "results.parquet", index=False)
    return str(folder)


def test_adapt_jobs_at_chance_and_falling_curves_are_warned_about(tmp_path: Path) -> None:
    good = _experiment(tmp_path / "good", {0.5: [0.70, 0.71, 0.72], 1.0: [0.80, 0.81, 0.82]})
    bad = _experiment(tmp_path / "bad", {0.5: [0.70, 0.71, 0.72], 1.0: [0.45, 0.50, 0.55]})
    jobs = [{"stage": "adapt", "kind": "adapt", "name": n, "dir": d, "status": "ran"}
            for n, d in (("good", good), ("bad", bad))]
    lines = limit_lines(Run(tmp_path, {"name": "t"}, jobs=jobs))
    chance = next(line for line in lines if "at chance level" in line)
    assert "bad at 100% (auroc 0.500" in chance and "good at 100% (auroc" not in chance
    assert "bad at 50% (auroc" not in chance
    assert "reaches the majority-class rate 0.600" in chance  # accuracy 0.6 on every run = the majority rate
    assert any("bad auroc 0.710 at 50% → 0.500 at 100%" in line for line in lines)
    assert limit_lines(Run(tmp_path, {"name": "t"}, jobs=[*jobs, {"stage": "evaluate", "kind": "arms",
                                                                   "name": "x", "dir": "", "status": "ran"}])) == []
