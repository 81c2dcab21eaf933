"""Pipeline job kinds of the adapt stage: fine-tune / probe experiments, and the score-vs-checkpoint curve (listed
in the evaluate section)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from synthfm.adapt.config import AdaptConfig
from synthfm.config import StrictModel, check_block, validate_config
from synthfm.jobs import JobKinds, Kind, model_kind


def _adapt_inputs(cfg: AdaptConfig) -> list[str]:
    """The downstream card, and the encoder unless it is random init or raw pixels."""
    from synthfm.models.baselines import builds_from_scratch

    return [cfg.card] + ([] if builds_from_scratch(cfg.encoder) else [cfg.encoder])

def _adapt_run(cfg: AdaptConfig, out: Path) -> dict[str, Any]:
    """Every label fraction x seed (finished seeds are never redone)."""
    from synthfm.adapt.experiment import run_experiment

    results = run_experiment(cfg, out)
    test = results[(results["metric"] == "auroc") & (results["split"] == cfg.test_splits[0])]
    return {"runs": int(test.shape[0]), "test_auroc_mean": float(test["value"].mean())}

class CheckpointsJob(StrictModel):
    """Downstream score against pretraining step: adapt from every kept checkpoint of a pretraining job."""

    pretrain: str = Field(description="pretraining job (${pretrain.<job>}) or run folder")
    adapt: dict[str, Any] = Field(description="AdaptConfig keys; 'encoder' is set to each checkpoint")

    @field_validator("adapt")
    @classmethod
    def _adapt_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        """AdaptConfig keys (the encoder is each checkpoint's), checked when the pipeline is planned."""
        from synthfm.adapt.config import AdaptConfig

        return check_block(AdaptConfig, value, encoder="checkpoint")

def _pretrain_folder(ref: str) -> Path:
    """A pretraining job's reference is its exported encoder; the run folder is its parent."""
    path = Path(ref)
    return path.parent if path.name == "encoder" else path

def _checkpoints_run(cfg: CheckpointsJob, out: Path) -> dict[str, Any]:
    """Run checkpoint_curve into the job folder."""
    from synthfm.adapt.checkpoints import checkpoint_curve

    adapt = validate_config(AdaptConfig, {"encoder": "checkpoint", **cfg.adapt}, "checkpoints.adapt")
    curve = checkpoint_curve(_pretrain_folder(cfg.pretrain), adapt, out)
    return {"checkpoints": int(curve["pretrain_step"].nunique())}


JOB_KINDS: JobKinds = {
    "adapt": {"adapt": Kind(model_kind(AdaptConfig), _adapt_run, inputs=_adapt_inputs,
                            help="fine-tune / linear probe over fractions x seeds")},
    "evaluate": {"checkpoints": Kind(model_kind(CheckpointsJob), _checkpoints_run,
                                     inputs=lambda cfg: [str(_pretrain_folder(cfg.pretrain))],
                                     help="downstream score vs pretraining checkpoint")},
}
