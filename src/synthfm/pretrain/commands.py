"""Pretraining commands that cli.py mounts: `synthfm synth train` trains a diffusion generator through the engine."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from synthfm.errors import SynthfmError


def train_command(config: str | Path, out: str | Path) -> dict:
    """Train (or resume) a diffusion generator config through the pretraining engine; return the run summary."""
    from synthfm.pretrain.config import load_pretrain_config
    from synthfm.pretrain.engine import pretrain

    cfg = load_pretrain_config(config)
    if cfg.objective != "diffusion":
        raise SynthfmError(f"{config} has objective {cfg.objective!r}, not 'diffusion'",
                           "set 'objective: diffusion' (or use 'synthfm pretrain run' for encoders)")
    return pretrain(cfg, out)


def train_cmd(
    config: Annotated[Path, typer.Argument(help="Pretraining YAML with objective: diffusion")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory (the generator is exported to "
                                                          "OUT/generator; resumes if interrupted)")],
) -> None:
    """Train a conditional diffusion generator on cards; `accelerate launch -m synthfm synth train` for GPUs."""
    summary = train_command(config, out)
    if os.environ.get("RANK", "0") == "0":
        typer.echo(json.dumps(summary))
