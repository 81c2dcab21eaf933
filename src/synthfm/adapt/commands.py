"""Command functions for `synthfm adapt CONFIG OUT`, `synthfm evaluate RUN`, `synthfm compare A B` (wired in cli)."""

from __future__ import annotations

from pathlib import Path

from synthfm.adapt.config import AdaptConfig
from synthfm.adapt.experiment import run_experiment
from synthfm.config import load_config
from synthfm.evaluate.commands import evaluate_runs, show
from synthfm.evaluate.results import compare, summary_table
from synthfm.io import atomic_path


def adapt_command(config: str | Path, out: str | Path) -> int:
    """Run an adaptation YAML over every label fraction × seed in `out` (resumable); print test AUROC."""
    results = run_experiment(load_config(AdaptConfig, config), out)
    show(summary_table(results[results["metric"] == "auroc"]))
    return 0


def evaluate_command(runs: str | Path | list[Path], metric: str = "auroc", config: Path | None = None,
                     reference: str | None = None) -> int:
    """Mean and CIs of a metric, fairness tables and label curves of finished experiments (see evaluate_runs)."""
    return evaluate_runs([Path(runs)] if isinstance(runs, (str, Path)) else list(runs), metric, config, reference)


def compare_command(a: str | Path, b: str | Path, metric: str = "auroc", split: str = "test",
                    out: str | Path | None = None) -> int:
    """Paired t-tests by seed of experiment A vs B with Holm correction; optionally write the table as CSV."""
    table = compare(a, b, metric=metric, split=split)
    show(table)
    if out is not None:
        with atomic_path(out, ".csv") as tmp:
            table.to_csv(tmp, index=False)
    return 0
