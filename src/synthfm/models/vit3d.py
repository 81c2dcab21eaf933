"""A 3D patch embedding for timm's VisionTransformer: cubic patches of a (B, C, D, H, W) volume become tokens.

`PatchEmbed3d` is passed to timm as `embed_layer`, so a volume encoder is an ordinary timm ViT (blocks, class
token, learned position embedding over the D/p x H/p x W/p grid, `forward_features`, pooling) and the rest of
synthfm (checkpoints, the pretraining engine, adaptation) treats it like any other backbone. Tokens are in
(d, h, w) row-major order, the order `patchify3d` and the 3D decoders use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from synthfm.errors import SynthfmError


def _triple(v: int | tuple[int, ...]) -> tuple[int, int, int]:
    t = (v,) * 3 if isinstance(v, int) else tuple(v)
    if len(t) == 2:  # timm passes a 2-tuple when it was given an int
        t = (t[0], *t)
    return int(t[0]), int(t[1]), int(t[2])


class PatchEmbed3d(nn.Module):
    """Volume to patch tokens: a Conv3d with kernel = stride = patch, flattened to (B, N, embed_dim)."""

    def __init__(self, img_size: int | tuple[int, ...] = 32, patch_size: int | tuple[int, ...] = 8, in_chans: int = 1,
                 embed_dim: int = 192, bias: bool = True, norm_layer: Callable[[int], nn.Module] | None = None,
                 dynamic_img_pad: bool = False, device: Any = None, dtype: Any = None, **_: Any) -> None:
        super().__init__()
        self.img_size, self.patch_size = _triple(img_size), _triple(patch_size)
        if any(s % p for s, p in zip(self.img_size, self.patch_size, strict=True)):
            raise SynthfmError(f"volume size {self.img_size} is not a multiple of the patch size {self.patch_size}",
                               "choose img_size as a multiple of patch_size")
        self.grid_size = tuple(s // p for s, p in zip(self.img_size, self.patch_size, strict=True))
        self.num_patches = self.grid_size[0] * self.grid_size[1] * self.grid_size[2]
        self.proj = nn.Conv3d(in_chans, embed_dim, self.patch_size, stride=self.patch_size, bias=bias,
                              device=device, dtype=dtype)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def feat_ratio(self, as_scalar: bool = True) -> int | tuple[int, int, int]:
        """Voxels per token along each axis."""
        return self.patch_size[0] if as_scalar else self.patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or tuple(x.shape[-3:]) != self.img_size:
            raise SynthfmError(f"a volume encoder for {self.img_size} voxels got input of shape {tuple(x.shape)}",
                               "feed (batch, channels, D, H, W) volumes at the encoder's size (prepare the card "
                               "with --size equal to it, or set image_size)")
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


def is_volume_encoder(model: nn.Module) -> bool:
    """Whether a timm ViT embeds 3D volumes."""
    return isinstance(getattr(model, "patch_embed", None), PatchEmbed3d)


def patchify3d(vols: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, D, H, W) -> (B, N, patch**3 * C), patches in the (d, h, w) row-major order of PatchEmbed3d."""
    b, c, d, h, w = vols.shape
    x = vols.reshape(b, c, d // patch, patch, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(b, (d // patch) * (h // patch) * (w // patch), patch**3 * c)


def sincos3d_pos_embed(grid: tuple[int, int, int], dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 3D sin-cos positions, (N, dim): each axis gets dim // 6 frequencies (sin and cos), the rest zeros."""
    freqs = dim // 6
    if freqs == 0:
        raise SynthfmError(f"a 3D sin-cos position embedding needs a width of at least 6, got {dim}",
                           "raise the decoder width")
    omega = 1.0 / temperature ** (torch.arange(freqs, dtype=torch.float32) / freqs)
    axes = torch.meshgrid(*[torch.arange(g, dtype=torch.float32) for g in grid], indexing="ij")
    parts = []
    for a in axes:
        angles = a.reshape(-1, 1) * omega[None]
        parts += [angles.sin(), angles.cos()]
    emb = torch.cat(parts, dim=1)
    return torch.cat([emb, torch.zeros(emb.shape[0], dim - emb.shape[1])], dim=1)
