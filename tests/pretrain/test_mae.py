"""Tests of the MAE objective: patch order, masking, the masked normalised-pixel loss, and the named recipes."""

from __future__ import annotations

import pytest
import torch

from synthfm.models.backbones import create_backbone, parameter_count
from synthfm.pretrain.config import MAEConfig, pretrain_config
from synthfm.pretrain.engine import stage_schedule
from synthfm.pretrain.mae import (
    MAE_RECIPES,
    MaskedAutoencoder,
    build_mae,
    masked_pixel_loss,
    patchify,
    peak_lr,
    random_masking,
)

SMALL = MAEConfig(decoder_dim=32, decoder_depth=1, decoder_heads=2)


def _mae(**kw: object) -> MaskedAutoencoder:
    """A seeded two-block ViT-Ti MAE at 32 px (16 patches of 8 px)."""
    torch.manual_seed(0)
    return MaskedAutoencoder(create_backbone("vit_tiny_p8_64", img_size=32, depth=2, **kw), SMALL)


def test_patchify_matches_patch_order() -> None:
    """Patch n = row * grid + col holds that window's pixels, channel last, like the patch embedding."""
    imgs = torch.randn(2, 3, 32, 32)
    p = patchify(imgs, 8)
    assert p.shape == (2, 16, 192)
    row, col = 2, 3
    window = imgs[1, :, row * 8:(row + 1) * 8, col * 8:(col + 1) * 8].permute(1, 2, 0).reshape(-1)
    assert torch.equal(p[1, row * 4 + col], window)


def test_patchify_agrees_with_patch_embedding() -> None:
    """A linear map of patchified pixels equals the timm conv patch embedding with the same weights."""
    enc = create_backbone("vit_tiny_p8_64", img_size=32, depth=1)
    imgs = torch.randn(2, 3, 32, 32)
    w = enc.patch_embed.proj.weight.permute(0, 2, 3, 1).reshape(192, -1)  # (D, p, p, C) like patchify
    manual = patchify(imgs, 8) @ w.T + enc.patch_embed.proj.bias
    assert torch.allclose(manual, enc.patch_embed(imgs), atol=1e-5)


def test_random_masking() -> None:
    """Exactly int(N * (1 - ratio)) patches are kept per sample, the kept ones are unmasked, restore inverts."""
    torch.manual_seed(0)
    keep, mask, restore = random_masking(4, 64, 0.75, torch.device("cpu"))
    assert keep.shape == (4, 16)
    assert mask.sum(1).tolist() == [48.0] * 4
    assert torch.gather(mask, 1, keep).sum() == 0
    assert not torch.equal(keep[0].sort().values, keep[1].sort().values)  # per-sample subsets
    shuffle = torch.argsort(restore, dim=1)
    assert torch.equal(torch.gather(shuffle, 1, restore), torch.arange(64).expand(4, -1))


def test_seeded_masks_depend_only_on_the_sample_seed() -> None:
    """With per-sample seeds, a sample's mask is the same alone, in any batch order, and whatever the global RNG."""
    seeds = torch.tensor([11, 22, 33, 44])
    torch.manual_seed(0)
    _, mask, _ = random_masking(4, 64, 0.75, torch.device("cpu"), seeds)
    torch.manual_seed(1)
    _, halves, _ = random_masking(2, 64, 0.75, torch.device("cpu"), seeds[[3, 1]])
    _, alone, _ = random_masking(1, 64, 0.75, torch.device("cpu"), seeds[:1])
    assert torch.equal(halves, mask[[3, 1]]) and torch.equal(alone, mask[:1])
    assert mask.sum(1).tolist() == [48.0] * 4 and not torch.equal(mask[0], mask[1])


def test_loss_counts_masked_patches_only() -> None:
    """Changing predictions on visible patches leaves the loss unchanged; masked patches change it."""
    target, pred = torch.randn(2, 16, 12), torch.randn(2, 16, 12)
    mask = torch.zeros(2, 16)
    mask[:, :4] = 1
    base = masked_pixel_loss(pred, target, mask, norm_pix=False)
    visible, masked = pred.clone(), pred.clone()
    visible[:, 8:] += 5
    masked[:, :4] += 5
    assert torch.equal(masked_pixel_loss(visible, target, mask, False), base)
    assert masked_pixel_loss(masked, target, mask, False) > base + 1
    assert torch.allclose(base, (pred[:, :4] - target[:, :4]).square().mean())


def test_norm_pix_target() -> None:
    """With norm_pix, predicting the per-patch standardised pixels gives zero loss (up to the 1e-6 epsilon)."""
    target = torch.randn(2, 16, 12) * 3 + 7
    norm = (target - target.mean(-1, keepdim=True)) / target.var(-1, keepdim=True).sqrt()
    assert masked_pixel_loss(norm, target, torch.ones(2, 16), norm_pix=True) < 1e-6
    assert masked_pixel_loss(norm, target, torch.ones(2, 16), norm_pix=False) > 10


def test_encoder_sees_visible_patches_only() -> None:
    """The first encoder block gets 1 + 4 tokens (class + 25% of 16); the decoder predicts all 16 patches."""
    model = _mae()
    seen = []
    model.encoder.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    loss, pred, mask = model(torch.randn(3, 3, 32, 32))
    assert seen == [torch.Size([3, 5, 192])]
    assert pred.shape == (3, 16, 192) and mask.shape == (3, 16)
    assert loss.ndim == 0 and loss.item() > 0
    loss.backward()
    assert model.encoder.cls_token.grad.abs().sum() > 0 and model.mask_token.grad.abs().sum() > 0


def test_register_tokens_stay_prefix() -> None:
    """With 4 register tokens the encoder sees 1 + 4 + kept tokens and the decoder still predicts N patches."""
    torch.manual_seed(0)
    enc = create_backbone("vit_large_p14_reg4_224", img_size=28, embed_dim=32, depth=1, num_heads=2)
    model = MaskedAutoencoder(enc, MAEConfig(decoder_dim=16, decoder_depth=1, decoder_heads=2, mask_ratio=0.5))
    seen = []
    model.encoder.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    _, pred, _ = model(torch.randn(2, 3, 28, 28))
    assert seen == [5 + 2] and pred.shape == (2, 4, 14 * 14 * 3)


def test_paper_recipe() -> None:
    """RETFound/FM-MEH MAE: ViT-L/16, decoder 8x512, mask 0.75, 800 epochs, 15 warm-up, lr 1e-3 at batch 1792."""
    cfg = pretrain_config({"recipe": "mae_vit_large_paper"})
    assert cfg.backbone == "vit_large_p16_224" and parameter_count(cfg.backbone) == 303_301_632
    assert (cfg.mae.decoder_depth, cfg.mae.decoder_dim, cfg.mae.mask_ratio) == (8, 512, 0.75)
    assert cfg.image_size == 224 and cfg.crop_scale == (0.2, 1.0)
    assert peak_lr(cfg, 4 * cfg.batch_size) == pytest.approx(1e-3)  # 4 GPUs x 448
    assert peak_lr(cfg, 896) == pytest.approx(5e-4)  # MAE linear scaling rule
    steps, warmup = stage_schedule(cfg.stages[0], cfg.optim, epoch_len=904_170, global_batch=1792)
    assert (steps, warmup) == (800 * 505, 15 * 505)  # ceil(904170 / 1792) = 505 steps per epoch


def test_paper_recipe_builds_on_meta() -> None:
    """The paper MAE (ViT-L encoder + 8x512 decoder) has the closed-form parameter count."""
    with torch.device("meta"):
        obj = build_mae(pretrain_config({"recipe": "mae_vit_large_paper"}))
    total = sum(p.numel() for p in obj.model.parameters())
    d = 512
    decoder = 1024 * d + d + d + 8 * (12 * d * d + 13 * d) + 2 * d + d * 768 + 768
    assert total == 303_301_632 + decoder


def test_recipe_override_and_unknown() -> None:
    """YAML keys override a recipe (nested merge); an unknown recipe lists the known ones."""
    cfg = pretrain_config({"recipe": "mae_vit_tiny_demo", "mae": {"mask_ratio": 0.6}})
    assert cfg.mae.mask_ratio == 0.6 and cfg.mae.decoder_dim == 128
    with pytest.raises(Exception, match="mae_vit_large_paper"):
        pretrain_config({"recipe": "nope"})
    assert set(MAE_RECIPES) >= {"mae_vit_large_paper", "mae_vit_tiny_demo"}
