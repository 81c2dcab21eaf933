"""The denoisers: a diffusers UNet2DModel with a condition embedding (pixel or latent space), EMA weights.

Conditions enter the UNet through its class-embedding slot (`class_embed_type="identity"`): each field has an
embedding table (row 0 = the null token), the rows are summed and passed through an MLP to the width of the
time embedding, and the UNet adds the result to the time embedding of every residual block.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EDMDPMSolverMultistepScheduler,
    EDMEulerScheduler,
    UNet2DModel,
)
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.training_utils import EMAModel
from torch import nn

from synthfm.synth.diffusion.config import DiffusionConfig, SamplerConfig, UNetConfig

SCHEDULERS = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpmpp": DPMSolverMultistepScheduler}
# EDM-trained generators: DPM-Solver++ on the Karras sigma schedule, or EDM's deterministic Euler sampler
EDM_SCHEDULERS = {"ddpm": EDMEulerScheduler, "ddim": EDMEulerScheduler, "dpmpp": EDMDPMSolverMultistepScheduler}


class ConditionEmbedding(nn.Module):
    """Sum of one embedding per condition field (index 0 = not given), then a two-layer MLP."""

    def __init__(self, sizes: list[int], dim: int) -> None:
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(k + 1, dim) for k in sizes)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        """(B, F) indices -> (B, dim)."""
        return self.mlp(sum(table(cond[:, j]) for j, table in enumerate(self.tables)))


def unet_kwargs(cfg: UNetConfig, size: int, channels: int) -> dict[str, Any]:
    """UNet2DModel keyword arguments for a UNetConfig at one sample size."""
    down = ["AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention]
    up = ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention)]
    return {"sample_size": size, "in_channels": channels, "out_channels": channels,
            "block_out_channels": list(cfg.block_out_channels), "layers_per_block": cfg.layers_per_block,
            "down_block_types": down, "up_block_types": up, "norm_num_groups": cfg.norm_num_groups,
            "attention_head_dim": cfg.attention_head_dim, "dropout": cfg.dropout}


class ConditionalUNet(ModelMixin, ConfigMixin):
    """UNet2DModel + ConditionEmbedding, saved and loaded as one diffusers model (safetensors + config.json)."""

    @register_to_config
    def __init__(self, unet_config: dict[str, Any], condition_sizes: list[int]) -> None:
        super().__init__()
        conditional = len(condition_sizes) > 0
        self.unet = UNet2DModel(**unet_config, class_embed_type="identity" if conditional else None)
        dim = unet_config["block_out_channels"][0] * 4  # UNet2DModel's time-embedding width
        self.condition = ConditionEmbedding(condition_sizes, dim) if conditional else None

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Predicted noise (or v) for noisy x at timesteps t under conditions cond (B, F)."""
        labels = self.condition(cond) if self.condition is not None else None
        return self.unet(x, t, class_labels=labels).sample


class EMA(nn.Module):
    """An exponential moving average of a model as a module (so engine checkpoints hold it), via EMAModel."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).requires_grad_(False)
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        self._ema = EMAModel(self.model.parameters(), decay=decay)
        self._ema.shadow_params = list(self.model.parameters())  # update the module's tensors in place

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards `model` (decay warms up as (1+s)/(10+s), capped at `decay`)."""
        self._ema.optimization_step = int(self.steps)
        self._ema.step(model.parameters())
        self.steps.fill_(self._ema.optimization_step)


def train_scheduler(d: DiffusionConfig) -> DDPMScheduler | EDMEulerScheduler:
    """The noise schedule training adds noise with: DDPM's discrete one, or EDM's continuous sigmas."""
    if d.formulation == "edm":
        return EDMEulerScheduler(sigma_data=d.sigma_data, prediction_type=d.prediction_type)
    return DDPMScheduler(num_train_timesteps=d.train_timesteps, beta_schedule=d.beta_schedule,
                         prediction_type=d.prediction_type, clip_sample=False)


def is_edm(config: dict[str, Any]) -> bool:
    """Whether a training schedule's config is EDM's (it has a data standard deviation)."""
    return "sigma_data" in config


def training_schedule(config: dict[str, Any]) -> DDPMScheduler | EDMEulerScheduler:
    """The training schedule object of a saved scheduler config."""
    return (EDMEulerScheduler if is_edm(config) else DDPMScheduler).from_config(config)


def sampling_scheduler(config: dict[str, Any], sampler: SamplerConfig, pixel: bool = True) -> Any:
    """A fresh diffusers scheduler for sampling, built from the training schedule's config.

    In pixel space the predicted clean image is clipped to [-1, 1] at every step (`clip_x0`, via the schedulers'
    thresholding with a ceiling of 1): without it, an under-trained model's early x0 errors push the trajectory
    out of the data range and it never comes back. EDM-trained generators sample with the EDM schedulers.
    """
    edm = is_edm(config)
    extra: dict[str, Any] = {"algorithm_type": "dpmsolver++", "solver_order": 2} if sampler.name == "dpmpp" else {}
    if sampler.name != "dpmpp" and not edm:
        extra["clip_sample"] = False
    clip = pixel and sampler.clip_x0
    if edm:
        if sampler.name != "dpmpp":
            return EDMEulerScheduler.from_config(config)
        return EDMDPMSolverMultistepScheduler.from_config(config, **extra, thresholding=clip, sample_max_value=1.0)
    if clip:
        extra.update(thresholding=True, sample_max_value=1.0)
    return SCHEDULERS[sampler.name].from_config(config, **extra)
