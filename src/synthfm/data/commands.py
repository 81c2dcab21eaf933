"""`synthfm data`: import, prepare, split and inspect dataset cards (a Typer app that cli.py mounts)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from synthfm.errors import SynthfmError

console = Console()
app = typer.Typer(no_args_is_help=True, help="Datasets: import, prepare, split, inspect.")


@app.command("import-npz")
def import_npz_cmd(
    npz: Annotated[Path, typer.Argument(help="MedMNIST-style .npz with {split}_images / {split}_labels")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the new card")],
    name: Annotated[str, typer.Option(help="Dataset name")] = "",
    modality: Annotated[str, typer.Option(help="fundus | cxr | volume")] = "fundus",
    task: Annotated[str, typer.Option(help="Task name")] = "label",
    task_type: Annotated[str, typer.Option(help="binary | multiclass | ordinal | multilabel")] = "multiclass",
    classes: Annotated[Optional[str], typer.Option(help="Comma-separated class names")] = None,  # noqa: UP045
) -> None:
    """Turn a MedMNIST-style .npz into a dataset card, keeping its official split."""
    from synthfm.data.npz import import_npz

    path = import_npz(npz, out, name or npz.stem, modality, task, task_type,  # type: ignore[arg-type]
                      classes.split(",") if classes else None)
    console.print(f"wrote card [bold]{path}[/]")


@app.command("prepare")
def prepare_cmd(
    card: Annotated[Path, typer.Argument(help="Card folder or YAML")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the prepared card")],
    size: Annotated[int, typer.Option(help="Output side in pixels")] = 256,
    fmt: Annotated[str, typer.Option("--format", help="folder | shards")] = "folder",
    encoding: Annotated[str, typer.Option(help="shard image encoding: raw | npy | png | jpg")] = "png",
    shard_size: Annotated[int, typer.Option(help="images per shard")] = 1000,
    limit: Annotated[Optional[int], typer.Option(help="only the first N rows (a quick trial)")] = None,  # noqa: UP045
    fit: Annotated[str, typer.Option(help="pad: letterbox to a square | crop: centred square of the shorter side")] = "pad",  # noqa: E501
    fov: Annotated[str, typer.Option(help="keep | drop the black corners around a round field of view")] = "keep",
    spacing: Annotated[Optional[str], typer.Option(help="nifti: resample to z,y,x mm before the cube, e.g. 1,1,1")] = None,  # noqa: UP045, E501
) -> None:
    """Preprocess a card (field-of-view crop, square pad or crop, resize, quality flags) into a new card."""
    from synthfm.config import validate_config
    from synthfm.data.prepare import prepare_card
    from synthfm.data.preprocess import PrepareConfig

    options = {"size": size, "format": fmt, "encoding": encoding, "shard_size": shard_size, "limit": limit,
               "fit": fit, "fov": fov, "spacing": spacing.split(",") if spacing else None}
    cfg = validate_config(PrepareConfig, options, "command-line options")
    console.print(f"wrote card [bold]{prepare_card(card, out, cfg)}[/]")


@app.command("split")
def split_cmd(
    card: Annotated[Path, typer.Argument(help="Card folder or YAML")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the split card")],
    ratios: Annotated[str, typer.Option(help="train,val,test fractions")] = "0.7,0.1,0.2",
    stratify: Annotated[Optional[str], typer.Option(help="Task to stratify by")] = None,  # noqa: UP045
    seed: Annotated[int, typer.Option(help="Random seed")] = 0,
    keep: Annotated[Optional[str], typer.Option(help="Comma-separated splits to keep as they are")] = None,  # noqa: UP045
) -> None:
    """Patient-level, label-stratified split into train/val/test (writes a new card)."""
    from synthfm.config import validate_config
    from synthfm.data.splits import SplitConfig, split_card

    try:
        parts = [float(x) for x in ratios.split(",")]
    except ValueError:
        raise SynthfmError(f"--ratios {ratios!r} is not three numbers", "write e.g. --ratios 0.7,0.1,0.2") from None
    cfg = validate_config(SplitConfig, {"ratios": parts, "stratify": stratify, "seed": seed,
                                        "keep": keep.split(",") if keep else []}, "command-line options")
    console.print(f"wrote card [bold]{split_card(card, out, cfg)}[/]")


@app.command("inspect")
def inspect_cmd(
    card: Annotated[Path, typer.Argument(help="Card folder or YAML")],
    sample: Annotated[int, typer.Option(help="Images to decode (0 = all)")] = 200,
) -> None:
    """Validate a card and print counts per split and label, metadata, image sizes and problems."""
    from synthfm.data.inspect import inspect_card

    rep = inspect_card(card, sample)
    console.print(f"[bold]{rep.name}[/] ({rep.modality}): {rep.rows} images; splits {rep.splits}")
    for task, per in rep.labels.items():
        t = Table(title=f"task {task}")
        t.add_column("split")
        classes = list(next(iter(per.values())))
        for c in classes:
            t.add_column(c, justify="right")
        for split, counts in per.items():
            t.add_row(split, *[str(counts[c]) for c in classes])
        console.print(t)
    for name, summary in rep.metadata.items():
        console.print(f"metadata [bold]{name}[/]: {summary}")
    console.print(f"images checked: {rep.images}")
    for p in rep.problems:
        colour = "red" if p.severity == "error" else "yellow"
        console.print(f"[{colour}]{p.severity}[/] " + escape(f"{p.where}: {p.message}" + (f" (fix: {p.fix})" if p.fix
                                                                                            else "")), soft_wrap=True)
    if rep.errors:
        raise typer.Exit(2)
    console.print("[green]card OK[/]" + (f" with {len(rep.problems)} warning(s)" if rep.problems else ""))
