"""DINOv2 (Oquab et al. 2023) over timm ViTs: a student and an EMA teacher, DINO + iBOT + KoLeo losses, multi-crop.

The student sees 2 global and N local crops, with rectangular blocks of patches of some global crops replaced by a
learnable mask token before the blocks (iBOT block masking, drawn per sample with the crops); the teacher (EMA of
the student) sees the global crops unmasked. DINO: cross-entropy between the teacher's centred, sharpened CLS
prototype scores and the student's, over pairs of different views. iBOT: the same on the masked patch tokens
(optionally through a separate head), weighted 1 / masked patches per image. KoLeo spreads the student's global CLS
features. Teacher targets are centred by an EMA of the teacher's scores, or balanced by Sinkhorn-Knopp as in DINOv2.
Schedules: teacher temperature warms up 0.04 -> 0.07 over the first `teacher_temp_warmup` of the first stage; the
teacher momentum follows a cosine 0.992 -> 1 over each stage; weight decay a cosine 0.04 -> 0.2 (engine, from
`optim.weight_decay_end`); lr a linear warm-up then cosine (engine).

The losses, heads, masking and Sinkhorn-Knopp are written here against the DINOv2 reference code
(facebookresearch/dinov2, `dinov2/loss`, `dinov2/data/masking.py`) and tested against hand computations:
lightly is not a dependency of this project, and its DINO parts have no iBOT block masking or Sinkhorn teacher.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models._manipulate import checkpoint_seq
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from synthfm.models.backbones import backbone_geometry, create_backbone
from synthfm.pretrain.config import DINOConfig, PretrainConfig
from synthfm.pretrain.objective import Objective, register_objective

PIXEL_MEAN, PIXEL_STD = 0.5, 0.25  # how sources normalise (RaSD exactly; card presets approximately)

DINO_RECIPES: dict[str, dict[str, Any]] = {
    # FM-MEH / FM-SDPP DINOv2 (001): ViT-L/14 teacher and student, head 2048/384/131072, <= 128 masked patches,
    # batch 320 (4 x 80), 100 epochs with 10 warm-up to lr 2e-4 from 1e-6, cosine; global crops 0.32-1.0 @ 224,
    # local 0.05-0.32 @ 96, colour jitter (0.4, 0.4, 0.2, 0.1), blur, solarise p 0.2. Unstated in 001 and taken
    # from the DINOv2 defaults: 8 local crops, AdamW(0.9, 0.999) wd cosine 0.04 -> 0.2, clip 3.0, KoLeo 0.1,
    # teacher momentum cosine 0.992 -> 1, teacher temperature 0.04 -> 0.07 over 30 % of training, block masking
    # of half the global crops at 10-50 %, Sinkhorn-Knopp teacher (named in 001), fp16.
    "dinov2_vit_large_paper": {
        "objective": "dinov2", "backbone": "vit_large_p14_224", "image_size": 224, "crop_scale": (1.0, 1.0),
        "dinov2": {"prototypes": 131072, "hidden_dim": 2048, "bottleneck_dim": 384, "local_crops": 8,
                   "local_size": 96, "max_masked": 128, "centring": "sinkhorn_knopp"},
        "batch_size": 80,
        "optim": {"lr": 2e-4, "min_lr": 1e-6, "weight_decay": 0.04, "weight_decay_end": 0.2, "betas": (0.9, 0.999),
                  "warmup_epochs": 10, "clip_grad": 3.0},
        "stages": [{"name": "main", "sources": [{"source": "phantom", "n": 10000}], "epochs": 100}],
        "mixed_precision": "fp16", "checkpoint_every": 1000,
    },
    # CPU demo and tests: ViT-Ti/8 at 64 px (local crops 32 px), 256 prototypes, 2 local crops.
    "dinov2_vit_tiny_demo": {
        "objective": "dinov2", "backbone": "vit_tiny_p8_64", "image_size": 64, "crop_scale": (1.0, 1.0),
        "dinov2": {"prototypes": 256, "hidden_dim": 256, "bottleneck_dim": 64, "local_crops": 2, "local_size": 32,
                   "max_masked": 32},
        "batch_size": 32, "optim": {"lr": 5e-4, "weight_decay": 0.04, "weight_decay_end": 0.2, "betas": (0.9, 0.999),
                                    "warmup_steps": 10, "clip_grad": 3.0},
        "stages": [{"name": "main", "sources": [{"source": "phantom", "n": 256}], "steps": 200}],
        "checkpoint_every": 50,
    },
}


# ---- multi-crop ------------------------------------------------------------------------------------------------
def _clamp01(x: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] (bicubic resizing overshoots)."""
    return x.clamp(0, 1)


def _blur_kernel(size: int) -> int:
    """An odd Gaussian kernel of at most 9 that fits a `size`-pixel crop."""
    return max(3, min(9, (size // 2) * 2 - 1))


@dataclass
class MultiCrop:
    """Normalised image -> 2 global and N local DINOv2 views (crop, flip, colour, blur, solarise), normalised."""

    global_size: int
    local_size: int
    local_crops: int
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.32)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
    solarize_p: float = 0.2
    patch_size: int | None = None  # with `masking`: iBOT masks of the global crops on this patch grid
    masking: DINOConfig | None = None
    _pipelines: dict[tuple[Any, ...], T.Compose] = field(default_factory=dict, init=False, repr=False, compare=False)

    def _colour(self, channels: int) -> list[Any]:
        """Colour jitter (p 0.8) and grayscale (p 0.2) for RGB; brightness/contrast only for one channel."""
        b, c, s, h = self.jitter
        if channels == 3:
            return [T.RandomApply([T.ColorJitter(b, c, s, h)], p=0.8), T.RandomGrayscale(p=0.2)]
        return [T.RandomApply([T.ColorJitter(b, c)], p=0.8)]

    def pipeline(self, channels: int, size: int, scale: tuple[float, float], blur_p: float,
                 solarize_p: float) -> T.Compose:
        """The augmentation of one kind of view (built once per kind)."""
        key = (channels, size, scale, blur_p, solarize_p)
        if key not in self._pipelines:
            self._pipelines[key] = T.Compose([
                T.RandomResizedCrop(size, scale=scale, interpolation=InterpolationMode.BICUBIC, antialias=True),
                T.RandomHorizontalFlip(), T.Lambda(_clamp01), *self._colour(channels),
                T.RandomApply([T.GaussianBlur(_blur_kernel(size), sigma=(0.1, 2.0))], p=blur_p),
                T.RandomSolarize(0.5, p=solarize_p)])
        return self._pipelines[key]

    def view(self, pixels: torch.Tensor, size: int, scale: tuple[float, float], blur_p: float,
             solarize_p: float) -> torch.Tensor:
        """One augmented view of a [0, 1] image, normalised back."""
        pipeline = self.pipeline(pixels.shape[0], size, scale, blur_p, solarize_p)
        return (pipeline(pixels) - PIXEL_MEAN) / PIXEL_STD

    def __call__(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Global views (blur p 1.0; blur p 0.1 + solarise) and local views (blur p 0.5), as stacked tensors."""
        pixels = (image * PIXEL_STD + PIXEL_MEAN).clamp(0, 1)
        g = [self.view(pixels, self.global_size, self.global_scale, 1.0, 0.0),
             self.view(pixels, self.global_size, self.global_scale, 0.1, self.solarize_p)]
        loc = [self.view(pixels, self.local_size, self.local_scale, 0.5, 0.0) for _ in range(self.local_crops)]
        empty = pixels.new_zeros(0, pixels.shape[0], self.local_size, self.local_size)
        out = {"global_crops": torch.stack(g), "local_crops": torch.stack(loc) if loc else empty}
        if self.masking is not None and self.patch_size is not None:
            side = math.ceil(self.global_size / self.patch_size)
            out["ibot_masks"] = ibot_masks(len(g), (side, side), self.masking)
        return out


# ---- losses and schedules ----------------------------------------------------------------------------------------
def teacher_momentum(step: int, total: int, base: float = 0.992, final: float = 1.0) -> float:
    """Cosine schedule of the EMA momentum from `base` at step 0 to `final` at step `total`."""
    return final - (final - base) * (math.cos(math.pi * min(step / max(total, 1), 1.0)) + 1) / 2


def centred_probs(logits: torch.Tensor, centre: torch.Tensor, temp: float) -> torch.Tensor:
    """Teacher targets: softmax((logits - centre) / temp) in float32."""
    return F.softmax((logits.float() - centre) / temp, dim=-1)


def ema_centre(centre: torch.Tensor, logits: torch.Tensor, momentum: float) -> torch.Tensor:
    """centre * m + batch mean of the logits (over all processes) * (1 - m)."""
    mean = logits.detach().float().mean(dim=0, keepdim=True)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(mean)
        mean /= dist.get_world_size()
    return centre * momentum + mean * (1 - momentum)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean entropy of rows of probabilities (loss_dino minus this is the student-teacher KL)."""
    return -(probs * probs.clamp(min=1e-12).log()).sum(dim=-1).mean()


def dino_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], student_temp: float) -> torch.Tensor:
    """Mean cross-entropy of every student view against every teacher view but itself (student globals first)."""
    terms = []
    for i, s in enumerate(student):
        logp = F.log_softmax(s.float() / student_temp, dim=-1)
        terms += [-(t * logp).sum(dim=-1).mean() for j, t in enumerate(teacher) if i != j]
    return torch.stack(terms).mean()


def ibot_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, student_temp: float) -> torch.Tensor:
    """Cross-entropy on masked patches (rows of student/teacher in mask order), 1/n_masked per image, / images."""
    ce = -(teacher * F.log_softmax(student.float() / student_temp, dim=-1)).sum(dim=-1)
    weight = (1.0 / mask.sum(dim=1).clamp(min=1)).unsqueeze(1).expand_as(mask)[mask]
    return (ce * weight).sum() / mask.shape[0]


def koleo_loss(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Kozachenko-Leonenko entropy estimate: -mean log distance of each L2-normalised row to its nearest other."""
    x = F.normalize(x.float(), dim=-1, eps=eps)
    with torch.no_grad():
        sims = x @ x.T
        sims.fill_diagonal_(-2.0)
        nearest = sims.argmax(dim=1)
    return -torch.log(torch.linalg.vector_norm(x - x[nearest] + eps, dim=-1) + eps).mean()


def mask_block(mask: torch.Tensor, budget: int, min_patches: int, aspect: float, tries: int = 10) -> int:
    """Mask one random rectangle of `min_patches`..`budget` patches (aspect in [aspect, 1/aspect]) that adds at
    most `budget` new patches; return how many it added (0 if none of `tries` rectangles fitted). In place.

    DINOv2's MaskingGenerator._mask, drawing from the torch RNG (which the data pipeline seeds per sample).
    """
    rows, cols = mask.shape
    for _ in range(tries):
        area = min_patches + (budget - min_patches) * float(torch.rand(()))
        ratio = math.exp(math.log(aspect) + (-2 * math.log(aspect)) * float(torch.rand(())))
        h, w = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if not (0 < h < rows and 0 < w < cols):
            continue
        top, left = int(torch.randint(rows - h + 1, ())), int(torch.randint(cols - w + 1, ()))
        window = mask[top:top + h, left:left + w]
        added = h * w - int(window.sum())
        if 0 < added <= budget:
            window.fill_(True)
            return added
    return 0


def block_mask(grid: tuple[int, int], count: int, max_block: int, min_patches: int, aspect: float) -> torch.Tensor:
    """(rows * cols,) bool: rectangles of at most `max_block` patches until about `count` are masked."""
    mask = torch.zeros(grid, dtype=torch.bool)
    done = 0
    while done < count:
        added = mask_block(mask, min(count - done, max_block), min_patches, aspect)
        if added == 0:
            break
        done += added
    return mask.flatten()


def ibot_masks(n: int, grid: tuple[int, int], cfg: DINOConfig) -> torch.Tensor:
    """(n, patches) bool iBOT masks: each crop is masked with p = mask_probability, with round(U(mask_ratio) * N)
    patches (at most max_masked) in blocks. Drawn crop by crop from the torch RNG, so a sample's masks do not
    depend on the batch it is in (DINOv2 instead masks exactly int(n * p) crops of each batch)."""
    patches = grid[0] * grid[1]
    lo, hi = cfg.mask_ratio
    out = torch.zeros(n, patches, dtype=torch.bool)
    for k in range(n):
        masked, u = float(torch.rand(())) < cfg.mask_probability, float(torch.rand(()))
        count = min(round((lo + (hi - lo) * u) * patches), cfg.max_masked)
        if masked and count > 0:
            out[k] = block_mask(grid, count, cfg.max_masked, min(cfg.min_block, count), cfg.block_aspect)
    return out


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, temp: float, iterations: int = 3) -> torch.Tensor:
    """DINOv2's Sinkhorn-Knopp teacher targets: rows (samples, over all processes) sum to 1 and each prototype
    gets about an equal share of the batch. Logits are prototype cosines (|x| <= 1), so exp(x / temp) is finite."""
    q = torch.exp(logits.float() / temp).T  # (K, B)
    rows, cols = q.shape[0], torch.tensor(q.shape[1], device=q.device)
    total = q.sum()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total)
        dist.all_reduce(cols)
    q /= total
    for _ in range(iterations):
        per_prototype = q.sum(dim=1, keepdim=True)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(per_prototype)
        q /= per_prototype * rows
        q /= q.sum(dim=0, keepdim=True) * cols
    return (q * cols).T


# ---- networks --------------------------------------------------------------------------------------------------
class DINOHead(nn.Module):
    """3-layer MLP (hidden, hidden, bottleneck), L2 normalisation, then weight-normalised prototypes (norm 1)."""

    def __init__(self, dim: int, hidden: int, bottleneck: int, prototypes: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))
        self.prototypes = nn.Linear(bottleneck, prototypes, bias=False)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Prototype scores (cosine similarities) of features x (..., dim)."""
        z = F.normalize(self.mlp(x), dim=-1, eps=1e-6)
        return F.linear(z, F.normalize(self.prototypes.weight, dim=-1))


class MaskedViT(nn.Module):
    """A timm ViT backbone with a DINO head (and optionally a separate iBOT patch head) and a mask token
    substituted on masked patch embeddings."""

    def __init__(self, backbone: nn.Module, head: DINOHead, ibot_head: DINOHead | None = None) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head
        self.ibot_head = ibot_head
        self.mask_token = nn.Parameter(torch.zeros(1, backbone.embed_dim))

    def patch_head(self, x: torch.Tensor) -> torch.Tensor:
        """Prototype scores of patch tokens: the iBOT head if separate, else the shared DINO head."""
        return (self.ibot_head or self.head)(x)

    def tokens(self, imgs: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Final-norm CLS (B, D) and patch tokens (B, N, D); patches where mask (B, N) is True see the mask token."""
        enc = self.backbone
        x = enc.patch_embed(imgs)
        if mask is not None:
            m = mask.reshape(*x.shape[:-1], 1)
            x = torch.where(m, self.mask_token.to(x.dtype).expand_as(x), x)
        x = enc.norm_pre(enc.patch_drop(enc._pos_embed(x)))
        x = checkpoint_seq(enc.blocks, x) if enc.grad_checkpointing and self.training else enc.blocks(x)
        x = enc.norm(x)
        return x[:, 0], x[:, enc.num_prefix_tokens:]


class DINOv2(nn.Module):
    """Student, EMA teacher, centres and schedule state; forward is the total loss and its parts."""

    def __init__(self, student: MaskedViT, cfg: DINOConfig) -> None:
        super().__init__()
        self.cfg, self.student = cfg, student
        self.teacher = copy.deepcopy(student).requires_grad_(False)
        k = cfg.prototypes
        k_patch = (cfg.ibot_prototypes or k) if cfg.ibot_separate_head else k
        self.register_buffer("centre", torch.zeros(1, k))
        self.register_buffer("patch_centre", torch.zeros(1, k_patch))
        self.register_buffer("temp_progress", torch.zeros(()))  # fraction of the first stage done (monotone)

    def teacher_temp(self) -> float:
        """Linear warm-up from warmup_teacher_temp to teacher_temp over the first `teacher_temp_warmup`."""
        c = self.cfg
        frac = 1.0 if c.teacher_temp_warmup == 0 else min(float(self.temp_progress) / c.teacher_temp_warmup, 1.0)
        return c.warmup_teacher_temp + (c.teacher_temp - c.warmup_teacher_temp) * frac

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher <- momentum * teacher + (1 - momentum) * student, parameter by parameter."""
        t, s = list(self.teacher.parameters()), [p.detach() for p in self.student.parameters()]
        torch._foreach_mul_(t, momentum)
        torch._foreach_add_(t, s, alpha=1 - momentum)

    def after_step(self, step: int, total: int) -> None:
        """After optimiser step `step` (0-based) of `total` in a stage: EMA the teacher, advance the temperature."""
        self.update_teacher(teacher_momentum(step, total, self.cfg.momentum_teacher, self.cfg.final_momentum))
        self.temp_progress.fill_(max(float(self.temp_progress), (step + 1) / max(total, 1)))

    def targets(self, logits: torch.Tensor, centre: torch.Tensor, temp: float) -> torch.Tensor:
        """Teacher probabilities: centred softmax, or Sinkhorn-Knopp (config `centring`)."""
        if self.cfg.centring == "sinkhorn_knopp":
            return sinkhorn_knopp(logits, temp, self.cfg.sinkhorn_iterations)
        return centred_probs(logits, centre, temp)

    def masks(self, batch: dict[str, Any], n: int, grid: tuple[int, int], device: torch.device) -> torch.Tensor:
        """(2B, N) view-major iBOT masks: the data pipeline's (seeded per sample), else drawn here."""
        if "ibot_masks" in batch:
            return batch["ibot_masks"].transpose(0, 1).flatten(0, 1).to(device)
        return ibot_masks(n, grid, self.cfg).to(device)

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss over a batch of {'global_crops' (B,2,C,H,W), 'local_crops' (B,N,C,h,w)[, 'ibot_masks'
        (B,2,N)]} and the parts."""
        c = self.cfg
        g = batch["global_crops"].transpose(0, 1).flatten(0, 1)  # view-major: (2B, C, H, W)
        n_global = batch["global_crops"].shape[1]
        grid = self.student.backbone.patch_embed.dynamic_feat_size(g.shape[-2:])
        mask = self.masks(batch, g.shape[0], tuple(grid), g.device)
        temp = self.teacher_temp()
        with torch.no_grad():
            t_cls, t_patch = self.teacher.tokens(g)
            t_logits, t_patch_logits = self.teacher.head(t_cls), self.teacher.patch_head(t_patch[mask])
            t_probs = self.targets(t_logits, self.centre, temp).chunk(n_global)
            t_patch_probs = self.targets(t_patch_logits, self.patch_centre, temp)
        s_cls, s_patch = self.student.tokens(g, mask)
        s_logits = list(self.student.head(s_cls).chunk(n_global))
        local = batch.get("local_crops")
        if local is not None and local.shape[1] > 0:
            s_logits += list(self.student.head(self.student.tokens(local.transpose(0, 1).flatten(0, 1))[0])
                             .chunk(local.shape[1]))
        loss_dino = dino_loss(s_logits, list(t_probs), c.student_temp)
        loss_ibot = ibot_loss(self.student.patch_head(s_patch[mask]), t_patch_probs, mask, c.student_temp)
        loss_koleo = sum(koleo_loss(x) for x in s_cls.chunk(n_global))
        if self.training and c.centring == "centring":
            self.centre.copy_(ema_centre(self.centre, t_logits, c.centre_momentum))
            if t_patch_logits.shape[0]:
                self.patch_centre.copy_(ema_centre(self.patch_centre, t_patch_logits, c.centre_momentum))
        loss = c.dino_weight * loss_dino + c.ibot_weight * loss_ibot + c.koleo_weight * loss_koleo
        return loss, {"loss_dino": loss_dino.detach(), "loss_ibot": loss_ibot.detach(),
                      "loss_koleo": loss_koleo.detach(), "teacher_temp": torch.tensor(temp, device=g.device),
                      "teacher_entropy": entropy(torch.cat(t_probs)),
                      "masked_fraction": mask.float().mean()}


class DINOv2Objective(Objective):
    """The DINOv2 objective for the engine: one module, multi-crop views, a teacher update after each step."""

    def __init__(self, model: DINOv2, views: MultiCrop) -> None:
        self.model, self._views = model, views

    def modules(self) -> dict[str, nn.Module]:
        """The trained modules by name (the teacher and centres are saved with them)."""
        return {"dino": self.model}

    def encoder(self) -> nn.Module:
        """The teacher backbone (what 001 adapts downstream)."""
        return self.model.teacher.backbone

    def views(self) -> MultiCrop:
        """The per-sample transform MixtureDataset applies (seeded per sample)."""
        return self._views

    def after_step(self, step: int, total: int) -> None:
        """Engine hook after each optimiser step."""
        self.model.after_step(step, total)

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """DINO + iBOT + KoLeo loss of a batch and what to log."""
        return self.model(batch)


@register_objective("dinov2")
def build_dino(cfg: PretrainConfig) -> DINOv2Objective:
    """Student backbone (dynamic size, padded to whole patches, for local crops), DINO head, EMA teacher, views."""
    overrides = {"dynamic_img_size": True, "dynamic_img_pad": True, **cfg.backbone_overrides}
    if cfg.image_size is not None:
        overrides.setdefault("img_size", cfg.image_size)
    backbone = create_backbone(cfg.backbone, cfg.in_chans, **overrides)
    backbone.set_grad_checkpointing(cfg.grad_checkpointing)
    geo, d = backbone_geometry(backbone), cfg.dinov2
    head = DINOHead(geo["embed_dim"], d.hidden_dim, d.bottleneck_dim, d.prototypes)
    ibot_head = (DINOHead(geo["embed_dim"], d.hidden_dim, d.bottleneck_dim, d.ibot_prototypes or d.prototypes)
                 if d.ibot_separate_head else None)
    size = geo["img_size"]
    local = d.local_size or max(geo["patch_size"], round(size * 96 / 224 / geo["patch_size"]) * geo["patch_size"])
    views = MultiCrop(size, local, d.local_crops, d.global_scale, d.local_scale, d.jitter, d.solarize_p,
                      geo["patch_size"], d)
    return DINOv2Objective(DINOv2(MaskedViT(backbone, head, ibot_head), d), views)
