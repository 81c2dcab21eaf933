"""The classifier of the adaptation recipe: encoders loaded for the card's channels and image size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from synthfm.models.backbones import create_backbone
from synthfm.train import classifier as tc


def test_in_chans_override_and_rgb_checkpoint_on_grey_card(tmp_path: Path) -> None:
    """backbone_overrides {in_chans: 1} (configs/cxr_tb.yaml, rasd.yaml) builds a grey encoder, from random init
    and from a 3-channel checkpoint file; an override that contradicts the card is one clear error."""
    from synthfm.errors import SynthfmError
    from synthfm.synth.writer import PhantomConfig, render_phantom
    from synthfm.train.classifier_config import ClassifierConfig

    card = render_phantom(tmp_path / "cxr", PhantomConfig(generator="cxr_phantom", n=8, size=32))
    small = {"depth": 2, "img_size": 32, "embed_dim": 48, "num_heads": 3}
    torch.manual_seed(0)
    rgb = create_backbone("vit_tiny_p8_64", 3, **small)
    torch.save({"model": rgb.state_dict()}, tmp_path / "rgb.pth")
    for encoder, backbone in (("random:vit_tiny_p8_64", None), (str(tmp_path / "rgb.pth"), "vit_tiny_p8_64")):
        cfg = ClassifierConfig(card=str(card), task="tb", encoder=encoder, backbone=backbone,
                          backbone_overrides={"in_chans": 1, **small})
        enc = tc.load_encoder(cfg, 1)
        assert enc.patch_embed.proj.in_channels == 1
    assert torch.allclose(enc.patch_embed.proj.weight, rgb.patch_embed.proj.weight.sum(1, keepdim=True))
    bad = ClassifierConfig(card=str(card), task="tb", encoder="random:vit_tiny_p8_64",
                           backbone_overrides={"in_chans": 3})
    with pytest.raises(SynthfmError, match=r"in_chans is 3 but card .* has 1 channel"):
        tc.load_encoder(bad, 1)


def test_encoder_takes_another_image_size_or_names_the_patch_size(tmp_path: Path) -> None:
    import torch

    from synthfm.errors import SynthfmError
    from synthfm.models.backbones import create_backbone
    from synthfm.models.checkpoint import from_pretrained, save_pretrained
    from synthfm.train.classifier import fit_image_size

    enc = create_backbone("vit_tiny_p8_64", 3, img_size=32)
    fit_image_size(enc, 48, "enc")
    assert enc.pos_embed.shape[1] == 1 + (48 // 8) ** 2
    assert enc(torch.zeros(1, 3, 48, 48)).shape == (1, enc.num_features)
    with pytest.raises(SynthfmError, match="not a multiple of encoder enc's patch size 8"):
        fit_image_size(enc, 50, "enc")
    save_pretrained(enc, tmp_path / "enc")  # an exported encoder is rebuilt at the size it was adapted to
    assert from_pretrained(tmp_path / "enc").pos_embed.shape == enc.pos_embed.shape
