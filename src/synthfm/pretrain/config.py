"""Typed pretraining configs: sources, curriculum stages, optimiser, and named recipes as base configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from synthfm.config import StrictModel, read_yaml, validate_config
from synthfm.errors import SynthfmError
from synthfm.hardware import resolve_precision
from synthfm.synth.diffusion.config import DiffusionConfig
from synthfm.train.optim import OptimConfig


class SourceConfig(StrictModel):
    """One data source of a stage: a card path, 'phantom' (rendered once, cached) or 'rasd' (on the fly)."""

    source: str = Field(description="path to a card directory or dataset.yaml, 'phantom' or 'rasd'")
    weight: float = Field(1.0, gt=0, description="mixing ratio relative to the stage's other sources")
    split: str | None = Field(None, description="card split to read (None: every row)")
    n: int = Field(256, ge=1, description="phantom: images rendered; rasd: samples per epoch")
    seed: int = Field(0, description="generator seed for phantom / rasd")


class StageConfig(StrictModel):
    """One curriculum stage: its sources and length; it starts from the previous stage's weights and optimiser."""

    name: str
    sources: list[SourceConfig] = Field(min_length=1)
    steps: int | None = Field(None, ge=1, description="optimiser steps (or give epochs)")
    epochs: float | None = Field(None, gt=0, description="passes over the stage's sources (or give steps)")
    warmup_steps: int | None = Field(None, ge=0)
    warmup_epochs: float | None = Field(None, ge=0)
    base_lr: float | None = Field(None, gt=0, description="overrides optim.base_lr in this stage")

    @model_validator(mode="after")
    def _one_length(self) -> StageConfig:
        """Exactly one of steps/epochs; at most one of warmup_steps/warmup_epochs."""
        if (self.steps is None) == (self.epochs is None):
            raise ValueError(f"stage '{self.name}': give exactly one of 'steps' or 'epochs'")
        if self.warmup_steps is not None and self.warmup_epochs is not None:
            raise ValueError(f"stage '{self.name}': give at most one of 'warmup_steps' or 'warmup_epochs'")
        return self


class MAEConfig(StrictModel):
    """Masked autoencoder: mask ratio, decoder shape, and the normalised-pixel target."""

    mask_ratio: float = Field(0.75, gt=0, lt=1)
    decoder_dim: int = Field(512, ge=8)
    decoder_depth: int = Field(8, ge=1)
    decoder_heads: int = Field(16, ge=1)
    norm_pix_loss: bool = True


class RaSDObjectiveConfig(StrictModel):
    """RaSD prototype disentangling: projection head, InfoNCE temperature over prototypes, views."""

    proj_dim: int = Field(128, ge=2)
    hidden_dim: int = Field(512, ge=2)
    temperature: float = Field(0.1, gt=0)
    include_background: bool = Field(True, description="label 0 is a region with its own prototype")
    min_coverage: float = Field(0.5, ge=0, description="patches of area a structure needs to get a prototype")
    views: Literal[1, 2] = Field(2, description="2: a second in-batch augmented view, cross-view prototypes")
    view_scale: tuple[float, float] = Field((0.5, 1.0), description="area range of the second view's crop")


class DINOConfig(StrictModel):
    """DINOv2: head shape, multi-crop, temperatures, centring, teacher momentum, masking and loss weights."""

    prototypes: int = Field(65536, ge=2, description="weight-normalised prototypes (131072 in 001)")
    hidden_dim: int = Field(2048, ge=2)
    bottleneck_dim: int = Field(384, ge=2)
    local_crops: int = Field(8, ge=0)
    local_size: int | None = Field(None, ge=8, description="local crop size (default: 96/224 of image_size)")
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.32)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
    solarize_p: float = Field(0.2, ge=0, le=1)
    student_temp: float = Field(0.1, gt=0)
    teacher_temp: float = Field(0.07, gt=0)
    warmup_teacher_temp: float = Field(0.04, gt=0)
    teacher_temp_warmup: float = Field(0.3, ge=0, le=1, description="fraction of the first stage")
    centring: Literal["centring", "sinkhorn_knopp"] = Field(
        "centring", description="teacher targets: EMA centring (DINO) or Sinkhorn-Knopp (DINOv2, 001)")
    sinkhorn_iterations: int = Field(3, ge=1)
    centre_momentum: float = Field(0.9, ge=0, lt=1)
    momentum_teacher: float = Field(0.992, ge=0, le=1)
    final_momentum: float = Field(1.0, ge=0, le=1)
    mask_probability: float = Field(0.5, ge=0, le=1, description="chance that a global crop gets masked")
    mask_ratio: tuple[float, float] = (0.1, 0.5)
    max_masked: int = Field(128, ge=0, description="most masked patches per crop (and per block)")
    min_block: int = Field(4, ge=1, description="fewest patches of one rectangular mask block")
    block_aspect: float = Field(0.3, gt=0, le=1, description="mask blocks have aspect ratio in [a, 1/a]")
    ibot_separate_head: bool = Field(False, description="patch tokens get their own head (DINOv2 option)")
    ibot_prototypes: int | None = Field(None, ge=2, description="prototypes of a separate iBOT head")
    dino_weight: float = Field(1.0, ge=0)
    ibot_weight: float = Field(1.0, ge=0)
    koleo_weight: float = Field(0.1, ge=0)


class PretrainConfig(StrictModel):
    """A pretraining run: objective, backbone, data curriculum, optimiser, checkpointing."""

    recipe: str | None = Field(None, description="named base config (see synthfm.pretrain.mae.MAE_RECIPES)")
    objective: str = Field("mae", description="a registered objective: mae, dinov2, rasd, diffusion, ... "
                                              "(synthfm.pretrain.objective)")
    backbone: str = "vit_tiny_p8_64"
    in_chans: int = Field(3, ge=1)
    backbone_overrides: dict[str, Any] = Field(default_factory=dict)
    grad_checkpointing: bool = False
    mae: MAEConfig = Field(default_factory=MAEConfig)
    rasd: RaSDObjectiveConfig = Field(default_factory=RaSDObjectiveConfig)
    dinov2: DINOConfig = Field(default_factory=DINOConfig)
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig)
    image_size: int | None = Field(None, ge=8, description="training size (default: the backbone's)")
    crop_scale: tuple[float, float] = (0.2, 1.0)
    batch_size: int = Field(32, ge=1, description="images per process per micro-batch")
    optim: OptimConfig = Field(default_factory=OptimConfig)
    stages: list[StageConfig] = Field(min_length=1)
    seed: int = 0
    checkpoint_every: int = Field(500, ge=1, description="optimiser steps between checkpoints")
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1)
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = Field(
        "auto", validate_default=True,
        description="'auto': bf16 where the device computes it natively, else fp32 ('no'); resolved when the "
                    "config is read, so the run's config.yaml records the choice (synthfm.hardware)")
    compile: Literal["auto"] | bool = Field(
        "auto", description="torch.compile the training module (inductor, in place; the first steps pay the "
                            "compile time); 'auto': CUDA runs of >= hardware.COMPILE_MIN_STEPS steps")
    num_workers: int = Field(0, ge=0)
    cache_dir: str | None = Field(None, description="where phantom sources are rendered (default: run/sources)")
    omit_when_default: ClassVar[tuple[str, ...]] = ("compile",)
    objective_blocks: ClassVar[tuple[str, ...]] = ("mae", "rasd", "dinov2", "diffusion")

    def unused_fields(self) -> tuple[str, ...]:
        """The other objectives' blocks: a run records only its own objective's settings (unless set)."""
        return tuple(b for b in self.objective_blocks if b != self.objective)

    @field_validator("objective")
    @classmethod
    def _registered(cls, value: str) -> str:
        """A registered objective (a new one is its own module plus the register_objective decorator)."""
        from synthfm.pretrain.objective import check_objective

        return check_objective(value)

    @field_validator("mixed_precision")
    @classmethod
    def _resolve_precision(cls, value: str) -> str:
        """'auto' becomes this machine's choice (an fp32 machine dumps 'no', as configs did before 'auto')."""
        return resolve_precision(value)

    @model_validator(mode="after")
    def _unique_stages(self) -> PretrainConfig:
        """Stage names are unique (they name metrics and exported encoders)."""
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        return self


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`, merging nested mappings key by key."""
    out = dict(base)
    for k, v in top.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_recipe(data: dict[str, Any], recipes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Expand `recipe: NAME` into the recipe's values with the given keys on top."""
    name = data.get("recipe")
    if name is None:
        return data
    if name not in recipes:
        raise SynthfmError(f"unknown recipe {name!r}; known: {', '.join(sorted(recipes))}", "use a listed recipe")
    return deep_merge(recipes[name], data)


def all_recipes() -> dict[str, dict[str, Any]]:
    """Every objective's named recipes in one mapping (what `synthfm pretrain recipes` lists)."""
    from synthfm.pretrain.dino import DINO_RECIPES
    from synthfm.pretrain.mae import MAE_RECIPES
    from synthfm.pretrain.rasd_objective import RASD_RECIPES

    return {**MAE_RECIPES, **RASD_RECIPES, **DINO_RECIPES}


def pretrain_config(data: dict[str, Any] | None, source: str = "config") -> PretrainConfig:
    """Validate a mapping (recipe expanded) as a PretrainConfig."""
    return validate_config(PretrainConfig, resolve_recipe(dict(data or {}), all_recipes()), source)


def load_pretrain_config(path: str | Path) -> PretrainConfig:
    """Read a pretraining YAML (with an optional `recipe:` base)."""
    data = read_yaml(path)
    if data is not None and not isinstance(data, dict):
        raise SynthfmError(f"{path} must hold a mapping of keys", "write the config as 'key: value' lines")
    return pretrain_config(data, str(path))
