"""The quality gate's config: feature spaces, the four checks and the thresholds, with defaults in code."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from synthfm.config import StrictModel


class SpaceConfig(StrictModel):
    """A feature space: one of our encoders, or Inception / DINOv2 weights from a local file."""

    kind: Literal["synthfm", "inception", "dinov2"] = "synthfm"
    encoder: str = Field("random:vit_tiny_p8_64",
                         description="synthfm: a save_pretrained dir or 'random:<backbone>' (tests only)")
    weights: str | None = Field(None, description="inception / dinov2: local weights file (.pth or .safetensors)")
    backbone: str = Field("vit_large_p14_224", description="dinov2: registry backbone the weights fit")
    backbone_overrides: dict[str, Any] = Field(default_factory=dict, description="timm kwargs (random:/dinov2)")
    image_size: int | None = Field(None, ge=8, description="default: the encoder's image size (Inception: 299)")
    seed: int = Field(0, description="random:<backbone> initialisation seed")
    name: str | None = Field(None, description="metric suffix; default synthfm-<name>, inception, dinov2-<backbone>")

    @model_validator(mode="after")
    def _weights_for_foreign(self) -> SpaceConfig:
        """Inception and DINOv2 need a local weights file (nothing is downloaded)."""
        if self.kind != "synthfm" and not self.weights:
            raise ValueError(f"feature space kind '{self.kind}' needs 'weights': a local file (nothing is downloaded)")
        return self


class FidelityConfig(StrictModel):
    """Fréchet distance, KID, precision/recall and density/coverage, overall and per label."""

    enabled: bool = True
    kid_subsets: int = Field(50, ge=1)
    kid_subset_size: int = Field(1000, ge=2, description="capped at the smaller set's size")
    kid_max_samples: int = Field(10_000, ge=2, description="random subsample per side held in memory for KID")
    prdc_k: int = Field(5, ge=1, description="k of the k-NN balls (Naeem et al. use 5)")
    prdc_max_samples: int = Field(10_000, ge=2, description="random subsample per side for PRDC")
    min_per_label: int = Field(10, ge=2, description="per-label metrics need this many images on both sides")
    per_label: bool = True


class MemorisationConfig(StrictModel):
    """Nearest real training neighbour of every synthetic image, by features and by robust pixel similarity."""

    enabled: bool = True
    pixel_size: int = Field(96, ge=16, description="working size of the pixel similarity")
    coarse_size: int = Field(16, ge=4, description="retrieval descriptor grid")
    crop_scales: list[float] = Field(default_factory=lambda: [0.9], description="crops (side fraction) searched")
    crop_grid: int = Field(3, ge=1, description="crop offsets per axis in the retrieval index")
    band: tuple[float, float] = Field((0.0, 1.0), description="band-pass (Gaussian sigmas in px at pixel_size)")
    background: float = Field(0.3, ge=0, lt=1, description="near-black background level (fraction of range)")
    margin: int = Field(4, ge=0, description="template border in px: shifts searched at scale 1")
    shortlist: int = Field(8, ge=2, description="candidates verified per image; scores are best minus the rest")
    calibration_quantile: float = Field(1.0, gt=0, le=1, description="of held-out real scores")
    calibration_margin: float = Field(0.05, ge=0, description="added to that quantile")
    min_similarity_quantile: float = Field(0.5, ge=0, le=1, description="a flag also needs a best similarity at "
                                           "least this quantile of the held-out real images' best similarities")
    heldout_fraction: float = Field(0.2, gt=0, lt=1, description="real rows held out when the card has no split")
    flag_on: list[Literal["pixel", "feature"]] = Field(default_factory=lambda: ["pixel", "feature"])
    chunk: int = Field(512, ge=1, description="rows per search block (memory bound)")
    thumbnails: int = Field(24, ge=0, description="pairs in near_copies.png")


class LabelCheckConfig(StrictModel):
    """A classifier trained on the real card (adaptation trainer) re-checks every synthetic label."""

    enabled: bool = True
    tasks: list[str] = Field(default_factory=list, description="real task names; default: all shared tasks")
    task_map: dict[str, str] = Field(default_factory=dict, description="real task name -> synthetic task name")
    adapt: dict[str, Any] = Field(default_factory=dict,
                                  description="AdaptConfig keys (encoder, policy, epochs, ...); card/task are set")
    min_prob: float | None = Field(None, gt=0, lt=1, description="keep if P(given) >= this; default: argmax agrees")
    filtered_card: bool = True


class MetadataConfig(StrictModel):
    """Synthetic vs real label and metadata distributions, and metadata predicted from the images."""

    enabled: bool = True
    fields: list[str] = Field(default_factory=list, description="card metadata fields; default: all shared")
    min_per_label: int = Field(5, ge=2)
    predict: bool = True
    max_train: int = Field(20_000, ge=10, description="real rows used to fit the age / sex predictors")


class GateConfig(StrictModel):
    """Thresholds: a metric name (or a family such as 'FD', matching FD_<space>) -> bound."""

    at_most: dict[str, float] = Field(default_factory=lambda: {"near_copies": 0.0})
    at_least: dict[str, float] = Field(default_factory=dict)
    stop_on_fail: bool = True


class QualityConfig(StrictModel):
    """Everything `synthfm quality` does; YAML holds only what differs."""

    spaces: list[SpaceConfig] = Field(default_factory=lambda: [SpaceConfig()], min_length=1)
    reference_split: str | None = Field(None, description="real rows for fidelity; default all")
    batch_size: int = Field(64, ge=1)
    num_workers: int = Field(0, ge=0)
    seed: int = 0
    fidelity: FidelityConfig = Field(default_factory=FidelityConfig)
    memorisation: MemorisationConfig = Field(default_factory=MemorisationConfig)
    labels: LabelCheckConfig = Field(default_factory=LabelCheckConfig)
    metadata: MetadataConfig = Field(default_factory=MetadataConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    synthetic: str = Field("", description="set by run_quality: the synthetic card")
    real: str = Field("", description="set by run_quality: the real card")
