"""CLI for evaluation: `synthfm evaluate EXP...` and the `synthfm efficiency` group (labels; `checkpoints`, which
adapts from every pretraining checkpoint, is adapt's command, added to the group by cli.py).

Mount in cli.py with `app.command("evaluate")(evaluate_cli)` and `app.add_typer(efficiency_app, name="efficiency")`
(imported from this module, which stays light: the work is imported inside each command).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(no_args_is_help=True, help="Label efficiency and training-time efficiency curves.")


def show(df: object, title: str = "") -> None:
    """Print a title and a table in full."""
    if title:
        print(f"\n{title}")
    print(df.to_string(index=False, float_format=lambda v: f"{v:.4f}"))  # type: ignore[attr-defined]


def evaluate_runs(runs: list[Path], metric: str = "auroc", config: Path | None = None,
                  reference: str | None = None) -> int:
    """Summaries, fairness tables and label curves of finished experiments (+ labels needed vs `reference`)."""
    from synthfm.config import load_config
    from synthfm.evaluate.efficiency import labels_needed
    from synthfm.evaluate.experiment import evaluate_experiment
    from synthfm.evaluate.fairness import FairnessConfig
    from synthfm.evaluate.results import load_results, summary_table

    fcfg = load_config(FairnessConfig, config) if config else FairnessConfig()
    for run in runs:
        tables = evaluate_experiment(run, fcfg, metric)
        show(summary_table(load_results(run).query("metric == @metric")), f"{run}: {metric} over seeds")
        if tables["gap_summary"].empty:
            print(f"\n{run}: no subgroup tables (the predictions carry none of {fcfg.attributes})")
        else:
            show(tables["gap_summary"], f"{run}: subgroup gaps (tables in {Path(run) / 'fairness'})")
    if reference is not None:
        show(labels_needed(load_results(runs), reference, metric), f"labels needed to match {reference} at 100%")
    return 0


def evaluate_cli(
    runs: Annotated[list[Path], typer.Argument(help="Finished adaptation experiment folders")],
    metric: Annotated[str, typer.Option(help="Metric to summarise")] = "auroc",
    config: Annotated[Optional[Path], typer.Option(help="Fairness YAML (attributes, min_n, n_boot...)")] = None,  # noqa: UP045
    reference: Annotated[Optional[str], typer.Option(help="Experiment name to match at 100% labels")] = None,  # noqa: UP045
) -> None:
    """Mean and CIs over seeds, subgroup fairness tables and gaps, label-efficiency curves of experiments."""
    evaluate_runs(runs, metric, config, reference)


@app.command("labels")
def labels_cmd(
    runs: Annotated[list[Path], typer.Argument(help="Adaptation experiments (one model each) or a root of them")],
    reference: Annotated[str, typer.Option(help="Experiment (folder name) whose 100% score is the target")],
    metric: Annotated[str, typer.Option(help="Metric")] = "auroc",
    split: Annotated[str, typer.Option(help="Split")] = "test",
    eval_set: Annotated[str, typer.Option(help="'internal' or an external set's name")] = "internal",
) -> None:
    """Label-efficiency curves and the fraction of labels each model needs to match the reference at 100%."""
    from synthfm.evaluate.efficiency import label_curve, labels_needed
    from synthfm.evaluate.results import load_results

    results = load_results(runs)
    show(label_curve(results, metric, split, eval_set), "label-efficiency curves")
    show(labels_needed(results, reference, metric, split, eval_set), f"labels needed to match {reference}")
