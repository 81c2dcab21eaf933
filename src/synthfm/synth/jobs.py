"""Pipeline job kinds of the synth stage: phantoms (in the data section) and generation from a trained generator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from synthfm.config import validate_config
from synthfm.data.jobs import card_out
from synthfm.jobs import JobKinds, Kind, model_kind
from synthfm.synth.writer import PhantomConfig


def _phantom_run(cfg: PhantomConfig, out: Path) -> dict[str, Any]:
    """Render phantoms into the job folder."""
    from synthfm.synth.writer import render_phantom

    render_phantom(out, cfg)
    return {"images": cfg.n}

def _generate_validate(raw: Any, where: str) -> BaseModel:
    """`synthfm synth generate`'s config."""
    from synthfm.synth.diffusion.config import GenerateConfig

    return validate_config(GenerateConfig, raw, where)

def _generate_run(cfg: Any, out: Path) -> dict[str, Any]:
    """Generate the synthetic card into the job folder (resumes at the first missing shard)."""
    from synthfm.synth.diffusion.generate import generate

    return generate(cfg, out)


JOB_KINDS: JobKinds = {
    "data": {"phantom": Kind(model_kind(PhantomConfig), _phantom_run, card_out, help="render fundus / CXR phantoms")},
    "synth": {"generate": Kind(_generate_validate, _generate_run, card_out,
                               lambda cfg: [cfg.generator] + ([cfg.target.card] if cfg.target else []),
                               help="generate a synthetic card to a target distribution of conditions")},
}
