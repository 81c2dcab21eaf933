"""A registry of named backbones over timm: one name -> one timm model and its keyword arguments.

Every backbone is a timm model without a classifier head (`num_classes=0`), built from scratch
(`pretrained=False`: weights come from our own checkpoints or `import_checkpoint`, never a hub). All are
`VisionTransformer`s except the CNN baseline `resnet18` (family "cnn").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import timm
import torch
from torch import nn

from synthfm.errors import SynthfmError
from synthfm.models.vit3d import PatchEmbed3d


@dataclass(frozen=True)
class BackboneSpec:
    """A named backbone: the timm architecture, its keyword arguments and what it is shaped after."""

    name: str
    timm_name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    family: str = "vit"


BACKBONES: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Add a backbone to the registry (names are unique)."""
    if spec.name in BACKBONES:
        raise ValueError(f"backbone {spec.name!r} is already registered")
    BACKBONES[spec.name] = spec
    return spec


for _spec in (
    BackboneSpec("vit_tiny_p8_64", "vit_tiny_patch16_224", {"img_size": 64, "patch_size": 8},
                 "ViT-Ti (12x192) on 64 px with 8 px patches: tests and the CPU demo"),
    BackboneSpec("vit_small_p16_224", "vit_small_patch16_224", {}, "ViT-S/16 (12x384)"),
    BackboneSpec("vit_base_p16_224", "vit_base_patch16_224", {}, "ViT-B/16 (12x768)"),
    BackboneSpec("vit_large_p16_224", "vit_large_patch16_224", {}, "ViT-L/16 (24x1024): RETFound / MAE encoder"),
    BackboneSpec("vit_large_p14_224", "vit_large_patch14_dinov2", {"img_size": 224},
                 "ViT-L/14 with LayerScale (24x1024): DINOv2 backbone at 224 px"),
    BackboneSpec("vit_large_p14_reg4_224", "vit_large_patch14_reg4_dinov2", {"img_size": 224},
                 "ViT-L/14 with LayerScale and 4 register tokens: DINOv2-reg at 224 px"),
    BackboneSpec("vit3d_tiny_p8_32", "vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8,
                                                              "embed_layer": PatchEmbed3d},
                 "ViT-Ti (12x192) on 32^3 volumes with 8^3 patches (64 tokens): 3D tests and smoke runs"),
    BackboneSpec("vit3d_base_p16_96", "vit_base_patch16_224", {"img_size": 96, "patch_size": 16,
                                                               "embed_layer": PatchEmbed3d},
                 "ViT-B (12x768) on 96^3 volumes with 16^3 patches (216 tokens)"),
    BackboneSpec("resnet18", "resnet18", {}, "ResNet-18 (11.2 M parameters, any input size): the small-CNN "
                 "baseline, trained from scratch", family="cnn"),
):
    register_backbone(_spec)


def image_size(encoder: nn.Module, size: int | None = None, name: str = "") -> int:
    """The image size an encoder reads: `size` when given, else a ViT's own (its patch embedding's)."""
    if size:
        return int(size)
    embed = getattr(encoder, "patch_embed", None)
    if embed is None or not hasattr(embed, "img_size"):
        raise SynthfmError(f"encoder {name or type(encoder).__name__} is not a ViT, so it has no built-in image size",
                           "set image_size (e.g. the size the other arms are adapted at)")
    return int(embed.img_size[0])


def backbone_names() -> list[str]:
    """All registered backbone names."""
    return sorted(BACKBONES)


def backbone_spec(name: str) -> BackboneSpec:
    """The spec of a registered backbone, with an error listing the choices."""
    if name not in BACKBONES:
        raise SynthfmError(f"unknown backbone {name!r}; registered: {', '.join(backbone_names())}",
                           "use one of the registered names, or register_backbone() a new one")
    return BACKBONES[name]


def backbone_kwargs(name: str, in_chans: int = 3, **overrides: Any) -> dict[str, Any]:
    """The full timm keyword arguments of a backbone (registry values, then overrides)."""
    return {**backbone_spec(name).kwargs, "in_chans": in_chans, "num_classes": 0, **overrides}


def create_backbone(name: str, in_chans: int = 3, **overrides: Any) -> nn.Module:
    """Build a registered backbone with random weights; `overrides` go to timm (e.g. img_size, depth)."""
    spec = backbone_spec(name)
    kwargs = backbone_kwargs(name, in_chans, **overrides)
    try:
        model = timm.create_model(spec.timm_name, pretrained=False, **kwargs)
    except TypeError as err:
        raise SynthfmError(f"backbone {name!r} rejected overrides {overrides}: {err}",
                           "pass only timm VisionTransformer arguments (img_size, patch_size, depth, ...)"
                           if spec.family == "vit" else f"pass only arguments timm's {spec.timm_name} takes "
                           "(a CNN takes any image size: no img_size)") from None
    model.synthfm_backbone = {"name": name, "in_chans": in_chans, "overrides": dict(overrides)}
    return model


def parameter_count(name: str, in_chans: int = 3, **overrides: Any) -> int:
    """Number of parameters of a backbone, counted on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        model = create_backbone(name, in_chans, **overrides)
    return sum(p.numel() for p in model.parameters())


def backbone_geometry(model: nn.Module) -> dict[str, int]:
    """Image size, patch size, width, depth and prefix tokens of a timm ViT."""
    img = model.patch_embed.img_size
    patch = model.patch_embed.patch_size
    return {"img_size": int(img[0]), "patch_size": int(patch[0]), "embed_dim": int(model.embed_dim),
            "depth": len(model.blocks), "num_prefix_tokens": int(model.num_prefix_tokens),
            "in_chans": int(model.patch_embed.proj.in_channels)}
