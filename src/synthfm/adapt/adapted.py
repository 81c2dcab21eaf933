"""The classifier of a finished adaptation run, rebuilt as its trainer built it and loaded with its best weights."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from synthfm.adapt.config import AdaptConfig
from synthfm.data.manifest import load_card
from synthfm.errors import SynthfmError
from synthfm.evaluate.predictions import STAGE
from synthfm.models.checkpoint import load_state
from synthfm.runs import CONFIG_FILE, read_run_config
from synthfm.train.classifier import fit_image_size, load_encoder, make_classifier
from synthfm.train.trainer import BEST_FILE


def load_adapted(run_dir: str | Path) -> tuple[nn.Module, AdaptConfig]:
    """The best classifier of a finished adaptation run, and its AdaptConfig."""
    run_dir = Path(run_dir)
    if not (run_dir / BEST_FILE).is_file() or not (run_dir / CONFIG_FILE).is_file():
        raise SynthfmError(f"{run_dir} is not a finished adaptation run ({BEST_FILE} or config.yaml missing)",
                           "point at one seed's run folder of 'synthfm adapt' (it holds best.safetensors)")
    cfg = read_run_config(run_dir, AdaptConfig, STAGE)
    data = load_card(cfg.card, check_files=False)
    task = data.card.task(cfg.task)
    torch.manual_seed(cfg.seeds[0])  # as the trainer does: a random-init probe's encoder is rebuilt, not saved
    encoder = load_encoder(cfg, data.channels)
    if cfg.image_size:  # as the trainer does: a ViT built for another size takes the run's (positions resampled)
        fit_image_size(encoder, cfg.image_size, cfg.encoder)
    probe = cfg.policy == "linear_probe"
    model = make_classifier(encoder, cfg, task.num_outputs)
    state = load_state(run_dir / BEST_FILE)
    (model.head if probe and not cfg.augments else model).load_state_dict(state)
    return model.eval(), cfg
