"""`synthfm synth phantom`, with the diffusion generator's `generate` and `merge` (a Typer app that cli.py mounts;
`synth train` is pretrain's command, added by cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from synthfm.errors import SynthfmError
from synthfm.synth.diffusion.commands import app as diffusion_app
from synthfm.synth.registry import GENERATORS

console = Console()
app = typer.Typer(no_args_is_help=True, help="Generators: phantoms; conditional diffusion (train, generate).")
app.add_typer(diffusion_app)


def _parse_condition(items: list[str]) -> dict[str, object]:
    """key=value pairs -> a condition dict (numbers parsed as numbers)."""
    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SynthfmError(f"--condition {item!r} is not key=value", "write e.g. --condition dr_grade=3")
        try:
            out[key] = int(value)
        except ValueError:
            try:
                out[key] = float(value)
            except ValueError:
                out[key] = value
    return out


@app.command("phantom")
def phantom_cmd(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the new card")],
    generator: Annotated[str, typer.Option(help=" | ".join(GENERATORS))] = "fundus_phantom",
    n: Annotated[int, typer.Option(help="Number of images")] = 200,
    size: Annotated[int, typer.Option(help="Image side in pixels")] = 256,
    seed: Annotated[int, typer.Option(help="Random seed")] = 0,
    fmt: Annotated[str, typer.Option("--format", help="folder | shards")] = "folder",
    condition: Annotated[Optional[list[str]], typer.Option(help="key=value fixed for every image")] = None,  # noqa: UP045
    target: Annotated[Optional[Path], typer.Option(help="Card whose label x age x sex distribution to match")] = None,  # noqa: UP045
    config: Annotated[Optional[Path], typer.Option(help="YAML PhantomConfig (options above override it)")] = None,  # noqa: UP045
) -> None:
    """Render a procedural phantom into a dataset card with labels, metadata, masks and parameters."""
    from synthfm.config import given_options, layer_options, read_yaml, validate_config
    from synthfm.synth.writer import PhantomConfig, render_phantom

    options = {"generator": generator, "n": n, "size": size, "seed": seed, "format": fmt}
    base = read_yaml(config) if config else options  # without a YAML every option (given or default) applies
    base = layer_options(base, given_options(ctx, options, {"format": "fmt"}))
    if condition:
        base["condition"] = {**base.get("condition", {}), **_parse_condition(condition)}
    if target:
        base["target"] = {**base.get("target", {}), "card": str(target)}
    cfg = validate_config(PhantomConfig, base, str(config) if config else "command-line options")
    console.print(f"wrote card [bold]{render_phantom(out, cfg)}[/]")
