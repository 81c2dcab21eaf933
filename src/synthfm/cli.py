"""The `synthfm` command: one sub-command group per pipeline stage, thin over the package functions."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from synthfm import __version__
from synthfm.errors import SynthfmError
from synthfm.synth.registry import GENERATORS

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(name="synthfm", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Medical-imaging foundation models with synthetic data, end to end.")
data_app = typer.Typer(no_args_is_help=True, help="Datasets: import, prepare, split, inspect.")
app.add_typer(data_app, name="data")
pretrain_app = typer.Typer(no_args_is_help=True,
                           help="Self-supervised pretraining: MAE, DINOv2, RaSD prototype disentangling.")
app.add_typer(pretrain_app, name="pretrain")
synth_app = typer.Typer(no_args_is_help=True, help="Generators: phantoms; conditional diffusion (train, generate).")
app.add_typer(synth_app, name="synth")


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False) -> None:
    """synthfm: medical-imaging foundation models with synthetic data."""


@app.command()
def version() -> None:
    """Print the synthfm version."""
    console.print(__version__)


@data_app.command("import-npz")
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


@data_app.command("prepare")
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


@data_app.command("split")
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


@data_app.command("inspect")
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


@app.command("run")
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


@app.command("plan")
def plan_cmd(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline YAML (e.g. configs/experiments/retinamnist.yaml)")],
    device: Annotated[str, typer.Option(help="cpu (measured rates), h100 or a100 (assumed until device.json)")] = "cpu",
    json_out: Annotated[bool, typer.Option("--json", help="Print the plan as JSON")] = False,
) -> None:
    """Estimate FLOPs, peak memory and wall time of every job of a pipeline on a device; warn when one won't fit."""
    from synthfm.plan import plan_cli

    plan_cli(pipeline, device, json_out)


@app.command("report")
def report_cmd(
    root: Annotated[Path, typer.Argument(help="Pipeline run root (the folder holding pipeline.json)")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="HTML file (default ROOT/report.html)")] = None,  # noqa: UP045
    title: Annotated[Optional[str], typer.Option(help="Report title")] = None,  # noqa: UP045
) -> None:
    """Write the self-contained HTML report of a pipeline run."""
    from synthfm.report.html import render_report

    console.print(f"report: [bold]{render_report(root, out, title)}[/]")


@pretrain_app.command("run")
def pretrain_run_cmd(
    config: Annotated[Path, typer.Argument(help="Pretraining YAML (optionally 'recipe: NAME' plus overrides)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory (resumes if interrupted)")],
) -> None:
    """Pretrain an encoder over the config's curriculum; `accelerate launch -m synthfm pretrain run` for GPUs."""
    import os

    from synthfm.pretrain.config import load_pretrain_config
    from synthfm.pretrain.engine import pretrain

    summary = pretrain(load_pretrain_config(config), out)
    if os.environ.get("RANK", "0") == "0":
        console.print(f"pretraining finished: {summary}; encoder in [bold]{out / 'encoder'}[/]", soft_wrap=True)


@pretrain_app.command("export")
def pretrain_export_cmd(
    run: Annotated[Path, typer.Argument(help="Pretraining run directory")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder (default RUN/export)")] = None,  # noqa: UP045
) -> None:
    """Save the encoder of a run's latest checkpoint (safetensors + config) for adaptation."""
    from synthfm.pretrain.engine import export_encoder

    console.print(f"encoder saved to [bold]{export_encoder(run, out)}[/]")


@pretrain_app.command("recipes")
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


@app.command("adapt")
def adapt_cmd(
    config: Annotated[Path, typer.Argument(help="Adaptation YAML (card, task, encoder, policy, seeds, fractions)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Experiment folder (resumes finished seeds)")],
) -> None:
    """Fine-tune or linear-probe an encoder over every label fraction x seed; print test AUROC mean and CI."""
    from synthfm.adapt.commands import adapt_command

    adapt_command(config, out)


@app.command("compare")
def compare_cmd(
    run_a: Annotated[Path, typer.Argument(help="Experiment A")],
    run_b: Annotated[Path, typer.Argument(help="Experiment B")],
    metric: Annotated[str, typer.Option(help="Metric to compare")] = "auroc",
    split: Annotated[str, typer.Option(help="Split to compare")] = "test",
    out: Annotated[Optional[Path], typer.Option(help="Write the table as CSV")] = None,  # noqa: UP045
) -> None:
    """Paired t-tests by seed of A vs B per fraction, Holm-corrected."""
    from synthfm.adapt.commands import compare_command

    compare_command(run_a, run_b, metric, split, out)


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


def given_options(ctx: typer.Context, **values: object) -> dict[str, object]:
    """The options typed on the command line (not left at their defaults), under their config keys."""
    sources = {key: ctx.get_parameter_source(OPTION_PARAMS.get(key, key)) for key in values}
    return {key: value for key, value in values.items()  # by name: Typer's click may be its own copy
            if getattr(sources[key], "name", None) == "COMMANDLINE"}


OPTION_PARAMS = {"format": "fmt"}  # config key -> the command's parameter name, where they differ


@synth_app.command("phantom")
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
    from synthfm.config import layer_options, read_yaml, validate_config
    from synthfm.synth.writer import PhantomConfig, render_phantom

    options = {"generator": generator, "n": n, "size": size, "seed": seed, "format": fmt}
    base = read_yaml(config) if config else options  # without a YAML every option (given or default) applies
    base = layer_options(base, given_options(ctx, **options))
    if condition:
        base["condition"] = {**base.get("condition", {}), **_parse_condition(condition)}
    if target:
        base["target"] = {**base.get("target", {}), "card": str(target)}
    cfg = validate_config(PhantomConfig, base, str(config) if config else "command-line options")
    console.print(f"wrote card [bold]{render_phantom(out, cfg)}[/]")


def _mount() -> None:
    """Commands and groups that live in their stage packages (each exposes a Typer app in commands.py)."""
    from synthfm.adapt.commands import checkpoints_cmd, export_cli, predict_cli
    from synthfm.analyze.commands import app as analyze_app
    from synthfm.consortium.commands import hub_app, site_app
    from synthfm.evaluate.commands import app as efficiency_app
    from synthfm.evaluate.commands import evaluate_cli
    from synthfm.pretrain.commands import train_cmd as generator_train_cmd
    from synthfm.quality.commands import quality as quality_cmd
    from synthfm.synth.diffusion.commands import app as diffusion_app

    app.command("evaluate")(evaluate_cli)
    app.command("quality")(quality_cmd)
    app.command("predict")(predict_cli)
    app.command("export")(export_cli)
    efficiency_app.command("checkpoints")(checkpoints_cmd)
    app.add_typer(efficiency_app, name="efficiency")
    app.add_typer(site_app, name="site")
    app.add_typer(hub_app, name="hub")
    app.add_typer(analyze_app, name="analyze")
    diffusion_app.command("train")(generator_train_cmd)
    synth_app.add_typer(diffusion_app)


_mount()


def _fail(message: str, fix: str = "", code: int = 2) -> None:
    """Print one error (never wrapped inside a path) and its fix, then exit."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    if fix:
        err_console.print(f"[bold]fix:[/] {fix}", highlight=False, soft_wrap=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app; bad input exits 2 with one clear message (traceback only with --debug)."""
    args = sys.argv[1:] if argv is None else argv
    try:
        rv = app(args=args, prog_name="synthfm", standalone_mode=False)
    except SynthfmError as err:
        if "--debug" in args:
            raise
        _fail(escape(err.message), escape(err.fix))
    except (click.exceptions.Abort, typer.Abort):
        err_console.print("aborted")
        sys.exit(130)
    except (click.exceptions.ClickException, typer.TyperException) as err:  # usage mistakes: typos, bad values
        err.show()
        sys.exit(err.exit_code)
    except OSError as err:  # disk full, permission denied, a folder where a file should be
        if "--debug" in args:
            raise
        where = f" {err.filename}" if err.filename else ""
        _fail(escape(f"cannot read or write{where}: {err.strerror or err}"),
              "free disk space, fix the permissions or the path, then run the same command again "
              "(finished work is reused)")
    if isinstance(rv, int) and rv:
        sys.exit(rv)
