"""The `diffusion` generator kind: synthfm.synth.diffusion's conditional generator behind the consortium interface.

Training runs the project's engine with objective `diffusion` on the site's card (rows of the site's split).
The bundle carries the engine's exported generator folder, with one change: its `training` block - the exact
joint counts of the training conditions and the youngest / oldest age per band, which no small-cell rule
protects - is withheld (only the summary may describe the data); the hub rejects a diffusion generator that
still carries it. Sampling encodes each condition with the generator's own schema (keys it was not trained
on are dropped) and runs its guided sampler.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pydantic import Field, field_validator

from synthfm.config import StrictModel, check_block, validate_config
from synthfm.consortium.conditions import CardSchema, Variable
from synthfm.consortium.generators import (
    GENERATOR_FILE,
    Architecture,
    GeneratorConfig,
    GeneratorKind,
    TrainInputs,
)
from synthfm.data.manifest import load_card
from synthfm.data.modality import preset
from synthfm.data.vocabulary import AGE_EDGES
from synthfm.io import atomic_write_json
from synthfm.synth.diffusion.conditions import schema_from_card
from synthfm.synth.diffusion.config import DiffusionConfig, SamplerConfig
from synthfm.synth.diffusion.generator import load_generator, to_uint8
from synthfm.synth.diffusion.sampling import sample

WITHHELD = "withheld by the consortium site kit: only summary.json describes the training data"
SAMPLER_KEY = "consortium_sampler"


class DiffusionOptions(StrictModel):
    """`generator.options` of kind diffusion: training length, engine overrides and the hub's sampler."""

    steps: int = Field(2000, ge=1, description="optimiser steps on the site's card")
    batch_size: int = Field(16, ge=1)
    diffusion: dict[str, Any] = Field(default_factory=dict, description="DiffusionConfig keys (model, unet, ...)")
    pretrain: dict[str, Any] = Field(default_factory=dict, description="other PretrainConfig keys (optim, ...)")
    sampler: dict[str, Any] = Field(default_factory=dict, description="SamplerConfig the hub samples with")
    age_edges: list[float] = Field(default_factory=lambda: list(AGE_EDGES), min_length=2)
    max_categories: int = Field(64, ge=2)

    @field_validator("diffusion")
    @classmethod
    def _diffusion_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        """DiffusionConfig keys (conditions and age edges are the site kit's), checked when the config is read."""
        return check_block(DiffusionConfig, value)

    @field_validator("sampler")
    @classmethod
    def _sampler_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        """SamplerConfig keys, checked when the config is read."""
        return check_block(SamplerConfig, value)

    @field_validator("pretrain")
    @classmethod
    def _pretrain_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        """Other PretrainConfig keys (objective, sizes and stages are the site kit's), checked when read."""
        from synthfm.pretrain.config import PretrainConfig

        return check_block(PretrainConfig, value, objective="diffusion",
                           stages=[{"name": "site", "steps": 1, "sources": [{"source": "site card"}]}])


def options(cfg: GeneratorConfig) -> DiffusionOptions:
    """The kind's typed options."""
    return validate_config(DiffusionOptions, cfg.options, "generator.options")


def diffusion_schema(cfg: GeneratorConfig, card: Path) -> CardSchema:
    """The generator's conditions as the consortium vocabulary: single-label tasks, age range, categories."""
    opts = options(cfg)
    data = load_card(card, check_files=False)
    tasks = {t.name: t for t in data.card.tasks if t.type != "multilabel"}
    variables = []
    for f in schema_from_card(data, tuple(opts.age_edges), opts.max_categories).fields:
        if f.kind == "task" and f.name in tasks:
            variables.append(Variable(name=f.name, kind="label", values=list(f.values), task_type=tasks[f.name].type))
        elif f.kind == "metadata" and f.edges is not None:
            variables.append(Variable(name=f.name, kind="number", range=(f.edges[0], f.edges[-1])))
        elif f.kind == "metadata" and f.name != "site":
            variables.append(Variable(name=f.name, kind="category", values=list(f.values)))
    return CardSchema(modality=data.card.modality, variables=variables)


def train_diffusion(inputs: TrainInputs, out_dir: Path) -> Path:
    """Train on the site's card with the engine, then copy the export with its training block withheld."""
    from synthfm.pretrain.config import deep_merge, pretrain_config
    from synthfm.pretrain.engine import pretrain

    opts = options(inputs.cfg)
    run = out_dir.parent / "diffusion_run"
    base = {
        "objective": "diffusion", "image_size": inputs.cfg.size, "batch_size": opts.batch_size,
        "in_chans": preset(inputs.schema.modality).channels,
        "diffusion": {**opts.diffusion, "conditions": [v.name for v in inputs.schema.variables],
                      "age_edges": opts.age_edges},
        "stages": [{"name": "site", "steps": opts.steps,
                    "sources": [{"source": str(inputs.card), "split": inputs.split}]}],
        "checkpoint_every": max(opts.steps // 4, 1), "log_every": max(opts.steps // 20, 1),
    }
    pretrain(pretrain_config(deep_merge(base, opts.pretrain), "site diffusion generator"), run)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    shutil.copytree(run / "generator", out_dir)
    info = json.loads((out_dir / GENERATOR_FILE).read_text())
    atomic_write_json(out_dir / GENERATOR_FILE, {**info, "training": WITHHELD,
                                                 SAMPLER_KEY: SamplerConfig(**opts.sampler).model_dump()})
    return out_dir


def unprotected_counts(directory: Path) -> list[str]:
    """A diffusion export that still carries its training rows' exact joint counts or ages."""
    info = json.loads((directory / GENERATOR_FILE).read_text())
    training = info.get("training")
    if isinstance(training, dict) and {"joint", "ages", "rows"} & set(training):
        return ["generator.json carries the training rows' exact joint condition counts / ages ('training'), "
                "which no small-cell rule protects; the site kit withholds them"]
    return []


class DiffusionGenerator:
    """A loaded diffusion export: conditions encoded with its own schema, guided sampling in chunks."""

    kind = "diffusion"

    def __init__(self, directory: Path) -> None:
        self.gen = load_generator(directory)
        if torch.cuda.is_available():
            self.gen.to("cuda")
        self.size = self.gen.image_size
        self.sampler = SamplerConfig(**self.gen.info.get(SAMPLER_KEY, {}))
        self.names = set(self.gen.schema.names)

    def sample(self, conditions: list[dict[str, Any]], seeds: list[int], size: int | None = None) -> list[np.ndarray]:
        """One uint8 image per (condition, seed)."""
        cond = np.stack([self.gen.schema.encode({k: v for k, v in c.items() if k in self.names})
                         for c in conditions]) if conditions else np.zeros((0, len(self.names)), np.int64)
        out: list[np.ndarray] = []
        for i in range(0, len(seeds), 16):
            x = sample(self.gen, torch.from_numpy(cond[i:i + 16]), [int(s) for s in seeds[i:i + 16]], self.sampler)
            out.extend(to_uint8(x))
        if size and size != self.size:
            out = [np.asarray(Image.fromarray(a).resize((size, size), Image.BICUBIC)) for a in out]
        return out


WEIGHTS = "diffusion_pytorch_model.safetensors"
PARTS = {"pixel": ("model",), "latent": ("model", "vae")}


def _export_kind(directory: Path) -> str:
    """The engine's model kind recorded in generator.json (pixel, latent, stable_diffusion)."""
    return str(json.loads((directory / GENERATOR_FILE).read_text()).get("kind"))


def diffusion_files(directory: Path) -> list[str]:
    """The files of an export: generator.json, each part's config and weights, the scheduler config.

    A stable_diffusion export's pipeline folder is listed as it stands (its tokenizer files vary by model);
    only its JSON, text and safetensors files can pass the hub's type checks."""
    kind = _export_kind(directory)
    if kind not in PARTS:
        pipeline = (directory / "pipeline").rglob("*")
        return [GENERATOR_FILE, *sorted(p.relative_to(directory).as_posix() for p in pipeline if p.is_file())]
    return [GENERATOR_FILE, "scheduler/scheduler_config.json",
            *[f"{part}/{name}" for part in PARTS[kind] for name in ("config.json", WEIGHTS)]]


def diffusion_architecture(directory: Path) -> Architecture:
    """Tensor shapes of the declared denoiser (and VAE), built from their config.json on the meta device."""
    from diffusers import AutoencoderKL

    from synthfm.synth.diffusion.model import ConditionalUNet

    kind = _export_kind(directory)
    out: Architecture = {}
    for part in PARTS.get(kind, ()):
        cls = ConditionalUNet if part == "model" else AutoencoderKL
        with torch.device("meta"):
            model = cls.from_config(cls.load_config(str(directory / part)))
        out[f"{part}/{WEIGHTS}"] = {k: (list(v.shape), ("F32", "F16", "BF16")) for k, v in model.state_dict().items()}
    return out


KIND = GeneratorKind(diffusion_schema, train_diffusion, DiffusionGenerator, unprotected_counts,
                     files=diffusion_files, architecture=diffusion_architecture, options=DiffusionOptions)
