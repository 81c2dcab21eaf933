"""The classifier of the adaptation recipe: encoder + pooling + head, layer-wise lr decay groups, loss and scores.

Fine-tuning trains every parameter with RETFound's layer-wise lr decay (lr scale `decay ** (depth + 1 - layer)`,
layer 0 = patch embedding and tokens, layer i = block i-1, depth+1 = final norm and head), stochastic depth
on the timm ViT blocks and label smoothing. The linear probe freezes the encoder in eval mode and trains MAE's
probe head, BatchNorm1d(affine=False) + Linear. Non-ViT encoders (the `pixels` and `random:resnet18` baselines,
`models/baselines.py`) skip the ViT-only parts (layer decay, position-embedding resizing, per-block drop path).
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

from synthfm.errors import SynthfmError
from synthfm.models.backbones import backbone_spec, image_size
from synthfm.models.baselines import PIXELS, is_vit, pixel_encoder
from synthfm.models.encoders import random_backbone, resolve_encoder
from synthfm.models.pooling import pool_features, pooled_dim, resolve_pool
from synthfm.train.classifier_config import ClassifierConfig
from synthfm.train.optim import param_groups

EMBED_PREFIXES = ("cls_token", "pos_embed", "patch_embed", "reg_token", "mask_token", "dist_token")


def load_encoder(cfg: ClassifierConfig, in_chans: int) -> nn.Module:
    """The encoder named by cfg.encoder: 'random:<backbone>', a save_pretrained dir, a checkpoint file, or 'pixels'.

    The encoder takes the card's `in_chans` (backbone_overrides.in_chans may repeat it); a saved encoder or file
    with other channels (an RGB RETFound / DINOv2 on a grey card) has its patch embedding adapted on load.
    A random CNN to be fine-tuned gets cfg.drop_path as timm's own `drop_path_rate` (ViTs get it from the trainer).
    """
    overrides = dict(cfg.backbone_overrides)
    chans = overrides.pop("in_chans", in_chans)
    if chans != in_chans:
        raise SynthfmError(f"backbone_overrides.in_chans is {chans} but card {cfg.card} has {in_chans} channel(s)",
                           f"set backbone_overrides.in_chans to {in_chans} or drop it (the encoder takes the card's "
                           "channels; a pretrained encoder with other channels is adapted on load)")
    if cfg.encoder == PIXELS:
        return pixel_encoder(in_chans, cfg.image_size, cfg.policy)
    name = random_backbone(cfg.encoder)
    if name is not None and backbone_spec(name).family != "vit" and cfg.policy == "finetune" and cfg.drop_path > 0:
        overrides.setdefault("drop_path_rate", cfg.drop_path)
    return resolve_encoder(cfg.encoder, in_chans, cfg.backbone, overrides)


def fit_image_size(encoder: nn.Module, size: int, name: str) -> None:
    """A ViT built for another input size takes `size` (position embeddings resampled, as timm does).

    Other encoders need nothing: a CNN pools over any size and the pixels encoder is built at `size`.
    """
    if not is_vit(encoder):
        return
    embed = encoder.patch_embed
    if int(embed.img_size[0]) == size:
        return
    patch = int(embed.patch_size[0])
    if size % patch:
        raise SynthfmError(f"image_size {size} is not a multiple of encoder {name}'s patch size {patch} "
                           f"(it was built for {embed.img_size[0]} px)",
                           f"set image_size to a multiple of {patch}, e.g. {max(patch, size // patch * patch)}, "
                           f"or leave it out to use {embed.img_size[0]}")
    encoder.set_input_size(img_size=size)
    saved = getattr(encoder, "synthfm_backbone", None)  # what save_pretrained records: rebuilt at this size
    if saved is not None:
        encoder.synthfm_backbone = {**saved, "overrides": {**saved.get("overrides", {}), "img_size": size}}


def set_drop_path(encoder: nn.Module, rate: float) -> None:
    """Stochastic depth on a timm ViT, rising linearly from 0 (first block) to `rate` (last), as timm does."""
    blocks = encoder.blocks
    for i, blk in enumerate(blocks):
        r = rate * i / max(len(blocks) - 1, 1)
        for name in ("drop_path1", "drop_path2"):
            if hasattr(blk, name):
                setattr(blk, name, DropPath(r) if r > 0 else nn.Identity())


def input_size(encoder: nn.Module, cfg: ClassifierConfig) -> int:
    """The image size the encoder reads: cfg.image_size, else a ViT's own; a CNN has none of its own."""
    return image_size(encoder, cfg.image_size, cfg.encoder)


def vit_only_notes(cfg: ClassifierConfig, encoder: nn.Module) -> list[str]:
    """What of the ViT fine-tuning recipe a non-ViT encoder does without (said in the run's summary)."""
    if cfg.policy != "finetune" or is_vit(encoder):
        return []
    notes = []
    if cfg.layer_decay != 1:
        notes.append(f"layer_decay {cfg.layer_decay:g} not applied: {cfg.encoder} is not a ViT (no blocks), so "
                     "every parameter takes the full learning rate")
    if cfg.drop_path > 0 and random_backbone(cfg.encoder) is None:
        notes.append(f"drop_path {cfg.drop_path:g} not applied: timm sets a CNN's stochastic depth when it is "
                     "built, and a saved encoder keeps what it was built with")
    return notes


def build_head(dim: int, outputs: int, probe: bool) -> nn.Module:
    """Linear head (trunc-normal init: std 2e-5 fine-tune as RETFound, 0.01 probe as MAE); probe adds BN."""
    linear = nn.Linear(dim, outputs)
    nn.init.trunc_normal_(linear.weight, std=0.01 if probe else 2e-5)
    nn.init.zeros_(linear.bias)
    return nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), linear) if probe else linear


class Classifier(nn.Module):
    """Encoder + pooling + head; a frozen encoder has no gradients and stays in eval mode."""

    def __init__(self, encoder: nn.Module, head: nn.Module, frozen: bool, pool: str | None = None) -> None:
        super().__init__()
        self.encoder, self.head, self.frozen, self.pool = encoder, head, frozen, pool
        if frozen:
            encoder.requires_grad_(False)

    def train(self, mode: bool = True) -> Classifier:
        """Set training mode, keeping a frozen encoder in eval mode."""
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            feats = pool_features(self.encoder, x, self.pool)
        return self.head(feats)


def make_classifier(encoder: nn.Module, cfg: ClassifierConfig, outputs: int) -> Classifier:
    """The classifier of a config: cfg.pool checked against the encoder, the head sized for that pooling."""
    probe = cfg.policy == "linear_probe"
    pool = None if cfg.pool is None else resolve_pool(encoder, cfg.pool, cfg.encoder)
    return Classifier(encoder, build_head(pooled_dim(encoder, pool), outputs, probe), probe, pool)


def layer_id(name: str, depth: int) -> int:
    """RETFound/BEiT layer index of an encoder parameter name (0 embeddings, i+1 block i, depth+1 the rest)."""
    name = name.removeprefix("encoder.")
    if name.startswith(EMBED_PREFIXES):
        return 0
    m = re.match(r"blocks\.(\d+)\.", name)
    return int(m.group(1)) + 1 if m else depth + 1


def lrd_param_groups(net: nn.Module, weight_decay: float, layer_decay: float, depth: int) -> list[dict[str, Any]]:
    """The engine's decay / no-decay groups split by layer, each with lr_scale = layer_decay ** (depth+1-layer)."""
    names = {id(p): n for n, p in net.named_parameters()}
    groups: dict[tuple[int, float], dict[str, Any]] = {}
    for base in param_groups(net, weight_decay):
        for p in base["params"]:
            lid = layer_id(names[id(p)], depth)
            group = groups.setdefault((lid, base["weight_decay"]), {
                "params": [], "weight_decay": base["weight_decay"], "layer": lid,
                "lr_scale": layer_decay ** (depth + 1 - lid)})
            group["params"].append(p)
    return [groups[k] for k in sorted(groups)]



def task_loss(task_type: str, logits: torch.Tensor, y: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Label-smoothed BCE (binary, multilabel: targets pulled towards 0.5) or cross-entropy (multi-class)."""
    logits = logits.float()
    if task_type in ("binary", "multilabel"):
        target = y.float().reshape(logits.shape) * (1 - smoothing) + 0.5 * smoothing
        return F.binary_cross_entropy_with_logits(logits, target)
    return F.cross_entropy(logits, y.long(), label_smoothing=smoothing)


def task_scores(task_type: str, logits: torch.Tensor) -> torch.Tensor:
    """P(positive) (N,) for binary, label probabilities (N, K) for multilabel, softmax (N, K) otherwise."""
    logits = logits.float()
    if task_type == "binary":
        return torch.sigmoid(logits).reshape(-1)
    return torch.sigmoid(logits) if task_type == "multilabel" else logits.softmax(-1)
