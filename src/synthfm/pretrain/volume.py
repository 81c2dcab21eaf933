"""3D pretraining: MAE and RaSD prototype disentangling on volume encoders (a timm ViT with `PatchEmbed3d`).

`objective: mae` or `objective: rasd` with a 3D backbone (e.g. `vit3d_tiny_p8_32`) builds these instead of the 2D
objectives; the engine, its checkpoints and its resume are the same. Sources are volumes at the encoder's size:
`rasd` renders RaSD's 3D stream (label maps included, for the prototype objective), and a path names a NIfTI
card (`modality: volume`). Both are flipped at random along each axis under the sample's seeded torch RNG.

- MAE: random masking of cubic patches, the encoder on visible tokens, the 2D MAE's decoder with fixed 3D
  sin-cos positions, and the normalised-voxel loss on masked patches.
- Prototypes: structure coverage is average-pooled over cubic patches; the second view is a random resized
  3D crop + flip of volume and label map with one affine grid, plus a gain/offset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from synthfm.data.manifest import load_card
from synthfm.data.nifti import volume_transform
from synthfm.data.readers import open_dataset
from synthfm.errors import SynthfmError
from synthfm.models.backbones import backbone_geometry
from synthfm.models.vit3d import patchify3d, sincos3d_pos_embed
from synthfm.pretrain.config import MAEConfig, PretrainConfig, RaSDObjectiveConfig, SourceConfig
from synthfm.pretrain.mae import MAEObjective, MaskedAutoencoder, masked_pixel_loss, random_masking, sample_noise
from synthfm.pretrain.rasd_objective import PrototypeDisentangler, RaSDObjective
from synthfm.synth.rasd import RaSDConfig, RaSDStream


# ---- sources --------------------------------------------------------------------------------------------------
def random_flips(*vols: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The same random flip along each of the last three axes for every tensor (draws from the torch RNG)."""
    dims = [d for d in (-3, -2, -1) if bool(torch.rand(()) < 0.5)]
    return tuple(v.flip(dims) if dims else v for v in vols)


class RaSDVolumeSource(Dataset):
    """RaSD's 3D stream: sample i rendered from (seed, i) as a (1, D, H, W) volume normalised like a volume card."""

    def __init__(self, size: int, n: int, seed: int) -> None:
        self.stream = RaSDStream(RaSDConfig(size=size, dims=3), seed=seed, length=n)

    def __len__(self) -> int:
        return len(self.stream)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.stream.sample(i)
        image, mask = random_flips(s["image"], s["mask"])
        return {"image": (image - 0.5) / 0.25, "mask": mask.contiguous()}


class _Flipped(Dataset):
    """A volume card's samples with random flips along each axis."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.base[i]
        return {**item, "image": random_flips(item["image"])[0]}


def open_volume_source(src: SourceConfig, size: int) -> Dataset:
    """RaSD's 3D stream, or a NIfTI volume card at `size` voxels per side."""
    if src.source == "rasd":
        return RaSDVolumeSource(size, src.n, src.seed)
    if src.source == "phantom":
        raise SynthfmError("there is no 3D phantom generator; a volume encoder trains on 'rasd' or a NIfTI card",
                           "use source: rasd, or the path of a card with modality: volume")
    data = load_card(src.source)
    if data.card.source.format != "nifti":
        raise SynthfmError(f"card {src.source} is '{data.card.modality}' images ({data.card.source.format}), but the "
                           "backbone is a volume encoder", "train a 3D backbone on NIfTI volume cards or 'rasd'")
    return _Flipped(open_dataset(data, src.split, transform=volume_transform(data.card.modality, size)))


class VolumeSources:
    """Mixin: objectives over a volume encoder open their stage sources as volumes at the encoder's size."""

    size: int

    def open_source(self, src: SourceConfig, cache: Path) -> Dataset:
        """The engine's hook for an objective's own sources."""
        return open_volume_source(src, self.size)


# ---- MAE ------------------------------------------------------------------------------------------------------
class MaskedAutoencoder3d(MaskedAutoencoder):
    """The MAE over cubic patches: the 2D MAE's encoder path and decoder blocks, with 3D positions and targets."""

    def __init__(self, encoder: nn.Module, cfg: MAEConfig) -> None:
        super().__init__(encoder, cfg)
        grid = tuple(encoder.patch_embed.grid_size)
        pos = sincos3d_pos_embed(grid, cfg.decoder_dim)
        self.decoder_pos_embed = torch.cat([torch.zeros(self.prefix, cfg.decoder_dim), pos])[None]
        self.decoder_pred = nn.Linear(cfg.decoder_dim, self.patch**3 * backbone_geometry(encoder)["in_chans"])
        nn.init.xavier_uniform_(self.decoder_pred.weight)
        nn.init.zeros_(self.decoder_pred.bias)

    def forward(self, imgs: torch.Tensor,
                seeds: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss, per-patch predictions and the mask (1 = masked) for a batch of volumes (masks seeded per sample)."""
        n = self.encoder.patch_embed.num_patches
        ids_keep, mask, ids_restore = random_masking(imgs.shape[0], n, self.cfg.mask_ratio, imgs.device, seeds)
        pred = self.decode(self.encode(imgs, ids_keep), ids_restore)
        loss = masked_pixel_loss(pred, patchify3d(imgs, self.patch), mask, self.cfg.norm_pix_loss)
        return loss, pred, mask


class MAE3DObjective(VolumeSources, MAEObjective):
    """The MAE objective on volumes (loss on batch['image'], sources opened as volumes)."""

    def __init__(self, model: MaskedAutoencoder3d) -> None:
        super().__init__(model)
        self.size = int(model.encoder.patch_embed.img_size[0])


# ---- RaSD prototypes ------------------------------------------------------------------------------------------
def second_view3d(vols: torch.Tensor, onehot: torch.Tensor, scale: tuple[float, float],
                  seeds: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """One random resized 3D crop + left-right flip of volumes and one-hot label maps (one affine grid), then a
    gain/offset; `scale` is the range of the crop's volume fraction. Seeded per sample as the 2D view is."""
    b = vols.shape[0]
    draws = torch.rand(b, 7, device=vols.device) if seeds is None else sample_noise(seeds, 7, vols.device)
    side = (scale[0] + (scale[1] - scale[0]) * draws[:, 0]).pow(1 / 3)
    flip = torch.where(draws[:, 1] < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 3, 4, device=vols.device)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, 2, 2] = side * flip, side, side
    for axis in range(3):
        theta[:, axis, 3] = (1 - side) * (2 * draws[:, 2 + axis] - 1)
    grid = F.affine_grid(theta, list(vols.shape), align_corners=False)
    out = F.grid_sample(vols, grid, align_corners=False)
    labels = F.grid_sample(onehot, grid, align_corners=False)
    gain, offset = draws[:, 5, None, None, None, None], draws[:, 6, None, None, None, None]
    return out * (0.8 + 0.4 * gain) + (0.4 * offset - 0.2), labels


class PrototypeDisentangler3d(PrototypeDisentangler):
    """Prototype InfoNCE over the patch tokens of a volume encoder (coverage pooled over cubic patches)."""

    def views(self, imgs: torch.Tensor, mask: torch.Tensor,
              seeds: torch.Tensor | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(features, coverage) of each view; coverage (B, K, N) over classes 0..max label of the batch."""
        onehot = F.one_hot(mask.long(), int(mask.max()) + 1).permute(0, 4, 1, 2, 3).float()
        pairs = [(imgs, onehot)]
        if self.cfg.views == 2:
            pairs.append(second_view3d(imgs, onehot, self.cfg.view_scale, seeds))
        return [(self.patch_features(x), F.avg_pool3d(m, self.patch).flatten(2)) for x, m in pairs]


class RaSD3DObjective(VolumeSources, RaSDObjective):
    """The RaSD prototype objective on volumes with their structure label maps."""

    def __init__(self, model: PrototypeDisentangler3d) -> None:
        super().__init__(model)
        self.size = int(model.encoder.patch_embed.img_size[0])


def build_mae3d(encoder: nn.Module, cfg: MAEConfig) -> MAE3DObjective:
    """The 3D MAE around a volume encoder."""
    return MAE3DObjective(MaskedAutoencoder3d(encoder, cfg))


def build_rasd3d(encoder: nn.Module, cfg: RaSDObjectiveConfig) -> RaSD3DObjective:
    """The 3D prototype objective around a volume encoder."""
    return RaSD3DObjective(PrototypeDisentangler3d(encoder, cfg))


def check_volume_config(cfg: PretrainConfig) -> None:
    """A volume encoder takes one channel (RaSD's 3D stream and volume cards are grayscale)."""
    if cfg.in_chans != 1:
        raise SynthfmError(f"backbone {cfg.backbone} embeds volumes, which have 1 channel, but in_chans is "
                           f"{cfg.in_chans}", "set in_chans: 1")
