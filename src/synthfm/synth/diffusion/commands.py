"""`synthfm synth generate CONFIG -o OUT` and `synth merge` (a Typer sub-app mounted by cli.py).

`synth train` trains a generator through the pretraining engine, so it is pretrain's command
(synthfm.pretrain.commands), added to this group by cli.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(no_args_is_help=True, help="Conditional diffusion generators: train on cards, generate cards.")


def generate_command(config: str | Path, out: str | Path, rank: int | None = None,
                     world: int | None = None) -> dict:
    """Generate (or resume) a synthetic card from a generation YAML; return the summary."""
    from synthfm.config import load_config
    from synthfm.synth.diffusion.config import GenerateConfig
    from synthfm.synth.diffusion.generate import generate

    return generate(load_config(GenerateConfig, config), out, rank, world)


@app.command("generate")
def generate_cmd(
    config: Annotated[Path, typer.Argument(help="GenerateConfig YAML (generator, n, sampler, target, ...)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: WebDataset shards + manifest + "
                                                          "dataset.yaml (resumes if interrupted)")],
    rank: Annotated[Optional[int], typer.Option(help="This job's index when not under accelerate")] = None,  # noqa: UP045
    world: Annotated[Optional[int], typer.Option(help="Number of jobs sharing OUT")] = None,  # noqa: UP045
) -> None:
    """Generate N images to a target distribution of conditions as a dataset card (resumable, multi-process)."""
    summary = generate_command(config, out, rank, world)
    if os.environ.get("RANK", "0") == "0":
        typer.echo(json.dumps(summary))


@app.command("merge")
def merge_cmd(
    parts: Annotated[list[Path], typer.Argument(help="Shard cards to join (generation folders, filtered sets)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder of the merged card")],
    name: Annotated[Optional[str], typer.Option(help="Name of the merged card")] = None,  # noqa: UP045
) -> None:
    """Join shard cards into one card: shards linked, manifests concatenated, clashing ids prefixed by part."""
    from synthfm.synth.merge import merge_cards

    typer.echo(str(merge_cards(list(parts), out, name)))
