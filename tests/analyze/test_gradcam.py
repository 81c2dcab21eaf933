"""Grad-CAM: a CNN trained on phantom DR grade looks at the lesions; the ViT path drops prefix tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage as ndi
from torch import nn

from synthfm.analyze.gradcam import GradCAMConfig, heat_ratio, pointing_hit, run_gradcam
from synthfm.models.backbones import create_backbone
from synthfm.models.gradcam import grad_cam, vit_reshape

SIZE = 128


def _paired_phantoms(clean: object, n: int) -> tuple[torch.Tensor, torch.Tensor, list]:
    """n eyes rendered twice, DR grade 0 and 4: the pairs differ only by their lesions."""
    samples = [clean(300 + i, SIZE, dr_grade=g) for i in range(n) for g in (0, 4)]  # type: ignore[operator]
    x = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).float() / 255.0 - 0.5
    y = torch.tensor([s.labels["dr_grade"] == 4 for s in samples], dtype=torch.float32)
    return x, y, samples


def _tiny_cnn() -> nn.Module:
    """Three convolutions with batch norm (the first with stride 2), global max pooling, one logit."""
    def conv(cin: int, cout: int, k: int, stride: int = 1) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(*conv(3, 16, 5, 2), *conv(16, 16, 3), *conv(16, 16, 3), nn.AdaptiveMaxPool2d(1),
                         nn.Flatten(), nn.Linear(16, 1))


def test_cnn_heat_falls_on_the_lesions(clean: object) -> None:
    """Pointing game on held-out grade-4 eyes: the heat maximum is on a lesion, and heat is denser there."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x, y, _ = _paired_phantoms(clean, 24)
        net = _tiny_cnn()
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        for _ in range(25):
            for idx in torch.randperm(len(x)).split(8):
                loss = nn.functional.binary_cross_entropy_with_logits(net(x[idx])[:, 0], y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        net.eval()
        xt, yt, test = _paired_phantoms(clean, 8)
        with torch.no_grad():
            acc = ((net(xt)[:, 0] > 0).float() == yt).float().mean().item()
        pos = [i for i in range(len(test)) if yt[i] == 1]
        heat = grad_cam(net, xt[pos], [0] * len(pos))
    finally:
        torch.set_num_threads(threads)
    assert acc >= 0.9
    assert heat.shape == (len(pos), SIZE, SIZE)
    masks = [test[i].masks["lesions"] for i in pos]
    hits = [pointing_hit(h, m, tolerance=2) for h, m in zip(heat, masks, strict=True)]
    ratios = [heat_ratio(h, m, test[i].masks["fov"]) for h, m, i in zip(heat, masks, pos, strict=True)]
    # chance of a hit: the share of the field of view covered by the dilated lesion masks
    chance = np.mean([ndi.binary_dilation(m > 0, iterations=2)[test[i].masks["fov"] > 0]
                      .mean() for m, i in zip(masks, pos, strict=True)])
    assert np.mean(hits) >= 0.5 and np.mean(hits) > 3 * chance, (hits, chance)
    assert np.median(ratios) > 3.0, ratios


def test_pointing_hit_and_heat_ratio_by_hand() -> None:
    """The maximum inside / outside the mask, with and without tolerance; heat ratio of a step map."""
    heat = np.zeros((10, 10))
    heat[2, 2] = 1.0
    mask = np.zeros((10, 10), np.uint8)
    mask[2:4, 4:6] = 1
    assert not pointing_hit(heat, mask, tolerance=0)
    assert pointing_hit(heat, mask, tolerance=2)
    step = np.where(mask > 0, 0.8, 0.2)
    assert heat_ratio(step, mask) == pytest.approx(4.0)


def test_vit_reshape_drops_class_and_register_tokens() -> None:
    """Tokens (B, 1 + 4 + 8*8, C) -> (B, C, 8, 8) with patch k at row k // 8, column k % 8."""
    vit = create_backbone("vit_tiny_p8_64", depth=1, embed_dim=24, num_heads=2, reg_tokens=4)
    assert vit.num_prefix_tokens == 5
    tokens = torch.zeros(2, 5 + 64, 24)
    tokens[:, :5] = -1.0
    tokens[:, 5:, 0] = torch.arange(64, dtype=torch.float32)
    fmap = vit_reshape(vit)(tokens)
    assert fmap.shape == (2, 24, 8, 8)
    assert (fmap[:, 0] >= 0).all()
    assert fmap[0, 0, 3, 5].item() == 3 * 8 + 5


def test_vit_classifier_cam_has_the_image_shape() -> None:
    """Grad-CAM through a ViT with registers + linear head gives one non-negative map per image at input size."""
    torch.manual_seed(0)
    vit = create_backbone("vit_tiny_p8_64", depth=2, embed_dim=24, num_heads=2, reg_tokens=4)
    model = nn.Sequential(vit, nn.Linear(24, 3))
    heat = grad_cam(model, torch.randn(3, 3, 64, 64), [0, 1, 2])
    assert heat.shape == (3, 64, 64)
    assert (heat >= 0).all() and (heat <= 1).all() and heat.max() > 0


def test_gradcam_stage_on_an_adapted_vit(planted_card: Path, tmp_path: Path) -> None:
    """An adaptation run's best ViT classifier: overlays, grid, per-image scores with the pointing game."""
    from synthfm.adapt.config import AdaptConfig
    from synthfm.adapt.trainer import adapt_one
    from synthfm.data.splits import SplitConfig, split_card

    card = split_card(planted_card, tmp_path / "split", SplitConfig(ratios=[0.5, 0.25, 0.25], stratify=None))
    cfg = AdaptConfig(card=str(card), task="dr", encoder="random:vit_tiny_p8_64", policy="linear_probe",
                      backbone_overrides={"depth": 1, "img_size": 32, "embed_dim": 24, "num_heads": 2},
                      epochs=1, warmup_epochs=0, seeds=[0], label_fractions=[1.0])
    adapt_one(cfg, tmp_path / "adapt")
    scores = pd.read_csv(run_gradcam(GradCAMConfig(adapt_run=str(tmp_path / "adapt"), n=4), tmp_path / "cam"))
    assert len(scores) == 4 and {"pointing_hit", "heat_ratio", "target", "label_dr"} <= set(scores.columns)
    assert (tmp_path / "cam" / "gradcam_grid.png").is_file()
    assert len(list((tmp_path / "cam" / "gradcam").glob("*.png"))) == 4
