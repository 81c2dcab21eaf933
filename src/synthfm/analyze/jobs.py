"""Pipeline job kinds of the analyze stage: morphology, latent maps, key metadata, Grad-CAM, the vessel study."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from synthfm.config import validate_config
from synthfm.jobs import JobKinds, Kind

STUDY_FILE = "vessel_study.json"  # the vessel study's verdict and table, read by the report


def _analysis_kind(module: str, model: str, func: str, inputs: Callable[[Any], list[str]], help: str) -> Kind:
    """A kind whose config model and run function live in synthfm.analyze.<module> (imported on use)."""
    import importlib

    def validate(raw: Any, where: str) -> BaseModel:
        """Validate against the analysis module's own config model."""
        return validate_config(getattr(importlib.import_module(f"synthfm.analyze.{module}"), model), raw, where)

    def run(cfg: BaseModel, out: Path) -> dict[str, Any]:
        """Run the analysis into the job folder."""
        getattr(importlib.import_module(f"synthfm.analyze.{module}"), func)(cfg, out)
        return {}

    return Kind(validate, run, inputs=inputs, help=help)

JOB_KINDS: JobKinds = {"analyze": {
    "morphology": _analysis_kind("morphology", "MorphologyConfig", "run_morphology", lambda cfg: [cfg.card],
                                 "vessel segmentation and retinal morphology indices per image"),
    "latent": _analysis_kind("latent", "LatentConfig", "run_latent",
                             lambda cfg: list(cfg.cards) + ([] if ":" in cfg.encoder else [cfg.encoder]),
                             "t-SNE / UMAP of encoder features coloured by source, labels, metadata"),
    "keymeta": _analysis_kind("keymeta", "KeyMetaConfig", "run_keymeta",
                              lambda cfg: list(cfg.morphology) + ([cfg.latent] if cfg.latent else []),
                              "which metadata fields matter (stratified Kruskal-Wallis, separability)"),
    "gradcam": _analysis_kind("gradcam", "GradCAMConfig", "run_gradcam", lambda cfg: [cfg.adapt_run],
                              "Grad-CAM heat maps of an adapted classifier, pointing game"),
    "vessel_study": _analysis_kind("vessel_study", "VesselStudyConfig", "run_vessel_study", lambda cfg: [cfg.card],
                                   "vessel U-Net with vs without phantom pretraining, Sato, second observer"),
}}
