"""Masked autoencoder (He et al. 2022) over a timm ViT encoder, with a light decoder of timm Blocks.

Random masking keeps 1 - mask_ratio of the patches; the encoder sees only those (plus its prefix tokens);
the decoder fills the rest with a learned mask token, adds fixed 2D sin-cos positions, and predicts every
patch's pixels. The loss is the mean squared error on masked patches, against per-patch normalised pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from timm.layers import build_sincos2d_pos_embed, trunc_normal_
from timm.models._manipulate import checkpoint_seq
from timm.models.vision_transformer import Block
from torch import nn

from synthfm.models.backbones import backbone_geometry, create_backbone
from synthfm.models.vit3d import is_volume_encoder
from synthfm.pretrain.config import MAEConfig, PretrainConfig
from synthfm.pretrain.objective import SingleModuleObjective, register_objective
from synthfm.train.rng import counter_uniform

PAPER_BATCH = 1792  # 4 GPUs x 448 (Zhou et al., RETFound / FM-MEH MAE)

# Named base configs: a YAML may say `recipe: NAME` and override any key (lists such as stages are replaced).
MAE_RECIPES: dict[str, dict[str, Any]] = {
    # RETFound / FM-MEH MAE: ViT-L/16 encoder (24x1024), decoder 8x512, mask 0.75, 800 epochs with 15 warm-up,
    # peak lr 1e-3 at batch 1792 (MAE rule: lr = base_lr * batch / 256), AdamW(0.9, 0.95) wd 0.05,
    # RandomResizedCrop(0.2-1.0) to 224 + h-flip, normalised-pixel loss, fp16 autocast as in the MAE code.
    "mae_vit_large_paper": {
        "objective": "mae", "backbone": "vit_large_p16_224", "image_size": 224, "crop_scale": (0.2, 1.0),
        "mae": {"mask_ratio": 0.75, "decoder_dim": 512, "decoder_depth": 8, "decoder_heads": 16,
                "norm_pix_loss": True},
        "batch_size": 448,
        "optim": {"base_lr": 1e-3 * 256 / PAPER_BATCH, "weight_decay": 0.05, "betas": (0.9, 0.95),
                  "warmup_epochs": 15, "min_lr": 0.0},
        "stages": [{"name": "main", "sources": [{"source": "phantom", "n": 10000}], "epochs": 800}],
        "mixed_precision": "fp16", "checkpoint_every": 1000,
    },
    # Same objective at ViT-B/16, the MAE paper's default decoder, for single-node runs.
    "mae_vit_base": {
        "objective": "mae", "backbone": "vit_base_p16_224", "image_size": 224,
        "mae": {"decoder_dim": 512, "decoder_depth": 8, "decoder_heads": 16},
        "batch_size": 256, "optim": {"base_lr": 1.5e-4, "warmup_epochs": 40},
        "stages": [{"name": "main", "sources": [{"source": "phantom", "n": 10000}], "epochs": 400}],
        "checkpoint_every": 1000,  # mixed_precision: auto (bf16 where native)
    },
    # CPU demo and tests: ViT-Ti/8 at 64 px with a 2x128 decoder.
    "mae_vit_tiny_demo": {
        "objective": "mae", "backbone": "vit_tiny_p8_64", "image_size": 64,
        "mae": {"decoder_dim": 128, "decoder_depth": 2, "decoder_heads": 4},
        "batch_size": 32, "optim": {"base_lr": 2e-3, "warmup_steps": 10},
        "stages": [{"name": "main", "sources": [{"source": "phantom", "n": 256}], "steps": 200}],
        "checkpoint_every": 50,
    },
    # 3D smoke runs and tests: ViT-Ti on 32^3 volumes (8^3 patches) from RaSD's 3D stream (pretrain/volume.py).
    "mae3d_vit_tiny_demo": {
        "objective": "mae", "backbone": "vit3d_tiny_p8_32", "in_chans": 1, "image_size": 32,
        "mae": {"decoder_dim": 128, "decoder_depth": 2, "decoder_heads": 4},
        "batch_size": 8, "optim": {"base_lr": 2e-3, "warmup_steps": 10},
        "stages": [{"name": "main", "sources": [{"source": "rasd", "n": 512}], "steps": 200}],
        "checkpoint_every": 50,
    },
}


def peak_lr(cfg: PretrainConfig, global_batch: int, base_lr: float | None = None) -> float:
    """The peak learning rate: `optim.lr`, else (stage or optim) base_lr * global_batch / 256."""
    if cfg.optim.lr is not None:
        return cfg.optim.lr
    return (base_lr or cfg.optim.base_lr) * global_batch / 256


def patchify(imgs: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, patch*patch*C), patches in row-major order like the patch embedding."""
    b, c, h, w = imgs.shape
    x = imgs.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def sample_noise(seeds: torch.Tensor, size: int, device: torch.device) -> torch.Tensor:
    """(B, size) uniform noise, row b a counter-based hash of seeds[b] (independent of the batch), drawn at once."""
    return counter_uniform(seeds, size).to(device=device, dtype=torch.float32)


def random_masking(batch: int, patches: int, ratio: float, device: torch.device,
                   seeds: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """Per-sample random subsets: ids_keep (B, K), mask (B, N; 1 = masked) and ids_restore (B, N).

    With `seeds` (B,), sample b's subset depends only on seeds[b]; otherwise it comes from the global torch RNG.
    """
    keep = int(patches * (1 - ratio))
    noise = torch.rand(batch, patches, device=device) if seeds is None else sample_noise(seeds, patches, device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(batch, patches, device=device)
    mask[:, :keep] = 0
    return ids_shuffle[:, :keep], torch.gather(mask, 1, ids_restore), ids_restore


def _gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Select tokens ids (B, K) from x (B, N, D)."""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def masked_pixel_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool) -> torch.Tensor:
    """Mean squared error over masked patches; with `norm_pix`, targets are normalised per patch."""
    if norm_pix:
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
    per_patch = (pred.float() - target.float()).square().mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


class MaskedAutoencoder(nn.Module):
    """A timm ViT encoder run on visible patches plus a light transformer decoder predicting all pixels."""

    def __init__(self, encoder: nn.Module, cfg: MAEConfig) -> None:
        super().__init__()
        geo = backbone_geometry(encoder)
        self.encoder, self.cfg = encoder, cfg
        self.patch, self.prefix = geo["patch_size"], geo["num_prefix_tokens"]
        grid = geo["img_size"] // geo["patch_size"]
        dim = cfg.decoder_dim
        self.decoder_embed = nn.Linear(geo["embed_dim"], dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        pos = build_sincos2d_pos_embed([grid, grid], dim)
        self.register_buffer("decoder_pos_embed", torch.cat([torch.zeros(self.prefix, dim), pos])[None])
        self.decoder_blocks = nn.Sequential(*[Block(dim, cfg.decoder_heads, mlp_ratio=4.0, qkv_bias=True)
                                              for _ in range(cfg.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(dim)
        self.decoder_pred = nn.Linear(dim, geo["patch_size"] ** 2 * geo["in_chans"])
        self._init_decoder()

    def _init_decoder(self) -> None:
        """MAE initialisation of the decoder: xavier-uniform linears, unit LayerNorms, small mask token."""
        trunc_normal_(self.mask_token, std=0.02)
        for name, m in self.named_modules():
            if name.startswith("encoder"):
                continue
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def encode(self, imgs: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """Encoder features of the prefix tokens and the kept patches, (B, P + K, D)."""
        enc = self.encoder
        x = enc._pos_embed(enc.patch_embed(imgs))
        x = torch.cat([x[:, :self.prefix], _gather_tokens(x[:, self.prefix:], ids_keep)], dim=1)
        x = enc.norm_pre(x)
        x = checkpoint_seq(enc.blocks, x) if enc.grad_checkpointing and self.training else enc.blocks(x)
        return enc.norm(x)

    def decode(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Pixel predictions for every patch, (B, N, patch*patch*C)."""
        x = self.decoder_embed(latent)
        prefix, visible = x[:, :self.prefix], x[:, self.prefix:]
        masked = self.mask_token.expand(x.shape[0], ids_restore.shape[1] - visible.shape[1], -1)
        tokens = _gather_tokens(torch.cat([visible, masked], dim=1), ids_restore)
        x = torch.cat([prefix, tokens], dim=1) + self.decoder_pos_embed
        x = self.decoder_norm(self.decoder_blocks(x))
        return self.decoder_pred(x)[:, self.prefix:]

    def forward(self, imgs: torch.Tensor,
                seeds: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss, per-patch predictions and the mask (1 = masked) for a batch of images (masks seeded per sample)."""
        n = (imgs.shape[-2] // self.patch) * (imgs.shape[-1] // self.patch)
        ids_keep, mask, ids_restore = random_masking(imgs.shape[0], n, self.cfg.mask_ratio, imgs.device, seeds)
        pred = self.decode(self.encode(imgs, ids_keep), ids_restore)
        loss = masked_pixel_loss(pred, patchify(imgs, self.patch), mask, self.cfg.norm_pix_loss)
        return loss, pred, mask


class MAEObjective(SingleModuleObjective):
    """The MAE objective for the engine: one module, loss on batch['image']."""

    name = "mae"

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """MAE loss of a batch and what to log."""
        loss, _, mask = self.model(batch["image"], batch.get("seed"))
        return loss, {"loss_mae": loss.detach(), "masked_fraction": mask.mean()}


def build_encoder(cfg: PretrainConfig) -> nn.Module:
    """The config's backbone from the registry at the training size, with its gradient checkpointing."""
    overrides = dict(cfg.backbone_overrides)
    if cfg.image_size is not None:
        overrides.setdefault("img_size", cfg.image_size)
    encoder = create_backbone(cfg.backbone, cfg.in_chans, **overrides)
    encoder.set_grad_checkpointing(cfg.grad_checkpointing)
    return encoder


def on_encoder(cfg: PretrainConfig, planar: Callable[[nn.Module], Any],
               volume: Callable[[Any, nn.Module], Any]) -> Any:
    """The objective on the config's encoder: `planar(encoder)`, or for a volume encoder `volume(module, encoder)`
    with pretrain/volume.py as `module` (imported on first use) after its config checks."""
    encoder = build_encoder(cfg)
    if not is_volume_encoder(encoder):
        return planar(encoder)
    from synthfm.pretrain import volume as module

    module.check_volume_config(cfg)
    return volume(module, encoder)


@register_objective("mae")
def build_mae(cfg: PretrainConfig) -> MAEObjective:
    """Build the encoder from the registry and wrap it in a masked autoencoder (the 3D one for a volume encoder)."""
    return on_encoder(cfg, lambda enc: MAEObjective(MaskedAutoencoder(enc, cfg.mae)),
                      lambda volume, enc: volume.build_mae3d(enc, cfg.mae))
