"""The 3D patch embedding: token order, timm ViT integration, save/load, and the 3D sin-cos positions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from synthfm.errors import SynthfmError
from synthfm.models.backbones import backbone_geometry, create_backbone
from synthfm.models.checkpoint import from_pretrained, save_pretrained
from synthfm.models.vit3d import PatchEmbed3d, is_volume_encoder, patchify3d, sincos3d_pos_embed


def test_tokens_are_patchify3d_order() -> None:
    """With an identity kernel, token n holds patch n's voxels in patchify3d's order (d, h, w, channel)."""
    p, c = 2, 2
    embed = PatchEmbed3d(img_size=4, patch_size=p, in_chans=c, embed_dim=p**3 * c, bias=False)
    eye = torch.eye(p**3 * c).reshape(p**3 * c, p, p, p, c).permute(0, 4, 1, 2, 3)  # out, C, pd, ph, pw
    embed.proj.weight.data.copy_(eye)
    x = torch.randn(3, c, 4, 4, 4)
    assert embed.num_patches == 8 and embed.grid_size == (2, 2, 2)
    torch.testing.assert_close(embed(x), patchify3d(x, p))
    # token 1 is the patch at (d, h, w) = (0, 0, 1): voxels x[:, :, 0:2, 0:2, 2:4]
    torch.testing.assert_close(patchify3d(x, p)[:, 1, :c], x[:, :, 0, 0, 2])


def test_registry_volume_vit_round_trips(tmp_path: Path) -> None:
    model = create_backbone("vit3d_tiny_p8_32", 1, depth=2)
    assert is_volume_encoder(model) and not is_volume_encoder(create_backbone("vit_tiny_p8_64", depth=1))
    assert backbone_geometry(model) | {"depth": 0} == {"img_size": 32, "patch_size": 8, "embed_dim": 192, "depth": 0,
                                                        "num_prefix_tokens": 1, "in_chans": 1}
    x = torch.randn(2, 1, 32, 32, 32)
    model.eval()
    assert model.pos_embed.shape == (1, 65, 192) and model(x).shape == (2, 192)
    back = from_pretrained(save_pretrained(model, tmp_path / "enc"))
    back.eval()
    torch.testing.assert_close(back(x), model(x))
    with pytest.raises(SynthfmError, match=r"got input of shape \(2, 1, 16, 16, 16\)"):
        model(torch.randn(2, 1, 16, 16, 16))


def test_sincos3d_positions() -> None:
    pos = sincos3d_pos_embed((2, 3, 4), 14)  # 14 // 6 = 2 frequencies per axis: 12 channels + 2 zeros
    assert pos.shape == (24, 14) and (pos[:, 12:] == 0).all()
    assert pos[0, :12].tolist() == [0, 0, 1, 1] * 3  # position (0, 0, 0): sin 0, cos 0
    # position index 5 = (d, h, w) = (0, 1, 1): the w axis (last 4 channels) at w=1, first frequency 1
    assert pos[5, 8].item() == pytest.approx(torch.sin(torch.tensor(1.0)).item())
