"""Command functions for `synthfm adapt`, `compare`, `predict`, `export` and `efficiency checkpoints` (cli.py mounts
them)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from synthfm.adapt.config import AdaptConfig
from synthfm.adapt.experiment import run_experiment
from synthfm.config import load_config
from synthfm.evaluate.commands import evaluate_runs, show
from synthfm.evaluate.results import compare, summary_table
from synthfm.io import atomic_path


def show_probes(out: str | Path) -> None:
    """A probe experiment's every readout x pooling (AUROC over seeds) and the pooling chosen on validation."""
    from synthfm.evaluate.probes import choose_pool, read_probes

    found = read_probes(out)
    if found is None:
        return
    probes, val_split = found
    table = summary_table(probes[probes["metric"] == "auroc"], by=["readout", "pool", "fraction", "split"])
    show(table[["readout", "pool", "fraction", "split", "n", "mean", "ci_low", "ci_high"]],
         "AUROC of every readout and pooling (probes.csv)")
    show(choose_pool(probes, val_split), f"pooling chosen by mean {val_split} AUROC (pool_choice.csv)")


def evaluate_command(runs: str | Path | list[Path], metric: str = "auroc", config: Path | None = None,
                     reference: str | None = None) -> int:
    """Mean and CIs of a metric, fairness tables and label curves of finished experiments (see evaluate_runs)."""
    return evaluate_runs([Path(runs)] if isinstance(runs, (str, Path)) else list(runs), metric, config, reference)


def predict_cli(
    model_dir: Annotated[Path, typer.Argument(help="Adaptation run or experiment, or a 'synthfm export' folder")],
    inputs: Annotated[Path, typer.Argument(help="Dataset card (folder or YAML), or a folder of images / DICOM")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for predictions.csv (and gradcam/)")],
    gradcam: Annotated[bool, typer.Option("--gradcam", help="Also write Grad-CAM overlays of the predicted class")]
    = False,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass")] = 16,
) -> None:
    """Predict new images with an adapted model: probabilities per class, predicted label, id and path."""
    from synthfm.adapt.predict import predict

    show_path("predictions", predict(model_dir, inputs, out, gradcam, batch_size))


def export_cli(
    model_dir: Annotated[Path, typer.Argument(help="Adaptation run or experiment (or a saved encoder, with --onnx)")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder (default RUN/export)")] = None,  # noqa: UP045
    onnx: Annotated[bool, typer.Option("--onnx", help="Also write model.onnx, checked against PyTorch")] = False,
    atol: Annotated[float, typer.Option(help="ONNX check: largest allowed absolute difference of the outputs")]
    = 1e-4,
) -> None:
    """A plain-timm classifier folder (weights, config.json, README.md model card), optionally with ONNX."""
    from synthfm.adapt.export import export_model

    show_path("model", export_model(model_dir, out, onnx, atol))


def show_path(what: str, path: Path) -> None:
    """Print where a command wrote its result."""
    from rich.console import Console

    Console(soft_wrap=True).print(f"{what}: [bold]{path}[/]", highlight=False)


def checkpoints_cmd(
    pretrain_run: Annotated[Path, typer.Argument(help="Pretraining run directory (its checkpoints/step_*)")],
    config: Annotated[Path, typer.Argument(help="Adaptation YAML; its 'encoder' is replaced by each checkpoint")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (resumable)")],
) -> None:
    """Downstream score vs pretraining step: adapt from every checkpoint of a pretraining run."""
    from synthfm.adapt.checkpoints import checkpoint_curve

    curve = checkpoint_curve(pretrain_run, load_config(AdaptConfig, config), out)
    show(curve[curve["metric"] == "auroc"], f"downstream AUROC vs pretraining step (table: {out})")


def adapt_cli(
    config: Annotated[Path, typer.Argument(help="Adaptation YAML (card, task, encoder, policy, seeds, fractions)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Experiment folder (resumes finished seeds)")],
) -> None:
    """Fine-tune or linear-probe an encoder over every label fraction x seed; print test AUROC mean and CI."""
    results = run_experiment(load_config(AdaptConfig, config), out)
    show(summary_table(results[results["metric"] == "auroc"]))
    show_probes(out)


def compare_cli(
    run_a: Annotated[Path, typer.Argument(help="Experiment A")],
    run_b: Annotated[Path, typer.Argument(help="Experiment B")],
    metric: Annotated[str, typer.Option(help="Metric to compare")] = "auroc",
    split: Annotated[str, typer.Option(help="Split to compare")] = "test",
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the table as CSV")] = None,  # noqa: UP045
) -> None:
    """Paired t-tests by seed of A vs B per fraction, Holm-corrected."""
    table = compare(run_a, run_b, metric=metric, split=split)
    show(table)
    if out is not None:
        with atomic_path(out, ".csv") as tmp:
            table.to_csv(tmp, index=False)
