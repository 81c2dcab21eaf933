"""`synthfm run`: a pipeline YAML, every stage in order (the command function cli.py mounts)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

console = Console()


def run_cmd(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline YAML (e.g. configs/demo.yaml)")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run root (default: the file's root, or runs/NAME)")] = None,  # noqa: UP045, E501
    only: Annotated[Optional[str], typer.Option(help="Comma-separated stages or stage.job names to run")] = None,  # noqa: UP045
    start: Annotated[Optional[str], typer.Option("--from", help="Start at this stage (earlier ones must be finished)")] = None,  # noqa: UP045, E501
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan (what runs, what is cached) and stop")] = False,  # noqa: E501
) -> None:
    """Run a pipeline: every stage in order, finished jobs reused, interrupted ones resumed; ends with the report."""
    from synthfm.pipeline.runner import run_pipeline

    root, jobs = run_pipeline(pipeline, out, only.split(",") if only else None, start, dry_run,
                              say=lambda s: console.print(s, highlight=False, markup=False, soft_wrap=True))
    if dry_run:
        return
    ran = sum(j.status == "ran" for j in jobs)
    console.print(f"[green]pipeline finished[/]: {ran} job(s) ran, {sum(j.status == 'cached' for j in jobs)} reused")
    report = root / "report.html"
    if report.is_file():
        console.print(f"report: [bold]{report}[/]")
