"""Command functions for `synthfm adapt CONFIG OUT`, `synthfm evaluate RUN`, `synthfm compare A B` (wired in cli)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from synthfm.adapt.config import AdaptConfig
from synthfm.adapt.experiment import run_experiment
from synthfm.config import load_config
from synthfm.evaluate.results import compare, load_results, summary_table
from synthfm.io import atomic_path


def _show(df: pd.DataFrame) -> None:
    """Print a table in full."""
    print(df.to_string(index=False, float_format=lambda v: f"{v:.4f}"))


def adapt_command(config: str | Path, out: str | Path) -> int:
    """Run an adaptation YAML over every label fraction × seed in `out` (resumable); print test AUROC."""
    results = run_experiment(load_config(AdaptConfig, config), out)
    _show(summary_table(results[results["metric"] == "auroc"]))
    return 0


def evaluate_command(run: str | Path, metric: str = "auroc") -> int:
    """Print the mean, 95% CI and bootstrap CI of one metric of a finished adaptation experiment."""
    _show(summary_table(load_results(run).query("metric == @metric")))
    return 0


def compare_command(a: str | Path, b: str | Path, metric: str = "auroc", split: str = "test",
                    out: str | Path | None = None) -> int:
    """Paired t-tests by seed of experiment A vs B with Holm correction; optionally write the table as CSV."""
    table = compare(a, b, metric=metric, split=split)
    _show(table)
    if out is not None:
        with atomic_path(out, ".csv") as tmp:
            table.to_csv(tmp, index=False)
    return 0
