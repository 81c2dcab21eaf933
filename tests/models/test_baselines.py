"""The non-pretrained baseline encoders: raw pixels, and which references name no file."""

from __future__ import annotations

import pytest
import torch

from synthfm.errors import SynthfmError
from synthfm.models.baselines import PixelEncoder, builds_from_scratch, is_vit, pixel_encoder


def test_pixel_encoder_flattens_the_image() -> None:
    enc = pixel_encoder(3, 4, "linear_probe")
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    assert enc.num_features == 48 and torch.equal(enc(x), x.reshape(2, 48))
    assert not list(enc.parameters()) and not is_vit(enc)
    with pytest.raises(SynthfmError, match=r"expects images of 3 x 4 x 4, got \(3, 8, 8\)"):
        enc(torch.zeros(1, 3, 8, 8))


def test_pixels_need_an_image_size_and_a_probe() -> None:
    with pytest.raises(SynthfmError, match="no built-in image size") as err:
        pixel_encoder(3, None, "linear_probe")
    assert "set image_size" in err.value.fix
    with pytest.raises(SynthfmError, match="nothing to train"):
        pixel_encoder(3, 32, "finetune")
    assert isinstance(pixel_encoder(1, 8, "linear_probe"), PixelEncoder)


def test_references_without_a_file() -> None:
    assert builds_from_scratch("pixels") and builds_from_scratch("random:resnet18")
    assert not builds_from_scratch("runs/x/encoder") and not builds_from_scratch("pixels/encoder")
