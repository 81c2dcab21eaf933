"""A diffusion generator as one object: denoiser, noise schedule, conditions, optional VAE / text encoder.

Three kinds share the interface: `pixel` (ConditionalUNet on images), `latent` (ConditionalUNet on the latents
of a frozen AutoencoderKL) and `stable_diffusion` (UNet2DConditionModel on VAE latents, conditioned on CLIP
embeddings of prompts). Exported as a directory: the denoiser (diffusers save_pretrained, safetensors), the
scheduler config, the VAE or whole pipeline, and `generator.json` (schema, training counts, hash) written last.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, DDPMScheduler
from torch import nn

from synthfm.errors import SynthfmError
from synthfm.io import atomic_write_json, umask_mode
from synthfm.synth.diffusion.conditions import ConditionSchema
from synthfm.synth.diffusion.model import ConditionalUNet, training_schedule
from synthfm.synth.diffusion.noise import LATENT, normals
from synthfm.synth.diffusion.stable_diffusion import PIPELINE_DIR, TextConditioner, load_pipeline, save_pipeline

FORMAT = "synthfm.generator/1"
INFO_FILE = "generator.json"


@dataclass
class Generator:
    """Everything sampling and training need besides the trained weights' optimiser."""

    kind: str
    model: nn.Module
    scheduler_config: dict[str, Any]
    schema: ConditionSchema
    image_size: int
    channels: int
    modality: str
    vae: AutoencoderKL | None = None
    text: TextConditioner | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of what the denoiser works on."""
        if self.vae is None:
            return self.channels, self.image_size, self.image_size
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return self.vae.config.latent_channels, self.image_size // factor, self.image_size // factor

    def denoise(self, model: nn.Module, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The denoiser's output for x at t under conditions cond (B, F)."""
        if self.text is not None:
            return model(x, t, encoder_hidden_states=self.text.embed(cond, x.dtype)).sample
        return model(x, t, cond)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, seeds: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [-1, 1] -> what the denoiser works on (VAE latent samples times the scaling factor; sample b's
        latent noise drawn from seeds[b] when given)."""
        if self.vae is None:
            return images
        self.vae.to(images.device)
        dist = self.vae.encode(images.to(self.vae.dtype)).latent_dist
        if seeds is None:
            return dist.sample() * self.vae.config.scaling_factor
        eps = normals(seeds, LATENT, tuple(dist.mean.shape[1:])).to(dist.mean.device, dist.mean.dtype)
        return (dist.mean + dist.std * eps) * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Denoised samples -> images in [-1, 1]."""
        if self.vae is None:
            return x
        self.vae.to(x.device)
        return self.vae.decode(x.to(self.vae.dtype) / self.vae.config.scaling_factor).sample

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Generator:
        """Move the denoiser (and VAE / text encoder) to a device and dtype."""
        nn.Module.to(self.model, device, dtype)  # diffusers' own to() warns about fp32 modules on every cast
        for part in (self.vae, self.text.text_encoder if self.text else None):
            if part is not None:
                part.to(device, dtype)
        return self

    # ---- export ---------------------------------------------------------------------------------------------
    def save(self, directory: str | Path, model: nn.Module | None = None, pipe: Any = None,
             **extra: Any) -> Path:
        """Write the generator (with `model`'s weights, e.g. the EMA copy) and generator.json last."""
        directory = Path(directory)
        model = model or self.model
        scheduler = training_schedule(self.scheduler_config)
        if self.kind == "stable_diffusion":
            save_pipeline(pipe, model, scheduler, directory)
        else:
            model.save_pretrained(str(directory / "model"), safe_serialization=True)
            scheduler.save_pretrained(str(directory / "scheduler"))
            if self.vae is not None:
                self.vae.save_pretrained(str(directory / "vae"), safe_serialization=True)
        for f in directory.rglob("*"):  # safetensors writes private (0600) files: give them the umask's mode
            if f.is_file() and not f.is_symlink():
                os.chmod(f, umask_mode())
        info = {"format": FORMAT, "kind": self.kind, "image_size": self.image_size, "channels": self.channels,
                "modality": self.modality, "schema": self.schema.to_dict(),
                "prompt_template": self.text.template_text if self.text else None, **self.info, **extra,
                "hash": content_hash(directory)}
        atomic_write_json(directory / INFO_FILE, info)
        return directory


def content_hash(directory: Path) -> str:
    """SHA-256 (16 hex digits) over every file of an exported generator but generator.json: names and bytes.

    The `hash` stored in generator.json and checked on load, so its recipe is fixed (a consortium bundle's signed
    generator hash is another, over `io.file_sha256` of each file)."""
    h = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != INFO_FILE):
        h.update(str(path.relative_to(directory)).encode())
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def read_info(directory: str | Path) -> dict[str, Any]:
    """generator.json of an exported generator."""
    path = Path(directory) / INFO_FILE
    if not path.is_file():
        raise SynthfmError(f"{directory} has no {INFO_FILE}: not an exported generator (or its export was "
                           "interrupted)", "point at the 'generator' directory of a finished diffusion run")
    info = json.loads(path.read_text())
    if info.get("format") != FORMAT:
        raise SynthfmError(f"{path} has format {info.get('format')!r}, expected {FORMAT}", "re-export the generator")
    return info


def load_generator(directory: str | Path, verify: bool = True) -> Generator:
    """Load an exported generator; with `verify`, its files must match the recorded hash."""
    directory = Path(directory)
    info = read_info(directory)
    if verify and content_hash(directory) != info["hash"]:
        raise SynthfmError(f"the files of generator {directory} do not match its recorded hash {info['hash']}",
                           "re-export the generator; its weights were changed or truncated")
    schema = ConditionSchema.from_dict(info["schema"])
    common = {"schema": schema, "image_size": info["image_size"], "channels": info["channels"],
              "modality": info["modality"], "info": info}
    if info["kind"] == "stable_diffusion":
        pipe = load_pipeline(directory / PIPELINE_DIR)
        text = TextConditioner(pipe.tokenizer, pipe.text_encoder, info["prompt_template"], info["modality"], schema)
        return Generator("stable_diffusion", pipe.unet.eval(), dict(pipe.scheduler.config), vae=pipe.vae.eval(),
                         text=text, **common)
    model = ConditionalUNet.from_pretrained(str(directory / "model")).eval()
    config = dict(training_schedule(dict(DDPMScheduler.load_config(str(directory / "scheduler")))).config)
    vae = AutoencoderKL.from_pretrained(str(directory / "vae")).eval() if info["kind"] == "latent" else None
    return Generator(info["kind"], model, config, vae=vae, **common)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Images in [-1, 1] (B, C, H, W) -> uint8 (B, H, W, C), or (B, H, W) for one channel."""
    arr = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return arr[..., 0] if arr.shape[-1] == 1 else arr
