"""Pooling of encoder tokens: cls / mean / cls+mean against hand-computed token picks, timm's own pooling."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from synthfm.errors import SynthfmError
from synthfm.models.pooling import (
    OWN,
    all_pools,
    available_pools,
    native_pool,
    pool_features,
    pooled_dim,
    resolve_pool,
)

TINY = {"img_size": 16, "patch_size": 8, "embed_dim": 12, "depth": 1, "num_heads": 2, "num_classes": 0}


def vit(**kw: object) -> nn.Module:
    """A seeded 1-block ViT on 16 px with 8 px patches (4 patch tokens)."""
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **{**TINY, **kw}).eval()


@torch.no_grad()
def test_pools_are_the_hand_picked_tokens_and_differ() -> None:
    enc, x = vit(), torch.randn(3, 3, 16, 16)
    tokens = enc.forward_features(x)  # (3, 1 + 4, 12), final norm applied
    assert tokens.shape == (3, 5, 12)
    cls, mean = tokens[:, 0], (tokens[:, 1] + tokens[:, 2] + tokens[:, 3] + tokens[:, 4]) / 4
    got = all_pools(enc, x)
    assert set(got) == {"cls", "mean", "cls+mean"} == set(available_pools(enc))
    torch.testing.assert_close(got["cls"], cls)
    torch.testing.assert_close(got["mean"], mean)
    torch.testing.assert_close(got["cls+mean"], torch.cat([cls, mean], dim=1))
    assert pooled_dim(enc, "cls+mean") == 24 and pooled_dim(enc, "mean") == 12
    assert not torch.allclose(got["cls"], got["mean"], atol=1e-3)
    for pool in ("cls", "mean", "cls+mean"):
        torch.testing.assert_close(pool_features(enc, x, pool), got[pool])
    # the encoder's own pooling (global_pool 'token') is the CLS token: unchanged behaviour with pool left out
    assert native_pool(enc) == "cls" and resolve_pool(enc, None) == "cls"
    torch.testing.assert_close(pool_features(enc, x), enc(x))
    torch.testing.assert_close(enc(x), cls)


@torch.no_grad()
def test_mean_skips_every_prefix_token_and_uses_fc_norm() -> None:
    x = torch.randn(2, 3, 16, 16)
    reg = vit(reg_tokens=2)  # class token, 2 register tokens, 4 patches
    tokens = reg.forward_features(x)
    assert reg.num_prefix_tokens == 3
    torch.testing.assert_close(pool_features(reg, x, "mean"), tokens[:, 3:].mean(1))
    avg = vit(global_pool="avg")  # timm: no final norm on tokens, LayerNorm (fc_norm) after pooling
    assert native_pool(avg) == "mean"
    torch.testing.assert_close(pool_features(avg, x, "mean"), avg(x))
    torch.testing.assert_close(pool_features(avg, x, "mean"), avg.fc_norm(avg.forward_features(x)[:, 1:].mean(1)))


@torch.no_grad()
def test_mean_of_a_token_vit_is_timm_avg_without_fc_norm() -> None:
    """What an exported `pool: mean` classifier is rebuilt as: same weights, global_pool='avg', fc_norm=False."""
    enc, x = vit(), torch.randn(2, 3, 16, 16)
    plain = vit(global_pool="avg", fc_norm=False)
    plain.load_state_dict(enc.state_dict())
    torch.testing.assert_close(plain(x), pool_features(enc, x, "mean"))


@torch.no_grad()
def test_encoders_without_tokens_have_one_pooling() -> None:
    torch.manual_seed(0)
    cnn = timm.create_model("resnet18", pretrained=False, num_classes=0, in_chans=1).eval()
    x = torch.randn(2, 1, 32, 32)
    assert available_pools(cnn) == (OWN,) and native_pool(cnn) == OWN and resolve_pool(cnn, None) == OWN
    torch.testing.assert_close(pool_features(cnn, x), cnn(x))
    torch.testing.assert_close(all_pools(cnn, x)[OWN], cnn(x))
    with pytest.raises(SynthfmError, match="has no tokens") as err:
        resolve_pool(cnn, "mean", "resnet18")
    assert "leave 'pool' out" in err.value.fix
    pixels = nn.Flatten()
    assert available_pools(pixels) == (OWN,)
    torch.testing.assert_close(pool_features(pixels, x), x.flatten(1))
    no_cls = vit(class_token=False, global_pool="avg")
    assert available_pools(no_cls) == ("mean",)
    with pytest.raises(SynthfmError, match="offers only"):
        resolve_pool(no_cls, "cls")
