"""Typed pretraining configs: sources, curriculum stages, optimiser, and named recipes as base configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from synthfm.config import StrictModel, read_yaml, validate_config
from synthfm.errors import SynthfmError


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


class OptimConfig(StrictModel):
    """AdamW with linear warm-up then cosine decay; lr = base_lr * global batch / 256 unless `lr` is given."""

    base_lr: float = Field(1.5e-4, gt=0)
    lr: float | None = Field(None, gt=0, description="absolute peak lr (ignores base_lr scaling)")
    min_lr: float = Field(0.0, ge=0)
    weight_decay: float = Field(0.05, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = Field(0, ge=0)
    warmup_epochs: float | None = Field(None, ge=0)
    clip_grad: float | None = Field(None, gt=0)
    accumulate: int = Field(1, ge=1, description="micro-batches per optimiser step")


class MAEConfig(StrictModel):
    """Masked autoencoder: mask ratio, decoder shape, and the normalised-pixel target."""

    mask_ratio: float = Field(0.75, gt=0, lt=1)
    decoder_dim: int = Field(512, ge=8)
    decoder_depth: int = Field(8, ge=1)
    decoder_heads: int = Field(16, ge=1)
    norm_pix_loss: bool = True


class PretrainConfig(StrictModel):
    """A pretraining run: objective, backbone, data curriculum, optimiser, checkpointing."""

    recipe: str | None = Field(None, description="named base config (see synthfm.pretrain.mae.MAE_RECIPES)")
    objective: Literal["mae"] = "mae"
    backbone: str = "vit_tiny_p8_64"
    in_chans: int = Field(3, ge=1)
    backbone_overrides: dict[str, Any] = Field(default_factory=dict)
    grad_checkpointing: bool = False
    mae: MAEConfig = Field(default_factory=MAEConfig)
    image_size: int | None = Field(None, ge=8, description="training size (default: the backbone's)")
    crop_scale: tuple[float, float] = (0.2, 1.0)
    batch_size: int = Field(32, ge=1, description="images per process per micro-batch")
    optim: OptimConfig = Field(default_factory=OptimConfig)
    stages: list[StageConfig] = Field(min_length=1)
    seed: int = 0
    checkpoint_every: int = Field(500, ge=1, description="optimiser steps between checkpoints")
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    num_workers: int = Field(0, ge=0)
    cache_dir: str | None = Field(None, description="where phantom sources are rendered (default: run/sources)")

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


def pretrain_config(data: dict[str, Any] | None, source: str = "config") -> PretrainConfig:
    """Validate a mapping (recipe expanded) as a PretrainConfig."""
    from synthfm.pretrain.mae import MAE_RECIPES

    return validate_config(PretrainConfig, resolve_recipe(dict(data or {}), MAE_RECIPES), source)


def load_pretrain_config(path: str | Path) -> PretrainConfig:
    """Read a pretraining YAML (with an optional `recipe:` base)."""
    data = read_yaml(path)
    if data is not None and not isinstance(data, dict):
        raise SynthfmError(f"{path} must hold a mapping of keys", "write the config as 'key: value' lines")
    return pretrain_config(data, str(path))
