"""RaSD prototype disentangling learning (Wei et al., "Free lunch in medical image foundation model pre-training").

Our reading of the paper (its text gives the idea, not the equations we could check): every RaSD image comes
with the label map of its random structures; region-wise features of one structure should be cohesive and
those of different structures separated. We implement that as follows.

1. The encoder sees the whole image; its patch tokens go through an MLP projection and are L2-normalised.
2. The label map is one-hot encoded and average-pooled to the patch grid, giving each patch's fractional
   coverage by every structure (background, label 0, is a region too unless `include_background` is off).
3. A structure's prototype is the coverage-weighted mean of the patch features, L2-normalised; structures
   covering less than `min_coverage` patches of area get none.
4. Each patch is classified among the prototypes of its own image: InfoNCE with temperature over
   cosine similarities, whose target is the patch's coverage distribution over the valid prototypes (a
   one-hot target for a patch inside one structure). This pulls a patch toward its structure's prototype
   and pushes it away from the other structures' prototypes of the same image.
5. With `views=2` a second view of each image is made in the batch (random resized crop + flip of image and
   label map with one affine grid, plus a random gain/offset); patches of each view are classified among
   the prototypes of both views (structure labels are shared by the views), so features must also be
   invariant to the crop and the intensity change.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from synthfm.errors import SynthfmError
from synthfm.models.backbones import backbone_geometry
from synthfm.pretrain.config import PretrainConfig, RaSDObjectiveConfig
from synthfm.pretrain.mae import on_encoder, sample_noise
from synthfm.pretrain.objective import SingleModuleObjective, register_objective

RASD_RECIPES: dict[str, dict[str, Any]] = {
    # CPU demo and tests: ViT-Ti/8 at 64 px on on-the-fly RaSD images with their structure masks.
    "rasd_vit_tiny_demo": {
        "objective": "rasd", "backbone": "vit_tiny_p8_64", "image_size": 64, "in_chans": 1,
        "rasd": {"proj_dim": 128, "hidden_dim": 256, "temperature": 0.1, "views": 2},
        "crop_scale": (0.5, 1.0), "batch_size": 32, "optim": {"base_lr": 1e-3, "warmup_steps": 10},
        "stages": [{"name": "main", "sources": [{"source": "rasd", "n": 1024}], "steps": 200}],
        "checkpoint_every": 50,
    },
    # The same objective on 32^3 volumes of RaSD's 3D stream with a 3D ViT-Ti (pretrain/volume.py).
    "rasd3d_vit_tiny_demo": {
        "objective": "rasd", "backbone": "vit3d_tiny_p8_32", "image_size": 32, "in_chans": 1,
        "rasd": {"proj_dim": 128, "hidden_dim": 256, "temperature": 0.1, "views": 2},
        "batch_size": 8, "optim": {"base_lr": 1e-3, "warmup_steps": 10},
        "stages": [{"name": "main", "sources": [{"source": "rasd", "n": 512}], "steps": 200}],
        "checkpoint_every": 50,
    },
}


def patch_coverage(mask: torch.Tensor, patch: int, classes: int) -> torch.Tensor:
    """Label maps (B, H, W) -> fraction of every patch covered by each class, (B, classes, N) in row-major order."""
    onehot = F.one_hot(mask.long(), classes).permute(0, 3, 1, 2).float()
    return F.avg_pool2d(onehot, patch).flatten(2)


def structure_prototypes(feats: torch.Tensor, coverage: torch.Tensor) -> torch.Tensor:
    """Coverage-weighted mean patch feature per structure, (B, K, D), from feats (B, N, D) and coverage (B, K, N)."""
    area = coverage.sum(-1, keepdim=True)
    return coverage @ feats / area.clamp_min(1e-6)


def prototype_nce(feats: torch.Tensor, coverage: torch.Tensor, protos: torch.Tensor, valid: torch.Tensor,
                  temperature: float) -> torch.Tensor:
    """InfoNCE of patches (B, N, D) over their image's prototypes (B, K, D), target = coverage over valid ones."""
    logits = feats @ protos.transpose(1, 2) / temperature
    logits = logits.masked_fill(~valid[:, None, :], float("-inf"))
    target = coverage.transpose(1, 2) * valid[:, None, :]
    weight = target.sum(-1)
    target = target / weight.clamp_min(1e-6)[..., None]
    nll = -(target * logits.log_softmax(-1).nan_to_num(neginf=0.0)).sum(-1)
    return (nll * weight).sum() / weight.sum().clamp_min(1e-6)


def second_view(imgs: torch.Tensor, onehot: torch.Tensor, scale: tuple[float, float],
                seeds: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """Same random resized crop + h-flip of images and one-hot label maps (one affine grid), then gain/offset.

    With per-sample `seeds` (the engine's batch['seed']) each sample's draws come from its own seed, so its
    second view is the same on any rank, batch size or resume; without, from the global RNG.
    """
    b = imgs.shape[0]
    draws = torch.rand(b, 6, device=imgs.device) if seeds is None else sample_noise(seeds, 6, imgs.device)
    u, gain_offset = draws[:, :4], draws[:, 4:, None, None, None]
    side = (scale[0] + (scale[1] - scale[0]) * u[:, 0]).sqrt()
    flip = torch.where(u[:, 1] < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=imgs.device)
    theta[:, 0, 0], theta[:, 1, 1] = side * flip, side
    theta[:, 0, 2], theta[:, 1, 2] = (1 - side) * (2 * u[:, 2] - 1), (1 - side) * (2 * u[:, 3] - 1)
    grid = F.affine_grid(theta, list(imgs.shape), align_corners=False)
    out = F.grid_sample(imgs, grid, align_corners=False)
    labels = F.grid_sample(onehot, grid, align_corners=False)
    return out * (0.8 + 0.4 * gain_offset[:, 0]) + (0.4 * gain_offset[:, 1] - 0.2), labels


class PrototypeDisentangler(nn.Module):
    """A timm ViT encoder plus an MLP projection of its patch tokens, trained with prototype InfoNCE."""

    def __init__(self, encoder: nn.Module, cfg: RaSDObjectiveConfig) -> None:
        super().__init__()
        geo = backbone_geometry(encoder)
        self.encoder, self.cfg = encoder, cfg
        self.patch, self.prefix = geo["patch_size"], geo["num_prefix_tokens"]
        self.head = nn.Sequential(nn.Linear(geo["embed_dim"], cfg.hidden_dim), nn.GELU(),
                                  nn.Linear(cfg.hidden_dim, cfg.proj_dim))

    def patch_features(self, imgs: torch.Tensor) -> torch.Tensor:
        """L2-normalised projected patch tokens, (B, N, proj_dim)."""
        tokens = self.encoder.forward_features(imgs)[:, self.prefix:]
        return F.normalize(self.head(tokens), dim=-1)

    def views(self, imgs: torch.Tensor, mask: torch.Tensor,
              seeds: torch.Tensor | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(features, coverage) of each view; coverage (B, K, N) over classes 0..max label of the batch."""
        onehot = F.one_hot(mask.long(), int(mask.max()) + 1).permute(0, 3, 1, 2).float()
        pairs = [(imgs, onehot)]
        if self.cfg.views == 2:
            pairs.append(second_view(imgs, onehot, self.cfg.view_scale, seeds))
        return [(self.patch_features(x), F.avg_pool2d(m, self.patch).flatten(2)) for x, m in pairs]

    def forward(self, imgs: torch.Tensor, mask: torch.Tensor,
                seeds: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean prototype InfoNCE over every (patch view, prototype view) pair, and what to log."""
        views = self.views(imgs, mask, seeds)
        protos = []
        for feats, cov in views:
            valid = cov.sum(-1) >= self.cfg.min_coverage
            if not self.cfg.include_background:
                valid[:, 0] = False
            protos.append((F.normalize(structure_prototypes(feats, cov), dim=-1), valid))
        losses = [prototype_nce(feats, cov, p, valid, self.cfg.temperature) for feats, cov in views
                  for p, valid in protos]
        loss = torch.stack(losses).mean()
        n_protos = protos[0][1].sum(-1).float().mean()
        return loss, {"loss_proto": loss.detach(), "prototypes_per_image": n_protos}


class RaSDObjective(SingleModuleObjective):
    """The RaSD objective for the engine: one module, loss on batch['image'] and batch['mask']."""

    name = "rasd"

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Prototype disentangling loss of a batch and what to log."""
        if "mask" not in batch:
            raise SynthfmError("the rasd objective needs structure masks, which only 'rasd' sources provide",
                               "train the rasd objective on stages whose sources are all 'rasd'")
        return self.model(batch["image"], batch["mask"], batch.get("seed"))


@register_objective("rasd")
def build_rasd(cfg: PretrainConfig) -> RaSDObjective:
    """Build the encoder from the registry and attach the projection head (the 3D objective for a volume encoder)."""
    return on_encoder(cfg, lambda enc: RaSDObjective(PrototypeDisentangler(enc, cfg.rasd)),
                      lambda volume, enc: volume.build_rasd3d(enc, cfg.rasd))
