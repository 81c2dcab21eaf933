"""`synthfm analyze ...`: morphology, latent maps, key metadata and Grad-CAM (a Typer sub-app, mounted in cli)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from synthfm.config import read_yaml, validate_config

app = typer.Typer(no_args_is_help=True, help="Morphology, latent maps, key metadata, Grad-CAM.")


def _config(model: type, yaml_path: Path | None, given: dict[str, Any]) -> Any:
    """A config from an optional YAML file with command-line values (those set) on top."""
    base = read_yaml(yaml_path) if yaml_path else {}
    base = {**(base or {}), **{k: v for k, v in given.items() if v is not None}}
    return validate_config(model, base, str(yaml_path) if yaml_path else "command-line options")


ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="YAML with more settings")]  # noqa: UP045
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Run directory (resumes if interrupted)")]


@app.command("morphology")
def morphology_cmd(
    card: Annotated[Path, typer.Argument(help="Card folder or YAML")],
    out: OutOpt,
    segmenter: Annotated[Optional[str], typer.Option(help="sato | frangi | unet")] = None,  # noqa: UP045
    size: Annotated[Optional[int], typer.Option(help="Longest image side analysed (default 512)")] = None,  # noqa: UP045
    split: Annotated[Optional[str], typer.Option(help="Only this split")] = None,  # noqa: UP045
    limit: Annotated[Optional[int], typer.Option(help="Only the first N rows")] = None,  # noqa: UP045
    config: ConfigOpt = None,
) -> None:
    """Vessel, optic disc and cup indices of every image of a card into one table (Parquet + CSV)."""
    from synthfm.analyze.morphology import MorphologyConfig, run_morphology

    cfg = _config(MorphologyConfig, config, {"card": str(card), "segmenter": segmenter, "size": size,
                                             "split": split, "limit": limit})
    typer.echo(f"morphology table: {run_morphology(cfg, out)}")


@app.command("latent")
def latent_cmd(
    cards: Annotated[list[Path], typer.Argument(help="One or more cards")],
    encoder: Annotated[str, typer.Option(help="Encoder folder, backbone name, random:<name> or a file")],
    out: OutOpt,
    backbone: Annotated[Optional[str], typer.Option(help="Backbone of a checkpoint file")] = None,  # noqa: UP045
    n: Annotated[Optional[int], typer.Option(help="Images per card at most (default 5000)")] = None,  # noqa: UP045
    config: ConfigOpt = None,
) -> None:
    """Encoder features -> t-SNE and UMAP maps coloured by source, label and each metadata field."""
    from synthfm.analyze.latent import LatentConfig, run_latent

    cfg = _config(LatentConfig, config, {"cards": [str(c) for c in cards], "encoder": encoder,
                                         "backbone": backbone, "n": n})
    typer.echo(f"latent points: {run_latent(cfg, out)}")


@app.command("keymeta")
def keymeta_cmd(
    out: OutOpt,
    morphology: Annotated[Optional[list[Path]], typer.Option(help="Morphology run or table")] = None,  # noqa: UP045
    latent: Annotated[Optional[Path], typer.Option(help="Latent run")] = None,  # noqa: UP045
    field: Annotated[Optional[list[str]], typer.Option(help="Metadata field (default: all)")] = None,  # noqa: UP045
    config: ConfigOpt = None,
) -> None:
    """Rank metadata fields by latent separability and stratified Kruskal-Wallis tests of morphology."""
    import pandas as pd

    from synthfm.analyze.keymeta import KeyMetaConfig, run_keymeta

    cfg = _config(KeyMetaConfig, config, {"morphology": [str(m) for m in morphology] if morphology else None,
                                          "latent": str(latent) if latent else None, "fields": field})
    path = run_keymeta(cfg, out)
    typer.echo(pd.read_csv(path).to_string(index=False))


@app.command("gradcam")
def gradcam_cmd(
    adapt_run: Annotated[Path, typer.Argument(help="One finished adaptation run folder")],
    out: OutOpt,
    card: Annotated[Optional[Path], typer.Option(help="Card (default: the adapted one)")] = None,  # noqa: UP045
    split: Annotated[Optional[str], typer.Option(help="Split (default test)")] = None,  # noqa: UP045
    n: Annotated[Optional[int], typer.Option(help="Images (default 16)")] = None,  # noqa: UP045
    config: ConfigOpt = None,
) -> None:
    """Grad-CAM heat maps of an adapted ViT classifier: overlays, a grid and pointing-game scores."""
    from synthfm.analyze.gradcam import GradCAMConfig, run_gradcam

    cfg = _config(GradCAMConfig, config, {"adapt_run": str(adapt_run), "card": str(card) if card else None,
                                          "split": split, "n": n})
    typer.echo(f"Grad-CAM scores: {run_gradcam(cfg, out)}")
