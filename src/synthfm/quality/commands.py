"""`synthfm quality SYNTH_CARD --real REAL_CARD [--config gate.yaml] --out RUN`.

`app` holds the one command; cli.py mounts the command itself, so its arguments follow the name
(`app.command("quality")(quality)`), rather than as a group whose options would have to come first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from synthfm.config import load_config
from synthfm.quality.config import QualityConfig

app = typer.Typer(help="Quality and privacy gate for synthetic data: fidelity, memorisation, labels, metadata.",
                  no_args_is_help=True)
console = Console()


@app.command("quality")
def quality(
    synth_card: Annotated[Path, typer.Argument(help="Synthetic dataset card (folder or dataset.yaml)")],
    real: Annotated[Path, typer.Option("--real", help="Real dataset card the synthetic set is checked against")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory for quality.json and the tables")],
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="QualityConfig YAML")] = None,  # noqa: UP045
) -> None:
    """Check a synthetic card against a real one and apply the gate (exit 2 with the failed metrics)."""
    from synthfm.quality.gate import describe
    from synthfm.quality.run import run_quality

    cfg = load_config(QualityConfig, config) if config else QualityConfig()
    summary = run_quality(synth_card, real, cfg, out)
    for space in summary.get("space_info", []):
        console.print(f"space {space['name']}: {space['description']}", highlight=False)
    for check in summary["checks"]:
        console.print(f"{'ok  ' if check['passed'] else 'FAIL'} {describe(check)}", highlight=False)
    console.print(f"verdict: [bold]{summary['verdict']}[/]; tables in {out}")
