"""The `diffusion` objective of the pretraining engine: denoising loss with condition dropout, EMA, generator export.

The engine runs it like any objective (Accelerate, AdamW + warm-up/cosine, accumulation, clipping, atomic
checkpoints, exact resume). Its sources are cards (or the fundus / chest X-ray phantom): images at the
training size in [-1, 1] with each row's condition vector. Each step draws every sample's noise level,
dropout and noise as a pure function of its seed (vectorised over the batch, `noise.py`), drops all conditions
of a sample with probability `cond_dropout` (and single fields with `field_dropout`), and regresses the noise
(or v, or x0; optionally min-SNR weighted), or, with `formulation: edm`, trains EDM's preconditioned denoiser
at log-normal noise levels with its loss weighting. After each optimiser step the EMA copy moves towards the
weights; the export is the EMA denoiser as a generator directory with its training condition counts.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDPMScheduler
from torch import nn
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from synthfm.data.manifest import CardData, load_card
from synthfm.data.readers import open_dataset
from synthfm.data.shard_index import IndexedShardDataset
from synthfm.data.transforms import Transform, to_tensor
from synthfm.data.vocabulary import band_index, band_labels
from synthfm.errors import SynthfmError
from synthfm.pretrain.config import PretrainConfig, SourceConfig
from synthfm.pretrain.objective import Objective, register_objective
from synthfm.synth.diffusion.conditions import (
    ConditionSchema,
    card_conditions,
    merge_schemas,
    schema_from_card,
    schema_from_spec,
)
from synthfm.synth.diffusion.generator import Generator
from synthfm.synth.diffusion.model import EMA, ConditionalUNet, train_scheduler, training_schedule, unet_kwargs
from synthfm.synth.diffusion.noise import DROPOUT, NOISE, TIMESTEP, normals, uniforms
from synthfm.synth.diffusion.stable_diffusion import TextConditioner, load_pipeline
from synthfm.synth.registry import generator_spec, phantom_for_channels
from synthfm.synth.writer import PhantomConfig, render_phantom


def source_card(src: SourceConfig, size: int, channels: int, cache: Path) -> Path:
    """The card behind a source (a phantom is rendered into `cache` once, named as pretraining names it)."""
    if src.source == "rasd":
        raise SynthfmError("source 'rasd' carries no labels or metadata to condition a generator on",
                           "train the diffusion objective on cards or 'phantom' sources")
    if src.source != "phantom":
        return Path(src.source)
    name = phantom_for_channels(channels)
    return render_phantom(cache / f"{name}_n{src.n}_s{size}_seed{src.seed}",
                          PhantomConfig(generator=name, n=src.n, size=max(size, 16), seed=src.seed))


def source_schema(src: SourceConfig, cfg: PretrainConfig) -> tuple[ConditionSchema, str]:
    """The condition fields and modality of one source, without rendering anything."""
    d = cfg.diffusion
    if src.source == "phantom":
        spec = generator_spec(phantom_for_channels(cfg.in_chans))
        return schema_from_spec(spec, spec.metadata_values, d.age_edges), spec.modality
    source_card(src, 0, cfg.in_chans, Path())  # rasd is an error
    data = load_card(src.source, check_files=False)
    return schema_from_card(data, d.age_edges, d.max_categories), data.card.modality


def training_schema(cfg: PretrainConfig) -> tuple[ConditionSchema, str]:
    """The fields over every stage's sources (restricted to diffusion.conditions) and the common modality."""
    found = [source_schema(s, cfg) for stage in cfg.stages for s in stage.sources]
    modalities = sorted({m for _, m in found})
    if len(modalities) > 1:
        raise SynthfmError(f"the diffusion sources mix modalities {modalities}", "train one generator per modality")
    return merge_schemas([s for s, _ in found], "diffusion sources").select(cfg.diffusion.conditions), modalities[0]


def image_transform(size: int, channels: int, hflip: bool) -> Transform:
    """uint8 array -> float tensor in [-1, 1] at size x size (bicubic), optionally flipped at random."""
    geo: list[Any] = [T.Resize((size, size), interpolation=InterpolationMode.BICUBIC, antialias=True)]
    if hflip:
        geo.append(T.RandomHorizontalFlip())
    pipeline = T.Compose([*geo, T.ToDtype(torch.float32, scale=True), T.Normalize([0.5] * channels, [0.5] * channels)])
    return lambda arr: pipeline(to_tensor(arr))


class ConditionedImages(Dataset):
    """A card reader's images with each manifest row's condition vector."""

    def __init__(self, base: Dataset, cond: torch.Tensor) -> None:
        self.base, self.cond = base, cond

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = self.base[i]
        return {"image": item["image"], "cond": self.cond[item["index"]]}


def drop_conditions(cond: torch.Tensor, u: torch.Tensor, p_all: float, p_field: float) -> torch.Tensor:
    """Classifier-free-guidance dropout from uniforms u (B, 1 + F): whole vectors with p_all, fields with p_field."""
    keep = (u[:, :1] >= p_all) & (u[:, 1:] >= p_field)
    return cond * keep.to(cond.device)


def sample_draws(seeds: torch.Tensor | None, batch: int, fields: int,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample uniforms for the noise level (B,) and for condition dropout (B, 1 + F): from each sample's seed
    when the batch has one (so a sample is noised identically on any rank or batch size), else the global RNG."""
    if seeds is None:
        return torch.rand(batch, device=device), torch.rand(batch, 1 + fields, device=device)
    level = uniforms(seeds, TIMESTEP, 1)[:, 0]
    return level.float().to(device), uniforms(seeds, DROPOUT, 1 + fields).float().to(device)


def noise_like(x: torch.Tensor, seeds: torch.Tensor | None) -> torch.Tensor:
    """Gaussian noise shaped like x, sample b drawn from seeds[b] when given (vectorised over the batch)."""
    if seeds is None:
        return torch.randn_like(x)
    return normals(seeds, NOISE, tuple(x.shape[1:])).to(x.device, x.dtype)


def prediction_target(scheduler: DDPMScheduler, x0: torch.Tensor, noise: torch.Tensor,
                      t: torch.Tensor) -> torch.Tensor:
    """What the denoiser regresses: the noise, the velocity v, or the clean sample."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    return scheduler.get_velocity(x0, noise, t) if kind == "v_prediction" else x0


def min_snr_weight(scheduler: DDPMScheduler, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights (B,) for the scheduler's prediction type: min(SNR, gamma) / SNR for the noise,
    / (SNR + 1) for v, and min(SNR, gamma) itself for the clean sample."""
    abar = scheduler.alphas_cumprod.to(t.device)[t].float()
    snr = abar / (1 - abar)
    clipped = torch.clamp(snr, max=gamma)
    kind = scheduler.config.prediction_type
    return clipped / snr if kind == "epsilon" else clipped / (snr + 1) if kind == "v_prediction" else clipped


def edm_sigmas(level: torch.Tensor, p_mean: float, p_std: float) -> torch.Tensor:
    """EDM's log-normal noise levels, sigma = exp(p_mean + p_std * n), from uniforms (inverse normal CDF)."""
    return torch.exp(p_mean + p_std * math.sqrt(2.0) * torch.erfinv(2 * level.double() - 1)).float()


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each sample (B,)."""
    return (pred.float() - target.float()).pow(2).flatten(1).mean(1)


class DiffusionObjective(Objective):
    """Denoising objective over a Generator; trained modules: the denoiser and its EMA copy."""

    export_name = "generator"

    def __init__(self, cfg: PretrainConfig, gen: Generator, pipe: Any = None) -> None:
        self.cfg, self.gen, self.pipe = cfg, gen, pipe
        self.model = gen.model.train()
        self.ema = EMA(self.model, cfg.diffusion.ema_decay)
        self.scheduler = training_schedule(gen.scheduler_config)
        self.cache: Path | None = Path(cfg.cache_dir) if cfg.cache_dir else None

    def modules(self) -> dict[str, nn.Module]:
        """The denoiser and its EMA (both checkpointed; only the denoiser has trainable parameters)."""
        return {"generator": self.model, "ema": self.ema}

    def encoder(self) -> nn.Module:
        """The trained denoiser (the Objective protocol's exported module)."""
        return self.model

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Denoising loss with condition dropout: DDPM (noise / v / x0 MSE at uniform timesteps, optionally
        min-SNR weighted) or EDM (preconditioned denoiser at log-normal noise levels, EDM loss weighting)."""
        d = self.cfg.diffusion
        images, cond, seeds = batch["image"], batch["cond"], batch.get("seed")
        level, u = sample_draws(seeds, images.shape[0], cond.shape[1], images.device)
        cond = drop_conditions(cond, u, d.cond_dropout, d.field_dropout)
        x0 = self.gen.encode(images, seeds)
        noise = noise_like(x0, seeds)
        if d.formulation == "edm":
            per = self.edm_loss(x0, noise, edm_sigmas(level, d.edm_p_mean, d.edm_p_std), cond)
        else:
            t = (level * self.scheduler.config.num_train_timesteps).long().clamp_max(
                self.scheduler.config.num_train_timesteps - 1)
            noisy = self.scheduler.add_noise(x0, noise, t)
            target = prediction_target(self.scheduler, x0, noise, t)
            per = per_sample_mse(self.gen.denoise(self.model, noisy, t, cond), target)
            if d.snr_gamma is not None:
                per = per * min_snr_weight(self.scheduler, t, d.snr_gamma)
        loss = per.mean()
        uncond = (cond == 0).all(dim=1).float().mean() if cond.shape[1] else torch.ones(())
        return loss, {"loss_diffusion": loss.detach(), "uncond_fraction": uncond}

    def edm_loss(self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor,
                 cond: torch.Tensor) -> torch.Tensor:
        """Per-sample EDM loss: lambda(sigma) |D(x0 + sigma n) - x0|^2 with D preconditioned by the EDM scheduler
        (c_in, c_noise, c_skip, c_out) and lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2."""
        sd = self.scheduler.config.sigma_data
        s = sigma.view(-1, *[1] * (x0.dim() - 1)).to(x0.dtype)
        noisy = x0 + s * noise
        out = self.gen.denoise(self.model, self.scheduler.precondition_inputs(noisy, s),
                               self.scheduler.precondition_noise(sigma), cond)
        denoised = self.scheduler.precondition_outputs(noisy, out.float(), s)
        weight = (sigma ** 2 + sd ** 2) / (sigma * sd) ** 2
        return per_sample_mse(denoised, x0) * weight

    def after_step(self, step: int, total: int) -> None:
        """Move the EMA copy towards the weights."""
        self.ema.update(self.model)

    def open_source(self, src: SourceConfig, cache: Path) -> Dataset:
        """A source's images at the training size with each row's condition vector."""
        self.cache = cache
        data = load_card(source_card(src, self.gen.image_size, self.cfg.in_chans, cache))
        if data.channels != self.gen.channels:
            raise SynthfmError(f"card {src.source} has {data.channels}-channel images but the generator makes "
                               f"{self.gen.channels}", "set in_chans in the config to match the card's modality")
        transform = image_transform(self.gen.image_size, data.channels, self.cfg.diffusion.hflip)
        base = (IndexedShardDataset(data, src.split, transform) if data.card.source.format == "shards"
                else open_dataset(data, src.split, transform=transform))
        return ConditionedImages(base, torch.from_numpy(card_conditions(self.gen.schema, data)))

    def export(self, directory: Path, **extra: Any) -> Path:
        """Save the EMA denoiser as a generator directory with the training condition counts."""
        cache = self.cache or Path(extra.get("source_run", ".")) / "sources"
        return self.gen.save(directory, model=self.ema.model, pipe=self.pipe,
                             training=training_counts(self.cfg, self.gen.schema, cache), **extra)


def _source_rows(src: SourceConfig, cfg: PretrainConfig, size: int, cache: Path) -> CardData:
    """The card rows a source trained on."""
    data = load_card(source_card(src, size, cfg.in_chans, cache), check_files=False)
    return data.subset(data.indices(src.split))


def training_counts(cfg: PretrainConfig, schema: ConditionSchema, cache: Path) -> dict[str, Any]:
    """Joint counts of the training rows' condition vectors, and the ages seen per age band."""
    size = cfg.image_size or 0
    parts = [_source_rows(s, cfg, size, cache) for stage in cfg.stages for s in stage.sources]
    cond = np.concatenate([card_conditions(schema, p) for p in parts])
    uniq, counts = np.unique(cond, axis=0, return_counts=True)
    ages: dict[str, list[float]] = {}
    for p in parts:
        column = p.card.metadata.age
        if column:
            values = np.asarray(p.df[column].astype("float64").to_numpy(na_value=np.nan))
            for band, lo, hi in _band_ranges(values, cfg.diffusion.age_edges):
                old = ages.get(band, [lo, hi])
                ages[band] = [min(old[0], lo), max(old[1], hi)]
    joint = [[int(c), *map(int, u)] for u, c in zip(uniq, counts, strict=True)]
    return {"rows": len(cond), "joint": joint, "ages": ages}


def _band_ranges(ages: np.ndarray, edges: tuple[float, ...]) -> list[tuple[str, float, float]]:
    """(band label, youngest, oldest) of the recorded ages in each band."""
    ages = ages[~np.isnan(ages)]
    bands = band_index(ages, edges)
    labels = band_labels(edges)
    return [(labels[k], float(ages[bands == k].min()), float(ages[bands == k].max())) for k in np.unique(bands)]


def build_generator(cfg: PretrainConfig) -> tuple[Generator, Any]:
    """A fresh generator for the config (and the loaded pipeline on the Stable Diffusion path)."""
    d = cfg.diffusion
    schema, modality = training_schema(cfg)
    if d.model == "stable_diffusion":
        if d.pretrained is None:
            raise SynthfmError("diffusion.model 'stable_diffusion' needs diffusion.pretrained",
                               "set it to a local StableDiffusionPipeline directory")
        pipe = load_pipeline(d.pretrained)
        factor = pipe.vae_scale_factor
        size = cfg.image_size or pipe.unet.config.sample_size * factor
        text = TextConditioner(pipe.tokenizer, pipe.text_encoder, d.prompt_template, modality, schema)
        pipe.vae.requires_grad_(False).eval()
        return Generator("stable_diffusion", pipe.unet, dict(pipe.scheduler.config), schema, size, 3, modality,
                         vae=pipe.vae, text=text), pipe
    if cfg.image_size is None:
        raise SynthfmError("the diffusion objective needs image_size", "set image_size (e.g. 32, 64 or 256)")
    if d.formulation == "edm" and d.prediction_type == "sample":
        raise SynthfmError("diffusion.formulation 'edm' preconditions a noise or v prediction, not 'sample'",
                           "set diffusion.prediction_type to epsilon or v_prediction")
    sched = dict(train_scheduler(d).config)
    if d.model == "latent":
        from diffusers import AutoencoderKL

        if d.vae is None:
            raise SynthfmError("diffusion.model 'latent' needs diffusion.vae", "set it to a local AutoencoderKL dir")
        vae = AutoencoderKL.from_pretrained(d.vae, local_files_only=True).requires_grad_(False).eval()
        gen = Generator("latent", nn.Identity(), sched, schema, cfg.image_size, cfg.in_chans, modality, vae=vae)
        c, h, _ = gen.latent_shape
        gen.model = ConditionalUNet(unet_kwargs(d.unet, h, c), schema.sizes)
        return gen, None
    model = ConditionalUNet(unet_kwargs(d.unet, cfg.image_size, cfg.in_chans), schema.sizes)
    return Generator("pixel", model, sched, schema, cfg.image_size, cfg.in_chans, modality), None


@register_objective("diffusion")
def build_diffusion(cfg: PretrainConfig) -> DiffusionObjective:
    """The engine's factory for objective 'diffusion'."""
    gen, pipe = build_generator(cfg)
    return DiffusionObjective(cfg, gen, pipe)
