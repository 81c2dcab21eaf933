"""Pipeline job kinds of the pretrain stage: self-supervised pretraining, and the generator (the engine's diffusion
objective, listed in the synth section)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from synthfm.jobs import JobKinds, Kind
from synthfm.pretrain.config import PretrainConfig, pretrain_config


def _pretrain_inputs(cfg: PretrainConfig) -> list[str]:
    """Card sources of every curriculum stage (phantom and RaSD are generated)."""
    return [s.source for st in cfg.stages for s in st.sources if s.source not in ("phantom", "rasd")]

def _pretrain_run(cfg: PretrainConfig, out: Path) -> dict[str, Any]:
    """Pretrain in the job folder (the engine resumes an interrupted run)."""
    from synthfm.pretrain.engine import pretrain

    return pretrain(cfg, out)

def _generator_validate(raw: Any, where: str) -> BaseModel:
    """A pretraining config whose objective is the diffusion generator."""
    from synthfm.errors import SynthfmError

    cfg = pretrain_config({"objective": "diffusion", **(raw or {})}, where)
    if cfg.objective != "diffusion":
        raise SynthfmError(f"{where}: a generator job needs objective 'diffusion', got {cfg.objective!r}",
                           "drop the objective key, or move the job to the pretrain stage")
    return cfg


JOB_KINDS: JobKinds = {
    "synth": {"generator": Kind(_generator_validate, _pretrain_run, lambda cfg, d: d / "generator", _pretrain_inputs,
                                help="train a conditional diffusion generator on cards")},
    "pretrain": {"pretrain": Kind(pretrain_config, _pretrain_run, lambda cfg, d: d / "encoder", _pretrain_inputs,
                                  help="self-supervised pretraining (MAE, DINOv2, RaSD)")},
}
