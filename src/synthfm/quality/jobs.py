"""Pipeline job kind of the quality stage: the gate of a synthetic card against a real one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from synthfm.config import StrictModel, check_block, validate_config
from synthfm.jobs import JobKinds, Kind, model_kind


class QualityJob(StrictModel):
    """The quality and privacy gate of a synthetic card against a real one; a failed gate stops the pipeline."""

    synthetic: str = Field(description="synthetic card, usually ${synth.<job>}")
    real: str = Field(description="real card, usually ${data.<job>}")
    config: dict[str, Any] = Field(default_factory=dict, description="QualityConfig keys (spaces, gate, ...)")

    @field_validator("config")
    @classmethod
    def _quality_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        """QualityConfig keys, checked when the pipeline is planned."""
        from synthfm.quality.config import QualityConfig

        return check_block(QualityConfig, value)

def _quality_run(cfg: QualityJob, out: Path) -> dict[str, Any]:
    """Run every check, write the tables, then apply the gate (the domain encoder cached in the pipeline's root)."""
    from synthfm.quality.config import QualityConfig
    from synthfm.quality.run import run_quality

    qcfg = validate_config(QualityConfig, cfg.config, "quality.config")
    if qcfg.domain.cache_dir is None:
        qcfg = qcfg.model_copy(update={"domain": qcfg.domain.model_copy(update={"cache_dir": str(out.parent.parent
                                                                                                / "cache")})})
    summary = run_quality(cfg.synthetic, cfg.real, qcfg, out)
    return {"verdict": summary.get("verdict")}


JOB_KINDS: JobKinds = {"quality": {
    "gate": Kind(model_kind(QualityJob), _quality_run, inputs=lambda cfg: [cfg.synthetic, cfg.real],
                 help="fidelity, memorisation audit, label and metadata checks, gate"),
}}
