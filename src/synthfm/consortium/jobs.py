"""Pipeline job kind of the consortium: the simulated consortium, whose composed card feeds later jobs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from synthfm.config import validate_config
from synthfm.data.card import CARD_FILE
from synthfm.jobs import JobKinds, Kind


def _consortium_validate(raw: Any, where: str) -> BaseModel:
    """A consortium config inline, or the path of one (e.g. configs/consortium.yaml)."""
    from synthfm.consortium.simulate import ConsortiumConfig, load_consortium_config

    return load_consortium_config(raw) if isinstance(raw, str) else validate_config(ConsortiumConfig, raw, where)

def _consortium_run(cfg: BaseModel, out: Path) -> dict[str, Any]:
    """Sites -> signed bundles -> hub verification -> composed card -> pretraining -> per-site evaluation."""
    from synthfm.consortium.simulate import run_consortium

    summary = run_consortium(cfg, out)
    return {"composed_card": summary["composed_card"], "evaluation": summary.get("evaluation")}


JOB_KINDS: JobKinds = {"synth": {
    "consortium": Kind(_consortium_validate, _consortium_run, lambda cfg, d: d / "hub" / "composed" / CARD_FILE,
                       help="simulated consortium: site bundles -> hub -> composed pretraining card"),
}}
