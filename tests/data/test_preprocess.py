"""Preprocessing: FOV crop, square pad, resize, masks aligned, quality flags; prepare resumes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from synthfm.data.images import load_image
from synthfm.data.manifest import load_card
from synthfm.data.prepare import PROGRESS_FILE, prepare_card
from synthfm.data.preprocess import PrepareConfig, QualityThresholds, fov_mask, preprocess, quality_flag, window
from synthfm.errors import SynthfmError


def _disc_image(h: int = 120, w: int = 200, r: int = 50) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    img = np.zeros((h, w, 3), np.uint8)
    inside = (yy - h // 2) ** 2 + (xx - w // 2 - 10) ** 2 < r**2
    img[inside] = (180, 90, 40)
    return img


def test_fov_mask_finds_the_disc() -> None:
    img = _disc_image()
    mask = fov_mask(img)
    assert abs(mask.sum() - np.pi * 50**2) / (np.pi * 50**2) < 0.05


def test_fov_mask_on_a_large_image_matches_geometry() -> None:
    img = _disc_image(h=960, w=1000, r=420)
    mask = fov_mask(img)
    assert mask.shape == img.shape[:2]
    assert abs(mask.sum() - np.pi * 420**2) / (np.pi * 420**2) < 0.02


def test_preprocess_crops_to_fov_and_aligns_masks() -> None:
    img = _disc_image()
    marker = np.zeros(img.shape[:2], np.uint8)
    marker[56:65, 106:115] = 255
    out, masks, q = preprocess(img, "fundus", PrepareConfig(size=64), {"m": marker})
    assert out.shape == (64, 64, 3)
    rows, cols = np.flatnonzero((out.sum(2) > 0).any(1)), np.flatnonzero((out.sum(2) > 0).any(0))
    assert rows[0] <= 1 and rows[-1] >= 62 and cols[0] <= 1 and cols[-1] >= 62
    yx = np.argwhere(masks["m"] > 0)
    assert len(yx) >= 1 and np.allclose(yx.mean(0), [32, 32], atol=2)
    assert q["quality_flag"] == "blurry" or q["quality_flag"] == "ok"


def test_window_stretches_percentiles() -> None:
    img = np.linspace(50, 150, 1000).astype(np.uint8).reshape(10, 100)
    out = window(img, (0.0, 100.0))
    assert out.min() == 0 and out.max() == 255


def test_quality_flags() -> None:
    t = QualityThresholds()
    assert quality_flag({"q_mean": 100, "q_std": 0.5, "q_sharpness": 50}, t) == "blank"
    assert quality_flag({"q_mean": 5, "q_std": 10, "q_sharpness": 50}, t) == "dark"
    assert quality_flag({"q_mean": 250, "q_std": 10, "q_sharpness": 50}, t) == "bright"
    assert quality_flag({"q_mean": 100, "q_std": 10, "q_sharpness": 0.1}, t) == "blurry"
    assert quality_flag({"q_mean": 100, "q_std": 10, "q_sharpness": 50}, t) == "ok"


def test_blank_image_flagged() -> None:
    _, _, q = preprocess(np.full((40, 40, 3), 120, np.uint8), "fundus", PrepareConfig(size=32, fov_crop=False))
    assert q["quality_flag"] == "blank"


def test_prepare_never_touches_source_and_rejects_same_folder(make_card) -> None:
    src = make_card(n=4)
    with pytest.raises(SynthfmError, match="source is never modified"):
        prepare_card(src, src)


def test_prepare_resumes_after_bad_image_without_redoing_work(make_card, tmp_path: Path) -> None:
    src = make_card(n=6)
    good = (src / "img/004.png").read_bytes()
    (src / "img/004.png").write_bytes(good[:40])
    out = tmp_path / "prep"
    cfg = PrepareConfig(size=16, fov_crop=False)
    with pytest.raises(SynthfmError, match=r"img/004.png"):
        prepare_card(src, out, cfg)
    done = [json.loads(x)["row"] for x in (out / PROGRESS_FILE).read_text().splitlines()]
    assert done == [0, 1, 2, 3]
    assert not (out / "dataset.yaml").exists()
    first = {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    (src / "img/004.png").write_bytes(good)
    card = prepare_card(src, out, cfg)
    data = load_card(card)
    assert len(data) == 6 and set(data.df["quality_flag"]) <= {"ok", "blurry", "dark", "bright", "blank"}
    for name, mtime in first.items():
        assert (out / "images" / name).stat().st_mtime_ns == mtime
    assert not list(out.rglob(".*tmp*"))


def test_prepare_twice_is_a_noop(make_card, tmp_path: Path) -> None:
    src = make_card(n=3)
    card = prepare_card(src, tmp_path / "p", PrepareConfig(size=16))
    stamp = card.stat().st_mtime_ns
    assert prepare_card(src, tmp_path / "p", PrepareConfig(size=16)) == card
    assert card.stat().st_mtime_ns == stamp
    with pytest.raises(SynthfmError, match="different config"):
        prepare_card(src, tmp_path / "p", PrepareConfig(size=24))


def test_prepared_image_matches_preprocess(make_card, tmp_path: Path) -> None:
    src = make_card(n=2)
    data = load_card(prepare_card(src, tmp_path / "p", PrepareConfig(size=20)))
    expect, _, _ = preprocess(load_image(src / "img/001.png"), "fundus", PrepareConfig(size=20))
    np.testing.assert_array_equal(load_image(data.image_path(1)), expect)


def _clipped_disc(h: int = 120, w: int = 200, r: int = 80) -> np.ndarray:
    """A round field of view clipped at the top and bottom by the frame (as in HRF and smartphone fundus sets)."""
    yy, xx = np.mgrid[:h, :w]
    img = np.zeros((h, w, 3), np.uint8)
    img[(yy - h // 2) ** 2 + (xx - w // 2) ** 2 < r**2] = (180, 90, 40)
    return img


def _black_rows(out: np.ndarray) -> int:
    return int((out.sum(axis=(1, 2)) == 0).sum())


def test_fit_pad_letterboxes_and_fit_crop_fills_the_square() -> None:
    img = _clipped_disc()
    # the field of view spans all 120 rows and columns 21..179 (159 wide); sizes chosen so nothing is resized
    # pad: the 120x159 box sits in a 159x159 square with 19 black rows above and 20 below
    out, _, _ = preprocess(img, "fundus", PrepareConfig(size=159, fit="pad"))
    assert out.shape == (159, 159, 3) and _black_rows(out) == 39 and out[19:139].sum(axis=(1, 2)).min() > 0
    # crop: the box's central 120x120 (original columns 40..159); only corners outside the circle stay black:
    # (row 0, col 40) is sqrt(60^2 + 60^2) = 84.9 > 80 from the centre, (row 60, col 40) is 60 < 80
    out, _, _ = preprocess(img, "fundus", PrepareConfig(size=120, fit="crop"))
    black = out.sum(2) == 0
    assert out.shape == (120, 120, 3) and _black_rows(out) == 0 and black[0, 0] and not black[60, 0]


def test_fov_drop_crops_inside_the_field_of_view() -> None:
    from synthfm.data.preprocess import inscribed_box

    img = _clipped_disc()
    r0, r1, c0, c1 = inscribed_box(fov_mask(img))
    # a square centred on the circle (row 60, col 100) with corners inside radius 80: half-side 80 / sqrt(2) = 56.6
    assert (r0, r1, c0, c1) == (4, 116, 44, 156)
    out, _, _ = preprocess(img, "fundus", PrepareConfig(size=64, fov="drop"))
    assert (out.sum(2) == 0).mean() < 0.01


def test_prepare_cli_takes_fit_and_fov(make_card, tmp_path: Path) -> None:
    from synthfm.cli import main

    card = make_card(n=3)
    with pytest.raises(SystemExit) as err:
        main(["data", "prepare", str(card), "-o", str(tmp_path / "bad"), "--fit", "stretch"])
    assert err.value.code == 2
    main(["data", "prepare", str(card), "-o", str(tmp_path / "p"), "--size", "8", "--fit", "crop", "--fov", "drop"])
    data = load_card(tmp_path / "p")
    assert load_image(data.image_path(0)).shape == (8, 8, 3)


def test_new_prepare_options_keep_the_config_hash_at_their_defaults() -> None:
    from synthfm.config import dump_config

    assert "fit" not in dump_config(PrepareConfig()) and "fit: crop" in dump_config(PrepareConfig(fit="crop"))
