"""Sampling with classifier-free guidance through any diffusers scheduler (DDPM, DDIM, DPM-Solver++).

Each image has its own torch.Generator (its seed), which draws its initial noise and any noise the scheduler
adds, so an image depends only on its seed, its condition and the batch it is computed in. Guidance:
eps = eps_null + w * (eps_cond - eps_null), both halves in one batched call; w = 1 skips the null half and
w = 0 is the unconditional model.
"""

from __future__ import annotations

import torch
from diffusers.utils.torch_utils import randn_tensor

from synthfm.synth.diffusion.config import SamplerConfig
from synthfm.synth.diffusion.generator import Generator
from synthfm.synth.diffusion.model import sampling_scheduler


def guided(gen: Generator, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """The guided denoiser output at one step."""
    if scale == 1.0:
        return gen.denoise(gen.model, x, t, cond)
    null = torch.zeros_like(cond)
    if scale == 0.0:
        return gen.denoise(gen.model, x, t, null)
    both = gen.denoise(gen.model, torch.cat([x, x]), t, torch.cat([null, cond]))
    uncond, conditional = both.chunk(2)
    return uncond + scale * (conditional - uncond)


def sampling_dtype(name: str, device: torch.device) -> torch.dtype:
    """The sampling dtype of GenerateConfig.dtype; 'auto' is bfloat16 only where `device` has native bf16."""
    if name == "auto":
        from synthfm.hardware import native_bf16

        return torch.bfloat16 if native_bf16(device.type) else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def evaluations(sampler: SamplerConfig) -> int:
    """Denoiser evaluations per image (a guided step batches its two halves into one call)."""
    return sampler.steps


@torch.no_grad()
def sample(gen: Generator, cond: torch.Tensor, seeds: list[int], sampler: SamplerConfig) -> torch.Tensor:
    """Images in [-1, 1] (B, C, H, W) for conditions cond (B, F) and one seed per image."""
    device, dtype = next(gen.model.parameters()).device, next(gen.model.parameters()).dtype
    scheduler = sampling_scheduler(gen.scheduler_config, sampler, pixel=gen.vae is None and gen.text is None)
    scheduler.set_timesteps(sampler.steps, device=device)
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    x = randn_tensor((len(seeds), *gen.latent_shape), generator=gens, device=device, dtype=dtype)
    x = x * scheduler.init_noise_sigma
    cond = cond.to(device)
    extra = {"eta": sampler.eta} if sampler.name == "ddim" else {}
    for t in scheduler.timesteps:
        out = guided(gen, scheduler.scale_model_input(x, t), t, cond, sampler.guidance_scale)
        x = scheduler.step(out, t, x, generator=gens, **extra).prev_sample
    return gen.decode(x)
