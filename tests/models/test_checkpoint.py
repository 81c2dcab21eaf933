"""Tests of checkpoint I/O: safetensors round trip and RETFound / DINOv2 file imports with clear errors."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
import torch

from synthfm.errors import SynthfmError
from synthfm.models.backbones import create_backbone
from synthfm.models.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    from_pretrained,
    import_checkpoint,
    save_pretrained,
)

TINY = {"img_size": 32, "depth": 2}
# DINOv2-shaped (LayerScale, patch 14) but narrow and shallow, so tests stay fast
DINO_TINY = {"embed_dim": 64, "depth": 2, "num_heads": 2}


def _tiny(seed: int = 0, **kw: object) -> torch.nn.Module:
    """A seeded two-block ViT-Ti at 32 px."""
    torch.manual_seed(seed)
    return create_backbone("vit_tiny_p8_64", **{**TINY, **kw})


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    """Every tensor of two modules is identical."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def _mae_file(model: torch.nn.Module, path: Path, final_norm: str = "norm") -> Path:
    """A RETFound-style MAE file: {'model': encoder + decoder + mask_token, 'optimizer', 'epoch', 'args'}."""
    enc = {k.replace("norm.", f"{final_norm}.") if k.startswith("norm.") else k: v
           for k, v in model.state_dict().items()}
    dec = {"mask_token": torch.zeros(1, 1, 16), "decoder_embed.weight": torch.zeros(16, 192),
           "decoder_pos_embed": torch.zeros(1, 17, 16), "decoder_blocks.0.attn.qkv.weight": torch.zeros(48, 16),
           "decoder_norm.weight": torch.ones(16), "decoder_pred.weight": torch.zeros(192, 16)}
    ckpt = {"model": {**enc, **dec}, "optimizer": {"state": {}}, "epoch": 799,
            "args": argparse.Namespace(model="mae_vit_large_patch16", mask_ratio=0.75)}
    torch.save(ckpt, path)
    return path


def test_round_trip(tmp_path: Path) -> None:
    """save_pretrained -> from_pretrained rebuilds the same architecture and the same tensors."""
    model = _tiny(3, in_chans=1)
    out = save_pretrained(model, tmp_path / "enc", step=7)
    cfg = json.loads((out / CONFIG_FILE).read_text())
    assert cfg["name"] == "vit_tiny_p8_64" and cfg["in_chans"] == 1 and cfg["step"] == 7
    back = from_pretrained(out)
    _assert_same_weights(model, back)
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(model.eval()(x), back.eval()(x))
    assert not list(out.glob(".*tmp*")), "no temporary files left behind"


def test_from_pretrained_without_config(tmp_path: Path) -> None:
    """A directory whose save was interrupted before config.json is not silently loaded."""
    save_pretrained(_tiny(), tmp_path)
    (tmp_path / CONFIG_FILE).unlink()
    with pytest.raises(SynthfmError, match=CONFIG_FILE):
        from_pretrained(tmp_path)


def test_truncated_weights_are_an_error(tmp_path: Path) -> None:
    """A truncated safetensors file gives a clear error, not a crash deep in safetensors."""
    save_pretrained(_tiny(), tmp_path)
    weights = tmp_path / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(SynthfmError, match="truncated"):
        from_pretrained(tmp_path)


@pytest.mark.parametrize("final_norm", ["norm", "fc_norm"])
def test_import_retfound_mae(tmp_path: Path, final_norm: str) -> None:
    """RETFound/MAE layout: decoder keys and mask token dropped, fc_norm mapped to norm, Namespace args tolerated."""
    source = _tiny(1)
    path = _mae_file(source, tmp_path / "RETFound_cfp_weights.pth", final_norm)
    _assert_same_weights(source, import_checkpoint(path, _tiny(2)))


def test_import_dinov2_teacher_chunked(tmp_path: Path) -> None:
    """DINOv2 training layout: teacher.backbone. prefix, chunked blocks, heads dropped, pos_embed resampled."""
    torch.manual_seed(0)
    source = create_backbone("vit_large_p14_224", img_size=56, **DINO_TINY)  # 4x4 grid
    target = create_backbone("vit_large_p14_224", img_size=28, **DINO_TINY)  # 2x2 grid
    chunked = {re.sub(r"^blocks[.]([0-9]+)[.]", r"blocks.0.\1.", k): v for k, v in source.state_dict().items()}
    state = {f"teacher.backbone.{k}": v for k, v in chunked.items()}
    state.update({"teacher.backbone.mask_token": torch.zeros(1, 64), "teacher.dino_head.w": torch.zeros(8, 64),
                  "student.backbone.cls_token": torch.ones(1, 1, 64)})
    torch.save({"model": state}, tmp_path / "dinov2.pth")
    model = import_checkpoint(tmp_path / "dinov2.pth", target)
    got, want = model.state_dict(), source.state_dict()
    assert torch.equal(got["blocks.1.ls1.gamma"], want["blocks.1.ls1.gamma"])
    assert torch.equal(got["blocks.0.attn.qkv.weight"], want["blocks.0.attn.qkv.weight"])
    assert torch.equal(got["cls_token"], want["cls_token"])  # teacher's, not the student's ones
    assert got["pos_embed"].shape == (1, 1 + 4, 64)
    assert torch.equal(got["pos_embed"][:, 0], want["pos_embed"][:, 0])  # class position kept


def test_import_dinov2_registers(tmp_path: Path) -> None:
    """DINOv2-reg hub layout: register_tokens -> reg_token, pos_embed class entry folded into cls_token."""
    torch.manual_seed(0)
    target = create_backbone("vit_large_p14_reg4_224", img_size=28, **DINO_TINY)
    grid = 4
    state = {k: v for k, v in target.state_dict().items() if k not in ("reg_token", "pos_embed")}
    state.update({"register_tokens": torch.randn(1, 4, 64), "mask_token": torch.zeros(1, 64),
                  "pos_embed": torch.randn(1, 1 + grid, 64), "cls_token": torch.randn(1, 1, 64)})
    torch.save(state, tmp_path / "dinov2_vitl14_reg4.pth")
    got = import_checkpoint(tmp_path / "dinov2_vitl14_reg4.pth", target).state_dict()
    assert torch.equal(got["reg_token"], state["register_tokens"])
    assert torch.allclose(got["cls_token"], state["cls_token"] + state["pos_embed"][:, 0])
    assert torch.equal(got["pos_embed"], state["pos_embed"][:, 1:])


def test_import_safetensors_file(tmp_path: Path) -> None:
    """A bare .safetensors state dict is imported too."""
    source = _tiny(4)
    save_pretrained(source, tmp_path)
    _assert_same_weights(source, import_checkpoint(tmp_path / WEIGHTS_FILE, _tiny(5)))


def test_import_errors_list_keys(tmp_path: Path) -> None:
    """Missing keys, unexpected keys and shape mismatches are all named in one error."""
    state = _tiny().state_dict()
    del state["blocks.1.mlp.fc2.bias"]
    state["blocks.0.attn.qkv.weight"] = torch.zeros(10, 192)
    state["adapter.weight"] = torch.zeros(3)
    torch.save({"model": state}, tmp_path / "bad.pth")
    with pytest.raises(SynthfmError) as err:
        import_checkpoint(tmp_path / "bad.pth", _tiny())
    msg = str(err.value)
    assert "missing keys (1): blocks.1.mlp.fc2.bias" in msg
    assert "unexpected keys (1): adapter.weight" in msg
    assert "shape mismatches (1): blocks.0.attn.qkv.weight: file (10, 192) vs model (576, 192)" in msg


def test_import_wrong_patch_size_is_a_mismatch(tmp_path: Path) -> None:
    """A patch-16 file into a patch-8 model is reported, not silently resampled."""
    torch.manual_seed(0)
    torch.save(create_backbone("vit_tiny_p8_64", patch_size=16, **TINY).state_dict(), tmp_path / "p16.pth")
    with pytest.raises(SynthfmError, match=r"proj.weight: file \(192, 3, 16, 16\) vs model \(192, 3, 8, 8\)"):
        import_checkpoint(tmp_path / "p16.pth", _tiny())


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    """A file needing arbitrary unpickling is refused with weights_only=True and a fix is suggested."""
    torch.save({"model": _tiny().state_dict(), "extra": Path("x")}, tmp_path / "evil.pth")
    with pytest.raises(SynthfmError, match="weights_only=True") as err:
        import_checkpoint(tmp_path / "evil.pth", _tiny())
    assert "safetensors" in err.value.fix


def test_import_rgb_file_onto_grey_encoder(tmp_path: Path) -> None:
    """A 3-channel RETFound-style file onto a 1-channel encoder: patch embedding summed over RGB (timm's rule)."""
    source = _tiny(6)
    path = _mae_file(source, tmp_path / "RETFound_cfp_weights.pth")
    grey = import_checkpoint(path, "vit_tiny_p8_64", in_chans=1, **TINY)
    w = source.state_dict()["patch_embed.proj.weight"]
    assert grey.patch_embed.proj.weight.shape == (192, 1, 8, 8)
    assert torch.allclose(grey.patch_embed.proj.weight, w.sum(1, keepdim=True))
    assert torch.equal(grey.state_dict()["blocks.1.attn.qkv.weight"], source.state_dict()["blocks.1.attn.qkv.weight"])
    # a grey image through the adapted encoder = the same image as R = G = B through the RGB one
    x = torch.randn(2, 1, 32, 32)
    assert torch.allclose(grey.eval()(x), source.eval()(x.expand(-1, 3, -1, -1)), atol=1e-5)


def test_import_dinov2_rgb_onto_grey(tmp_path: Path) -> None:
    """A DINOv2-layout (patch 14, LayerScale) 3-channel file loads onto a 1-channel encoder."""
    torch.manual_seed(0)
    source = create_backbone("vit_large_p14_224", img_size=28, **DINO_TINY)
    torch.save({f"teacher.backbone.{k}": v for k, v in source.state_dict().items()}, tmp_path / "dinov2.pth")
    grey = import_checkpoint(tmp_path / "dinov2.pth", "vit_large_p14_224", in_chans=1, img_size=28, **DINO_TINY)
    x = torch.randn(1, 1, 28, 28)
    assert torch.allclose(grey.eval()(x), source.eval()(x.expand(-1, 3, -1, -1)), atol=1e-5)


def test_from_pretrained_adapts_channels(tmp_path: Path) -> None:
    """A saved RGB encoder rebuilt with in_chans=1 (and back to 3: repeated and scaled by 1/3)."""
    rgb = _tiny(7)
    save_pretrained(rgb, tmp_path / "rgb")
    grey = from_pretrained(tmp_path / "rgb", in_chans=1)
    assert grey.synthfm_backbone["in_chans"] == 1
    assert torch.allclose(grey.patch_embed.proj.weight, rgb.patch_embed.proj.weight.sum(1, keepdim=True))
    save_pretrained(grey, tmp_path / "grey")
    back = from_pretrained(tmp_path / "grey", in_chans=3)
    assert torch.allclose(back.patch_embed.proj.weight, grey.patch_embed.proj.weight.expand(-1, 3, -1, -1) / 3)
