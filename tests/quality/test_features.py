"""Feature spaces: names, our encoders, Inception and DINOv2 from local files (weights-only), streaming."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from synthfm.data.images import load_image
from synthfm.data.manifest import load_card
from synthfm.errors import SynthfmError
from synthfm.models.backbones import create_backbone
from synthfm.models.checkpoint import save_pretrained, save_state
from synthfm.quality.config import SpaceConfig
from synthfm.quality.features import Resized, build_space, extract, space_name
from synthfm.quality.metadata import compare

from .conftest import TINY_SPACE


def test_space_names() -> None:
    assert space_name(SpaceConfig(encoder="runs/pre/mae-vitb")) == "synthfm-mae-vitb"
    assert space_name(SpaceConfig(kind="inception", weights="w.pth")) == "inception"
    dino = SpaceConfig(kind="dinov2", weights="w.pth", backbone="vit_large_p14_224")
    assert space_name(dino) == "dinov2-vit_large_p14_224"
    with pytest.raises(ValueError, match="needs 'weights'"):
        SpaceConfig(kind="inception")


def test_exported_encoder_matches_its_backbone(tmp_path: Path) -> None:
    enc = create_backbone("vit_tiny_p8_64", 3, depth=1, embed_dim=48, num_heads=3, img_size=32)
    save_pretrained(enc, tmp_path / "enc")
    space = build_space(SpaceConfig(encoder=str(tmp_path / "enc")), "fundus")
    x = torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        want = enc.eval()((x.float() / 255 - mean) / std)
    assert space.name == "synthfm-enc"
    assert torch.allclose(space(x), want, atol=1e-5)


def test_inception_from_local_file_weights_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch_fidelity.feature_extractor_inceptionv3 as inc

    with monkeypatch.context() as m:  # build one random-weight Inception to have a state dict to save
        m.setattr(inc.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
        m.setattr(inc, "load_state_dict_from_url", lambda *a, **k: {})
        state = inc.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).state_dict()
    torch.save(state, tmp_path / "inception.pth")
    space = build_space(SpaceConfig(kind="inception", weights=str(tmp_path / "inception.pth")), "fundus")
    feats = space(torch.randint(0, 255, (2, 3, 40, 40), dtype=torch.uint8))
    assert space.name == "inception" and feats.shape == (2, 2048)
    torch.save({"weights": state, "extra": object()}, tmp_path / "pickled.pth")
    with pytest.raises(SynthfmError, match="cannot load Inception weights"):
        build_space(SpaceConfig(kind="inception", weights=str(tmp_path / "pickled.pth")), "fundus")


def test_dinov2_from_local_file(tmp_path: Path) -> None:
    enc = create_backbone("vit_tiny_p8_64", 3, depth=1, embed_dim=48, num_heads=3)
    save_state(enc.state_dict(), tmp_path / "dino.safetensors")
    cfg = SpaceConfig(kind="dinov2", weights=str(tmp_path / "dino.safetensors"), backbone="vit_tiny_p8_64",
                      backbone_overrides={"depth": 1, "embed_dim": 48, "num_heads": 3})
    space = build_space(cfg, "fundus")
    assert space.name == "dinov2-vit_tiny_p8_64"
    assert space(torch.randint(0, 255, (3, 3, 50, 50), dtype=torch.uint8)).shape == (3, 48)


def test_extract_streams_rows_in_order_and_reuses_cache(tiny_cards: dict[str, Path], tmp_path: Path) -> None:
    data = load_card(tiny_cards["synth"])
    space = build_space(SpaceConfig(**TINY_SPACE), "fundus")
    rows = np.array([5, 2, 9])
    got = extract(data, rows, [space], 24, tmp_path, "s", batch_size=2)
    loaded = torch.stack([Resized(32)(load_image(data.image_path(r))) for r in rows])  # the pass loads at 32 px
    assert np.allclose(got[space.name], space(loaded).numpy(), atol=1e-5)
    assert got["pixels"].shape == (3, 24, 24) and got["pixels"].dtype == np.uint8
    mtime = (tmp_path / f"s_{space.name}.npy").stat().st_mtime_ns
    extract(data, rows, [space], 24, tmp_path, "s")
    assert (tmp_path / f"s_{space.name}.npy").stat().st_mtime_ns == mtime


def test_metadata_tests_match_hand_values() -> None:
    real = pd.Series(["F"] * 30 + ["M"] * 70)
    synth = pd.Series(["F"] * 60 + ["M"] * 40)
    res = compare(real, synth, numeric=False)
    table = np.array([[30, 70], [60, 40]])
    chi2 = stats.chi2_contingency(table)[0]
    assert res["statistic"] == pytest.approx(chi2)
    assert res["effect"] == pytest.approx(np.sqrt(stats.chi2_contingency(table, correction=False)[0] / 200))
    ages = compare(pd.Series(np.arange(50.0)), pd.Series(np.arange(25.0, 75.0)), numeric=True)
    assert ages["effect"] == pytest.approx(0.5) and ages["test"] == "ks"


def test_grey_maps_enlarge_smoothly_and_shrink_by_area() -> None:
    """A 28 px ramp enlarged to 96 px rises at every interior pixel (area averaging would replicate pixels into
    uneven plateaus, whose edges the audit's band-passes read as structure); shrinking still averages areas."""
    from synthfm.quality.features import grey_maps

    ramp = torch.linspace(0, 252, 28).repeat(28, 1).round().to(torch.uint8)
    up = grey_maps(ramp.expand(1, 3, 28, 28), 96)[0].int().numpy()
    assert up.shape == (96, 96) and (np.diff(up[48, 6:-6]) > 0).sum() >= 80
    down = grey_maps(torch.full((1, 3, 192, 192), 7, dtype=torch.uint8).index_fill_(3, torch.arange(0, 192, 2), 9),
                     96)[0]
    assert (down == 8).all()
