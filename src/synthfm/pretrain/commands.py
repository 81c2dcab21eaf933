"""`synthfm pretrain run | export | recipes`, and `synthfm synth train` (a diffusion generator trained through the
engine): the Typer app and command that cli.py mounts."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from synthfm.errors import SynthfmError

console = Console()
app = typer.Typer(no_args_is_help=True, help="Self-supervised pretraining: MAE, DINOv2, RaSD prototype disentangling.")


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


@app.command("run")
def pretrain_run_cmd(
    config: Annotated[Path, typer.Argument(help="Pretraining YAML (optionally 'recipe: NAME' plus overrides)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory (resumes if interrupted)")],
) -> None:
    """Pretrain an encoder over the config's curriculum; `accelerate launch -m synthfm pretrain run` for GPUs."""
    from synthfm.pretrain.config import load_pretrain_config
    from synthfm.pretrain.engine import pretrain

    summary = pretrain(load_pretrain_config(config), out)
    if os.environ.get("RANK", "0") == "0":
        console.print(f"pretraining finished: {summary}; encoder in [bold]{out / 'encoder'}[/]", soft_wrap=True)


@app.command("export")
def pretrain_export_cmd(
    run: Annotated[Path, typer.Argument(help="Pretraining run directory")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder (default RUN/export)")] = None,  # noqa: UP045
) -> None:
    """Save the encoder of a run's latest checkpoint (safetensors + config) for adaptation."""
    from synthfm.pretrain.engine import export_encoder

    console.print(f"encoder saved to [bold]{export_encoder(run, out)}[/]")


@app.command("recipes")
def pretrain_recipes_cmd(
    full: Annotated[bool, typer.Option("--full", help="Print each recipe's whole YAML")] = False,
) -> None:
    """List the named pretraining recipes: one line each (objective, backbone), or the full YAML with --full."""
    import yaml

    from synthfm.pretrain.config import all_recipes

    for name, recipe in all_recipes().items():
        if full:
            console.print(f"[bold]{name}[/]\n{yaml.safe_dump(recipe, sort_keys=False)}", highlight=False)
        else:
            console.print(f"{name:28} {recipe.get('objective', 'mae'):9} {recipe.get('backbone', '')}",
                          highlight=False, markup=False)
