"""Typed configs of the diffusion generator: the engine objective's sub-config, samplers and generation runs."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from synthfm.config import StrictModel
from synthfm.data.vocabulary import AGE_EDGES

DEFAULT_TEMPLATE = ("a {{ modality }} image{% for k, v in conditions.items() if v is not none %}, "
                    "{{ k | replace('_', ' ') }} {{ v }}{% endfor %}")


class UNetConfig(StrictModel):
    """Shape of a diffusers UNet2DModel: channels per level, blocks per level, which levels attend."""

    block_out_channels: tuple[int, ...] = Field((64, 128, 256, 256), min_length=1)
    layers_per_block: int = Field(2, ge=1)
    attention: tuple[bool, ...] = Field((False, False, True, False), description="self-attention per level")
    norm_num_groups: int = Field(32, ge=1)
    attention_head_dim: int = Field(8, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _levels_match(self) -> UNetConfig:
        """One attention flag per level; every level's width divisible by the group count."""
        if len(self.attention) != len(self.block_out_channels):
            raise ValueError(f"attention needs one flag per level ({len(self.block_out_channels)}), "
                             f"got {len(self.attention)}")
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(f"block_out_channels {bad} are not divisible by norm_num_groups {self.norm_num_groups}")
        return self


class DiffusionConfig(StrictModel):
    """The `diffusion` objective: model kind, conditions, classifier-free-guidance dropout, noise schedule, EMA."""

    model: Literal["pixel", "latent", "stable_diffusion"] = "pixel"
    unet: UNetConfig = Field(default_factory=UNetConfig)
    vae: str | None = Field(None, description="latent: local AutoencoderKL directory (diffusers save_pretrained)")
    pretrained: str | None = Field(None, description="stable_diffusion: local StableDiffusionPipeline directory")
    conditions: list[str] | None = Field(None, description="condition fields (None: every task and metadata field "
                                                            "the training cards declare)")
    age_edges: tuple[float, ...] = Field(AGE_EDGES, min_length=2, description="age band edges (years)")
    max_categories: int = Field(64, ge=2, description="most distinct values a categorical metadata field may have")
    cond_dropout: float = Field(0.1, ge=0, le=1, description="share of samples trained unconditionally (CFG)")
    field_dropout: float = Field(0.0, ge=0, le=1, description="share of each field dropped on its own")
    prompt_template: str = Field(DEFAULT_TEMPLATE, description="stable_diffusion: jinja2 prompt from conditions")
    train_timesteps: int = Field(1000, ge=2)
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon"
    ema_decay: float = Field(0.9999, ge=0, le=1, description="EMA decay cap; warm-up (1+s)/(10+s) before it")
    hflip: bool = Field(False, description="random horizontal flips (off: fundus laterality is anatomy)")
    formulation: Literal["ddpm", "edm"] = Field(
        "ddpm", description="ddpm: discrete DDPM timesteps; edm: Karras et al. 2022 preconditioning, log-normal "
                            "noise levels and loss weighting (diffusers' EDM schedulers)")
    snr_gamma: float | None = Field(None, gt=0, description="ddpm: min-SNR-gamma loss weighting (Hang et al. 2023)")
    edm_p_mean: float = Field(-1.2, description="edm: mean of log sigma during training")
    edm_p_std: float = Field(1.2, gt=0, description="edm: std of log sigma during training")
    sigma_data: float = Field(0.5, gt=0, description="edm: data standard deviation in the preconditioning")
    omit_when_default: ClassVar[tuple[str, ...]] = ("formulation", "snr_gamma", "edm_p_mean", "edm_p_std",
                                                    "sigma_data")


class SamplerConfig(StrictModel):
    """A diffusers scheduler for sampling: DDPM, DDIM or DPM-Solver++, its steps and the guidance scale."""

    name: Literal["ddpm", "ddim", "dpmpp"] = "dpmpp"
    steps: int = Field(20, ge=1, le=10000)
    guidance_scale: float = Field(2.0, ge=0, description="0: unconditional, 1: conditional, >1: guided")
    eta: float = Field(0.0, ge=0, le=1, description="DDIM stochasticity")
    clip_x0: bool = Field(True, description="pixel models: clip the predicted clean image to [-1, 1] at every step "
                                            "(as DDPM's sampler does); latent models never clip")


class TargetSpec(StrictModel):
    """A real card whose joint distribution of the generator's conditions the synthetic set matches."""

    card: str
    split: str | None = None
    field_map: dict[str, str] = Field(default_factory=dict, description="real task/metadata name -> generator field")


class GenerateConfig(StrictModel):
    """`synthfm synth generate`: how many images, which conditions, which sampler, how they are written."""

    generator: str = Field(description="directory exported by a diffusion training run")
    n: int = Field(1000, ge=1)
    seed: int = 0
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    batch_size: int = Field(16, ge=1)
    shard_size: int = Field(1000, ge=1)
    encoding: Literal["raw", "npy", "png", "jpg"] = "png"
    target: TargetSpec | None = Field(None, description="match a real card (default: the generator's training mix)")
    rebalance: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="field -> {value: weight}, drawn independently of the target")
    condition: dict[str, Any] = Field(default_factory=dict, description="fixed for every image")
    dtype: Literal["float32", "float16", "bfloat16", "auto"] = Field(
        "float32", description="auto: bfloat16 where the device has native bf16 (GPU, AVX512-BF16 / AMX CPU), "
                               "else float32 (emulated bf16 is slower than float32 on a CPU without it)")
    name: str | None = Field(None, description="card name (default: generator name and n)")
