"""Tests of the backbone registry: every entry's shape and size, small ones built and run."""

from __future__ import annotations

import pytest
import torch

from synthfm.errors import SynthfmError
from synthfm.models.backbones import (
    BACKBONES,
    BackboneSpec,
    backbone_geometry,
    backbone_names,
    create_backbone,
    parameter_count,
    register_backbone,
)

# name -> (img_size, patch, width, depth, LayerScale, register tokens)
EXPECTED = {
    "vit_tiny_p8_64": (64, 8, 192, 12, False, 0),
    "vit_small_p16_224": (224, 16, 384, 12, False, 0),
    "vit_base_p16_224": (224, 16, 768, 12, False, 0),
    "vit_large_p16_224": (224, 16, 1024, 24, False, 0),
    "vit_large_p14_224": (224, 14, 1024, 24, True, 0),
    "vit_large_p14_reg4_224": (224, 14, 1024, 24, True, 4),
    "vit3d_tiny_p8_32": (32, 8, 192, 12, False, 0),
    "vit3d_base_p16_96": (96, 16, 768, 12, False, 0),
}
VOLUME = {"vit3d_tiny_p8_32", "vit3d_base_p16_96"}  # 3D patch embedding: (B, C, D, H, W) input, cubic patches
CNNS = {"resnet18": 11_176_512}  # torchvision's published 11,689,512 less the 1000-class fc (512 x 1000 + 1000)
VITS = [n for n in backbone_names() if n not in CNNS]
SMALL = [n for n in VITS if parameter_count(n) < 30e6]


def vit_params(img: int, patch: int, dim: int, depth: int, layer_scale: bool, regs: int, chans: int = 3,
               dims: int = 2) -> int:
    """Closed-form parameter count of a timm ViT without head (register models keep tokens out of pos_embed)."""
    tokens = (img // patch) ** dims + (0 if regs else 1)  # reg models: no_embed_class
    embed = chans * patch**dims * dim + dim + dim + tokens * dim + regs * dim
    block = 12 * dim * dim + 13 * dim + (2 * dim if layer_scale else 0)
    return embed + depth * block + 2 * dim


def test_registry_is_covered() -> None:
    """Every registered backbone has an expectation here (a new entry must add one)."""
    assert sorted([*EXPECTED, *CNNS]) == backbone_names()
    assert {n for n in backbone_names() if BACKBONES[n].family == "cnn"} == set(CNNS)


@pytest.mark.parametrize("name", VITS)
def test_geometry_and_parameter_count(name: str) -> None:
    """Meta-device build: geometry as registered, parameter count equal to the closed form."""
    img, patch, dim, depth, ls, regs = EXPECTED[name]
    with torch.device("meta"):
        model = create_backbone(name)
    geo = backbone_geometry(model)
    assert (geo["img_size"], geo["patch_size"], geo["embed_dim"], geo["depth"]) == (img, patch, dim, depth)
    assert geo["num_prefix_tokens"] == 1 + regs
    assert parameter_count(name) == vit_params(img, patch, dim, depth, ls, regs, dims=3 if name in VOLUME else 2)


def test_large_models_match_published_sizes() -> None:
    """ViT-L/16 (RETFound) and ViT-L/14 (DINOv2) are ~303M parameters without a head."""
    assert parameter_count("vit_large_p16_224") == 303_301_632
    assert abs(parameter_count("vit_large_p14_224") - 303.2e6) < 0.1e6


@pytest.mark.parametrize("name", SMALL)
def test_small_backbones_run(name: str) -> None:
    """Small backbones build for real, map (B, C, H, W) to (B, width) and pass gradients to the patch embedding."""
    img = EXPECTED[name][0]
    torch.manual_seed(0)
    model = create_backbone(name)
    out = model(torch.randn(2, 3, *(img,) * (3 if name in VOLUME else 2)))
    assert out.shape == (2, EXPECTED[name][2])
    out.square().mean().backward()
    assert model.patch_embed.proj.weight.grad.abs().sum() > 0


def test_cnn_baseline_takes_any_size_and_timm_drop_path() -> None:
    """resnet18: the published size without its classifier, 512 pooled features at 28 or 32 px, grey input,
    and stochastic depth through timm's drop_path_rate (rising to the rate on the last block)."""
    from timm.layers import DropPath

    from synthfm.models.baselines import is_vit

    assert parameter_count("resnet18") == CNNS["resnet18"]
    model = create_backbone("resnet18", in_chans=1, drop_path_rate=0.2)
    assert not is_vit(model) and model.num_features == 512
    for size in (28, 32):
        assert model(torch.randn(2, 1, size, size)).shape == (2, 512)
    assert isinstance(model.layer4[1].drop_path, DropPath) and model.layer4[1].drop_path.drop_prob == 0.2
    assert is_vit(create_backbone("vit_tiny_p8_64", depth=1))


def test_overrides_and_channels() -> None:
    """Overrides reach timm (img_size, depth) and grayscale input changes the patch embedding."""
    model = create_backbone("vit_tiny_p8_64", in_chans=1, img_size=32, depth=2)
    geo = backbone_geometry(model)
    assert (geo["img_size"], geo["depth"], geo["in_chans"]) == (32, 2, 1)
    assert model(torch.randn(3, 1, 32, 32)).shape == (3, 192)
    assert model.synthfm_backbone == {"name": "vit_tiny_p8_64", "in_chans": 1,
                                      "overrides": {"img_size": 32, "depth": 2}}


def test_unknown_name_lists_choices() -> None:
    """An unknown name is a SynthfmError naming every registered backbone."""
    with pytest.raises(SynthfmError) as err:
        create_backbone("vit_huge_p99")
    assert all(n in str(err.value) for n in backbone_names())


def test_bad_override_is_named() -> None:
    """A keyword timm does not know is reported with the override."""
    with pytest.raises(SynthfmError, match="not_an_arg"):
        create_backbone("vit_tiny_p8_64", not_an_arg=3)


def test_register_rejects_duplicates() -> None:
    """Names are unique in the registry."""
    with pytest.raises(ValueError, match="already registered"):
        register_backbone(BackboneSpec("vit_tiny_p8_64", "vit_tiny_patch16_224"))
    assert BACKBONES["vit_tiny_p8_64"].timm_name == "vit_tiny_patch16_224"
