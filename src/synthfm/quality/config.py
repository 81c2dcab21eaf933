"""The quality gate's config: feature spaces, the four checks and the thresholds, with defaults in code."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from synthfm.config import StrictModel, check_block
from synthfm.train.classifier_config import ClassifierConfig

DOMAIN = "domain"


class SpaceConfig(StrictModel):
    """A feature space: the domain encoder (default), one of our encoders, or Inception / DINOv2 local weights."""

    kind: Literal["synthfm", "inception", "dinov2"] = "synthfm"
    encoder: str = Field(DOMAIN, description="synthfm: 'domain' (an encoder fine-tuned on the real card, trained "
                         "and cached by the gate, see `domain`), a save_pretrained dir, or 'random:<backbone>' "
                         "(an untrained space, only when asked for; labelled random)")
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
    crop_grid: int = Field(5, ge=1, description="crop offsets per axis in the retrieval index")
    bands: list[tuple[float, float]] = Field(default_factory=lambda: [(0.0, 1.0), (1.0, 2.0), (1.0, 4.0)],
                                             min_length=1, description="band-passes (Gaussian sigmas in px at "
                                             "pixel_size); each is matched and calibrated on its own")
    background: float = Field(0.3, ge=0, lt=1, description="near-black background: below this fraction of the "
                              "way from the darkest to the mean level")
    margin: int = Field(4, ge=0, description="template border in px: shifts searched at scale 1")
    refine_scales: list[float] = Field(default_factory=lambda: [round(0.8 + 0.025 * i, 3) for i in range(8)],
                                       description="crop scales searched again for each image's best candidate "
                                       "(empty: no refinement)")
    subpixel: bool = Field(True, description="refinement also tries the query moved by half a pixel")
    shortlist: int = Field(12, ge=2, description="candidates verified per image; scores are best minus the rest")
    calibration_quantile: float = Field(0.99, gt=0, le=1, description="of held-out real similarities per band, "
                                       "or scores in the feature view (duplicates left "
                                       "out); a robust quantile, so one odd real pair cannot blind the audit")
    calibration_margin: float = Field(0.05, ge=0, description="added to that quantile")
    duplicate_similarity: float = Field(0.98, gt=0, le=1, description="a held-out real image this close (pixel "
                                        "similarity, any band) to a training image is a real-vs-real duplicate "
                                        "pair: left out of the calibration and reported in real_duplicates.csv")
    exact_similarity: float = Field(0.99, gt=0, le=1, description="pixel similarity (any band) at which a "
                                    "synthetic image is flagged whatever the calibration (exact, near-exact copies)")
    min_similarity_quantile: float = Field(0.5, ge=0, le=1, description="feature view: a flag also needs a "
                                           "best similarity at least this quantile of the held-out real images' "
                                           "best similarities")
    pixel_floor_quantile: float = Field(0.5, ge=0, le=1, description="pixel view: a flag by the band-mean score "
                                        "(best minus the rest of the shortlist) also needs a band-mean similarity "
                                        "of at least this quantile of the held-out real images'")
    heldout_fraction: float = Field(0.2, gt=0, lt=1, description="real rows held out when the card has no split")
    flag_on: list[Literal["pixel", "feature"]] = Field(default_factory=lambda: ["pixel", "feature"])
    chunk: int = Field(512, ge=1, description="rows per search block (memory bound)")
    thumbnails: int = Field(24, ge=0, description="pairs in near_copies.png")


class LabelCheckConfig(StrictModel):
    """A classifier trained on the real card (train/trainer.py) re-checks every synthetic label."""

    enabled: bool = True
    tasks: list[str] = Field(default_factory=list, description="real task names; default: all shared tasks")
    task_map: dict[str, str] = Field(default_factory=dict, description="real task name -> synthetic task name")
    adapt: dict[str, Any] = Field(default_factory=dict,
                                  description="ClassifierConfig keys (encoder, policy, epochs, ...); card/task are set")

    @field_validator("adapt")
    @classmethod
    def _adapt_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        """ClassifierConfig keys, checked with the config (card and task are the real card's, set later)."""
        return check_block(ClassifierConfig, value, card="real card", task="task", encoder="the space's encoder")
    min_prob: float | None = Field(None, gt=0, lt=1, description="keep if P(given) >= this; default: argmax agrees")
    filtered_card: bool = True


class MetadataConfig(StrictModel):
    """Synthetic vs real label and metadata distributions, and metadata predicted from the images."""

    enabled: bool = True
    fields: list[str] = Field(default_factory=list, description="card metadata fields; default: all shared")
    min_per_label: int = Field(5, ge=2)
    predict: bool = True
    max_train: int = Field(20_000, ge=10, description="real rows used to fit the age / sex predictors")


class DomainConfig(StrictModel):
    """The default feature space: an encoder fine-tuned on the real card's task by the classifier trainer.

    The gate trains it when a space names `encoder: domain` and caches it under `cache_dir/domain/<key>`, the
    key hashing the real card (its card file and manifest) and these settings, so a second call reuses it.
    """

    start: str = Field("random:vit_tiny_p8_64", description="encoder fine-tuned: 'random:<backbone>' or a "
                       "save_pretrained dir (e.g. an encoder pretrained on the real training split)")
    backbone_overrides: dict[str, Any] = Field(default_factory=dict, description="timm kwargs for random:")
    image_size: int | None = Field(None, ge=8, description="default: the encoder's image size")
    task: str | None = Field(None, description="real task it learns; default: the card's first single-label task")
    epochs: int = Field(30, ge=1)
    warmup_epochs: float = Field(3, ge=0)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    seed: int = 0
    cache_dir: str | None = Field(None, description="default: $SYNTHFM_CACHE, else ~/.cache/synthfm")


class BaselineConfig(StrictModel):
    """The real-vs-real pair every synthetic metric is judged against: reference vs a held-out real split."""

    min_heldout: int = Field(10, ge=2, description="fewest held-out real images the baseline accepts")
    min_reference: int = Field(10, ge=2, description="fewest real reference images")


DEFAULT_AT_MOST: dict[str, float] = {"near_copies": 0.0, "FD_ratio": 3.0, "sharpness_ratio": 2.0}
DEFAULT_AT_LEAST: dict[str, float] = {"precision_rel": 0.5, "coverage_rel": 0.5, "label_agreement_rel": 0.8,
                                      "sharpness_ratio": 0.5}


class GateConfig(StrictModel):
    """Thresholds: a metric name (or a family such as 'FD', matching FD_<space>) -> bound.

    With `defaults` the bounds of DEFAULT_AT_MOST / DEFAULT_AT_LEAST (metrics relative to the real held-out
    pair) apply to every family that was computed; `at_most` / `at_least` add bounds or override them, and a
    null bound removes a default.
    """

    defaults: bool = True
    at_most: dict[str, float | None] = Field(default_factory=dict)
    at_least: dict[str, float | None] = Field(default_factory=dict)
    stop_on_fail: bool = True

    def bounds(self) -> dict[str, tuple[dict[str, float], set[str]]]:
        """Per bound ('at_most', 'at_least'): {key: threshold}, and the keys that are defaults (may name nothing)."""
        out = {}
        for bound, given, default in (("at_most", self.at_most, DEFAULT_AT_MOST),
                                      ("at_least", self.at_least, DEFAULT_AT_LEAST)):
            merged = {**(default if self.defaults else {}), **given}
            table = {k: v for k, v in merged.items() if v is not None}
            out[bound] = (table, {k for k in table if k not in given})
        return out


class QualityConfig(StrictModel):
    """Everything `synthfm quality` does; YAML holds only what differs."""

    spaces: list[SpaceConfig] = Field(default_factory=lambda: [SpaceConfig()], min_length=1)
    reference_split: str | None = Field(None, description="real rows for fidelity; default: every row not held "
                                        "out (the card's train split)")
    domain: DomainConfig = Field(default_factory=DomainConfig)
    baseline: BaselineConfig = Field(default_factory=BaselineConfig)
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
