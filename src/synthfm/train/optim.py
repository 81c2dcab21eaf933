"""AdamW with warm-up + cosine schedules, shared by the pretraining engine and the classifier trainer."""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field, model_validator
from torch import nn

from synthfm.config import StrictModel

NO_DECAY = ("pos_embed", "cls_token", "reg_token", "mask_token")


class OptimConfig(StrictModel):
    """AdamW with linear warm-up then cosine decay; lr = base_lr * global batch / 256 unless `lr` is given."""

    base_lr: float = Field(1.5e-4, gt=0)
    lr: float | None = Field(None, gt=0, description="absolute peak lr (ignores base_lr scaling)")
    min_lr: float = Field(0.0, ge=0)
    weight_decay: float = Field(0.05, ge=0)
    weight_decay_end: float | None = Field(None, ge=0, description="cosine from weight_decay to this over each "
                                                                    "stage (DINOv2: 0.04 -> 0.2); None: constant")
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = Field(0, ge=0)
    warmup_epochs: float | None = Field(None, ge=0)
    clip_grad: float | None = Field(None, gt=0)
    accumulate: int = Field(1, ge=1, description="micro-batches per optimiser step")

    @model_validator(mode="after")
    def _decay_to_schedule(self) -> OptimConfig:
        """A weight-decay schedule needs a non-zero starting decay (it scales the decaying parameter group)."""
        if self.weight_decay_end is not None and self.weight_decay == 0:
            raise ValueError("optim.weight_decay_end needs optim.weight_decay > 0")
        return self


def lr_at(step: int, total: int, warmup: int, peak: float, floor: float = 0.0) -> float:
    """Linear warm-up to `peak` over `warmup` steps, then cosine decay to `floor` at step `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def weight_decay_at(step: int, total: int, optim: OptimConfig) -> float:
    """optim.weight_decay, or a cosine from it to optim.weight_decay_end at step `total` (DINOv2's schedule)."""
    start, end = optim.weight_decay, optim.weight_decay_end
    if end is None:
        return start
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * min(step / max(total, 1), 1.0)))


def param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only: not on biases, norms, tokens or position embeddings."""
    decay, plain = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (plain if p.ndim <= 1 or name.endswith(NO_DECAY) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def build_optimizer(module: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW, fused when the parameters' device supports it."""
    groups = param_groups(module, cfg.weight_decay)
    try:
        return torch.optim.AdamW(groups, lr=0.0, betas=cfg.betas, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(groups, lr=0.0, betas=cfg.betas)
