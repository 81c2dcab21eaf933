"""The `synthfm` command: it only mounts the Typer apps and commands each stage owns in its commands.py."""

from __future__ import annotations

import sys
from typing import Annotated

import click
import typer
from rich.console import Console
from rich.markup import escape

from synthfm import __version__
from synthfm.errors import SynthfmError

err_console = Console(stderr=True)

app = typer.Typer(name="synthfm", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Medical-imaging foundation models with synthetic data, end to end.")


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False) -> None:
    """synthfm: medical-imaging foundation models with synthetic data."""


@app.command()
def version() -> None:
    """Print the synthfm version."""
    Console().print(__version__)


def _mount() -> None:
    """Every command and group lives in its stage package (a Typer app or command function in commands.py)."""
    from synthfm.adapt.commands import adapt_cli, checkpoints_cmd, compare_cli, export_cli, predict_cli
    from synthfm.analyze.commands import app as analyze_app
    from synthfm.consortium.commands import hub_app, site_app
    from synthfm.data.commands import app as data_app
    from synthfm.evaluate.commands import app as efficiency_app
    from synthfm.evaluate.commands import evaluate_cli
    from synthfm.pipeline.commands import run_cmd
    from synthfm.plan import plan_cli
    from synthfm.pretrain.commands import app as pretrain_app
    from synthfm.pretrain.commands import train_cmd as generator_train_cmd
    from synthfm.quality.commands import quality as quality_cmd
    from synthfm.report.commands import report_cmd
    from synthfm.synth.commands import app as synth_app
    from synthfm.synth.diffusion.commands import app as diffusion_app

    app.add_typer(data_app, name="data")
    app.add_typer(pretrain_app, name="pretrain")
    diffusion_app.command("train")(generator_train_cmd)  # synth's group; the engine trains it
    app.add_typer(synth_app, name="synth")
    app.command("run")(run_cmd)
    app.command("plan")(plan_cli)
    app.command("report")(report_cmd)
    app.command("adapt")(adapt_cli)
    app.command("compare")(compare_cli)
    app.command("evaluate")(evaluate_cli)
    app.command("quality")(quality_cmd)
    app.command("predict")(predict_cli)
    app.command("export")(export_cli)
    efficiency_app.command("checkpoints")(checkpoints_cmd)
    app.add_typer(efficiency_app, name="efficiency")
    app.add_typer(site_app, name="site")
    app.add_typer(hub_app, name="hub")
    app.add_typer(analyze_app, name="analyze")


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
