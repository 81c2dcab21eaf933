"""Pipeline job kinds of the data stage: an existing card (checked), `data prepare`, `data split`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from synthfm.config import StrictModel, validate_config
from synthfm.data.card import CARD_FILE, card_yaml
from synthfm.data.preprocess import PrepareConfig
from synthfm.data.splits import SplitConfig
from synthfm.io import atomic_write_json
from synthfm.jobs import JobKinds, Kind, model_kind


class CardJob(StrictModel):
    """An existing dataset card, checked (counts, labels, files of a sample) and passed on."""

    path: str = Field(description="card folder or dataset.yaml")
    sample: int = Field(50, ge=0, description="images decoded by the check (0 = all)")

def _card_validate(raw: Any, where: str) -> BaseModel:
    """A bare path is shorthand for {path: ...}."""
    return validate_config(CardJob, {"path": raw} if isinstance(raw, str) else raw, where)

def _card_run(cfg: CardJob, out: Path) -> dict[str, Any]:
    """Inspect the card and keep the report; errors in the card stop the pipeline."""
    from synthfm.data.inspect import inspect_card
    from synthfm.errors import SynthfmError

    rep = inspect_card(card_yaml(cfg.path), cfg.sample)
    problems = [{"severity": p.severity, "where": p.where, "message": p.message} for p in rep.problems]
    atomic_write_json(out / "inspect.json", {"rows": rep.rows, "splits": rep.splits, "labels": rep.labels,
                                             "problems": problems})
    if rep.errors:
        first = next(p for p in rep.problems if p.severity == "error")
        raise SynthfmError(f"card {cfg.path} has {len(rep.errors)} error(s), first: {first.where}: {first.message}",
                           f"run `synthfm data inspect {cfg.path}` and fix what it lists")
    return {"rows": rep.rows, "splits": rep.splits}

class PrepareJob(PrepareConfig):
    """`data prepare` of an earlier card: field-of-view crop, pad, resize, folder or shards."""

    input: str = Field(description="card to prepare, usually ${data.<job>}")

class SplitJob(SplitConfig):
    """`data split` of an earlier card: patient-level, stratified train/val/test."""

    input: str = Field(description="card to split, usually ${data.<job>}")

def _prepare_run(cfg: PrepareJob, out: Path) -> dict[str, Any]:
    """Prepare the input card into the job folder."""
    from synthfm.data.prepare import prepare_card

    prepare_card(cfg.input, out, PrepareConfig(**cfg.model_dump(exclude={"input"})))
    return {"size": cfg.size, "format": cfg.format}

def _split_run(cfg: SplitJob, out: Path) -> dict[str, Any]:
    """Split the input card into the job folder."""
    from synthfm.data.splits import split_card

    split_card(cfg.input, out, SplitConfig(**cfg.model_dump(exclude={"input"})))
    return {"ratios": list(cfg.ratios)}

def card_out(cfg: Any, d: Path) -> Path:
    """Jobs that write a card: it lies in the job folder."""
    return d / CARD_FILE


JOB_KINDS: JobKinds = {"data": {
    "card": Kind(_card_validate, _card_run, lambda cfg, d: card_yaml(cfg.path), lambda cfg: [str(card_yaml(cfg.path))],
                 help="an existing dataset card"),
    "prepare": Kind(model_kind(PrepareJob), _prepare_run, card_out, lambda cfg: [cfg.input],
                    help="preprocess a card (crop, resize, shards)"),
    "split": Kind(model_kind(SplitJob), _split_run, card_out, lambda cfg: [cfg.input],
                  help="patient-level stratified split"),
}}
