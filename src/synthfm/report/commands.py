"""`synthfm report`: the HTML report of a pipeline run (the command function cli.py mounts)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console


def report_cmd(
    root: Annotated[Path, typer.Argument(help="Pipeline run root (the folder holding pipeline.json)")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="HTML file (default ROOT/report.html)")] = None,  # noqa: UP045
    title: Annotated[Optional[str], typer.Option(help="Report title")] = None,  # noqa: UP045
) -> None:
    """Write the self-contained HTML report of a pipeline run."""
    from synthfm.report.html import render_report

    Console().print(f"report: [bold]{render_report(root, out, title)}[/]")
