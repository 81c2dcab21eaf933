"""Encoder references resolve in one place (synthfm.models.encoders)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from synthfm.errors import SynthfmError
from synthfm.models.checkpoint import save_pretrained
from synthfm.models.encoders import random_backbone, resolve_encoder

TINY = {"img_size": 32, "depth": 1, "embed_dim": 48, "num_heads": 3}


def test_random_backbone_parses_only_random_references() -> None:
    """'random:<name>' gives the name; folders, files and 'pixels' give None."""
    assert random_backbone("random:vit_tiny_p8_64") == "vit_tiny_p8_64"
    assert random_backbone("runs/pretrain/encoder") is None
    assert random_backbone("pixels") is None


def test_random_then_saved_folder_round_trip(tmp_path: Path) -> None:
    """A seeded random encoder, saved with save_pretrained, resolves from its folder with the same outputs."""
    torch.manual_seed(0)
    enc = resolve_encoder("random:vit_tiny_p8_64", 1, overrides=TINY).eval()
    assert enc.patch_embed.proj.in_channels == 1 and len(enc.blocks) == 1
    folder = save_pretrained(enc, tmp_path / "enc")
    again = resolve_encoder(str(folder), 1).eval()
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(enc(x), again(x))


def test_checkpoint_file_needs_a_backbone(tmp_path: Path) -> None:
    """A checkpoint file without a named backbone is refused in words that say what to set."""
    f = tmp_path / "weights.safetensors"
    f.write_bytes(b"")
    with pytest.raises(SynthfmError, match="no backbone is named"):
        resolve_encoder(str(f), 3)
