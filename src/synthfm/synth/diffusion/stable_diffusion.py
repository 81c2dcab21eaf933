"""The Stable Diffusion path: a local StableDiffusionPipeline whose UNet is fine-tuned on prompts built from conditions.

The pipeline is read from a directory (the user's copy of SD v1.x or a medical variant; nothing is downloaded).
Prompts come from the card's labels and metadata through a jinja2 template; a dropped condition renders the
template with every field empty, which is also the negative prompt of classifier-free guidance at sampling.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from synthfm.errors import SynthfmError
from synthfm.synth.diffusion.conditions import ConditionSchema, compile_template, render_prompt

PIPELINE_DIR = "pipeline"


class TextConditioner:
    """Conditions -> prompts -> frozen CLIP text embeddings (cached per prompt)."""

    def __init__(self, tokenizer: Any, text_encoder: nn.Module, template: str, modality: str,
                 schema: ConditionSchema) -> None:
        self.tokenizer, self.text_encoder = tokenizer, text_encoder.requires_grad_(False).eval()
        self.template, self.template_text = compile_template(template), template
        self.modality, self.schema = modality, schema
        self._cache: dict[tuple[str, str], torch.Tensor] = {}

    def prompts(self, cond: torch.Tensor) -> list[str]:
        """The prompt of each condition vector."""
        return [render_prompt(self.template, self.modality, self.schema.decode(row)) for row in cond.cpu().numpy()]

    @torch.no_grad()
    def embed(self, cond: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(B, F) conditions -> (B, tokens, width) text-encoder hidden states on cond's device."""
        device = cond.device
        prompts = self.prompts(cond)
        missing = sorted({p for p in prompts if (p, str(device)) not in self._cache})
        if missing:
            self.text_encoder.to(device)
            ids = self.tokenizer(missing, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids.to(device)
            for p, h in zip(missing, self.text_encoder(ids)[0], strict=True):
                self._cache[(p, str(device))] = h
        return torch.stack([self._cache[(p, str(device))] for p in prompts]).to(dtype)


def load_pipeline(path: str | Path) -> Any:
    """A StableDiffusionPipeline from a local directory (no safety checker, no download)."""
    from diffusers import StableDiffusionPipeline

    path = Path(path)
    if not (path / "model_index.json").is_file():
        raise SynthfmError(f"{path} is not a Stable Diffusion pipeline directory (no model_index.json)",
                           "point diffusion.pretrained at a local copy saved with save_pretrained")
    return StableDiffusionPipeline.from_pretrained(str(path), safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False, local_files_only=True)


def save_pipeline(pipe: Any, unet: nn.Module, scheduler: Any, directory: Path) -> None:
    """Write the pipeline with the given (EMA) UNet and scheduler to directory/pipeline."""
    from diffusers import StableDiffusionPipeline

    out = StableDiffusionPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=unet,
                                  scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                  requires_safety_checker=False)
    out.save_pretrained(str(directory / PIPELINE_DIR), safe_serialization=True)
