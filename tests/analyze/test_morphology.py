"""The morphology stage: table contents, reference masks, resume after a kill, the U-Net, CHASE_DB1 masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import synthfm.analyze.morphology as morphology
from synthfm.analyze.morphology import MorphologyConfig, run_morphology
from synthfm.analyze.unet import UNetConfig, load_unet, make_example, predict_unet, save_unet, train_unet
from synthfm.analyze.vessels import segmentation_metrics
from synthfm.errors import SynthfmError


def test_table_has_indices_reference_metrics_and_artery_vein(planted_card: Path, tmp_path: Path) -> None:
    """One row per image with metadata, vessel/disc indices, seg_* against the card's mask, ref_* and A/V."""
    path = run_morphology(MorphologyConfig(card=str(planted_card), size=None, limit=6, batch_size=4,
                                           examples=2), tmp_path / "run")
    df = pd.read_parquet(path)
    assert path.name == "morphology_planted.parquet" and len(df) == 6
    assert list(df["site"]) == ["A", "B"] * 3 and set(df["batch"]) == {"x"}
    for col in ("fractal_dimension", "vessel_density", "width_px", "tortuosity_distance", "tortuosity_curvature",
                "cup_to_disc", "seg_dice", "seg_auc", "ref_fractal_dimension", "artery_fractal_dimension",
                "vein_width_px", "artery_vein_width_ratio", "label_dr"):
        assert df[col].notna().all(), col
    assert (df["seg_auc"] > 0.75).all() and (df["seg_dice"] > 0.3).all()
    assert (df["artery_vein_width_ratio"] < 1).all()  # phantom arteries are narrower than veins
    assert (df["ref_fractal_dimension"].between(1.0, 2.0)).all()
    for name in ("morphology_planted.csv", "morphology_summary_planted.csv", "morphology_examples.png"):
        assert (tmp_path / "run" / name).is_file()


def test_killed_run_resumes_without_redoing_rows(planted_card: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """After a kill mid-run (and a torn last line), only the unfinished rows are measured again."""
    cfg = MorphologyConfig(card=str(planted_card), size=None, limit=8, batch_size=3, examples=0)
    with pytest.raises(KeyboardInterrupt):
        run_morphology(cfg, tmp_path / "run", stop_after=1)
    with open(tmp_path / "run" / "progress.jsonl", "a") as fh:
        fh.write('{"row": 5, "fractal_dim')  # a write torn by kill -9
    measured: list[int] = []
    real = morphology.measure

    def counting(rgb: np.ndarray, segment: object, masks: dict) -> dict:
        measured.append(1)
        return real(rgb, segment, masks)  # type: ignore[arg-type]

    monkeypatch.setattr(morphology, "measure", counting)
    df = pd.read_parquet(run_morphology(cfg, tmp_path / "run"))
    assert len(measured) == 5 and list(df["row"]) == list(range(8))
    run_morphology(cfg, tmp_path / "run")  # finished: a no-op
    assert len(measured) == 5
    with pytest.raises(SynthfmError, match="different config"):
        run_morphology(cfg.model_copy(update={"limit": 7}), tmp_path / "run")


def test_unknown_mask_name_is_an_error(planted_card: Path, tmp_path: Path) -> None:
    """Naming a mask the card lacks fails with the card's masks listed."""
    with pytest.raises(SynthfmError, match="no mask 'vessel_2nd'"):
        run_morphology(MorphologyConfig(card=str(planted_card), vessel_mask="vessel_2nd"), tmp_path / "r")


def test_unet_learns_phantom_vessels_and_round_trips(clean: object, tmp_path: Path) -> None:
    """A few seconds of training on phantom masks segments a held-out phantom; saved weights predict the same."""
    train = [clean(100 + i, 128, dr_grade=0) for i in range(4)]  # type: ignore[operator]
    examples = [make_example(s.image, s.masks["vessels"], s.masks["fov"] > 0) for s in train]
    net = train_unet(examples, UNetConfig(steps=40, batch_size=4, patch=48, lr=5e-3, threads=1))
    test = clean(7, 128)  # type: ignore[operator]
    fov = test.masks["fov"] > 0
    prob = predict_unet(net, test.image, fov)
    metrics = segmentation_metrics(prob > 0.5, prob, test.masks["vessels"] > 0, fov)
    assert metrics["auc"] > 0.85, metrics
    again = load_unet(save_unet(net, tmp_path / "seg"))
    assert np.allclose(predict_unet(again, test.image, fov), prob, atol=1e-6)
    assert json.loads((tmp_path / "seg" / "config.json").read_text())["width"] == 8


def test_chase_manual_masks_are_read(cards_dir: Path, tmp_path: Path) -> None:
    """On two real CHASE_DB1 images at 256 px the classical segmentation agrees with the first observer."""
    cfg = MorphologyConfig(card=str(cards_dir / "chase_db1.yaml"), size=256, limit=2, examples=0)
    df = pd.read_parquet(run_morphology(cfg, tmp_path / "chase"))
    assert list(df["eye"]) == ["left", "right"] and (df["width"] == 256).all()
    assert (df["seg_auc"] > 0.85).all() and (df["seg_dice"] > 0.5).all()
    assert df["ref_vessel_density"].between(0.05, 0.2).all()


def test_unet_segmenter_is_trained_in_the_run_and_reused(planted_card: Path, tmp_path: Path) -> None:
    """`segmenter: unet` trains on phantoms plus the card's masked train rows, saves it, and a rerun loads it."""
    unet = UNetConfig(steps=3, batch_size=2, patch=32, phantom_images=1, threads=1)
    cfg = MorphologyConfig(card=str(planted_card), segmenter="unet", size=128, limit=2, examples=1,
                           train_masks="all", unet=unet)
    df = pd.read_parquet(run_morphology(cfg, tmp_path / "run"))
    assert len(df) == 2 and df["seg_auc"].notna().all()
    saved = tmp_path / "run" / "segmenter"
    assert json.loads((saved / "config.json").read_text())["trained_on"] == "planted"
    again = pd.read_parquet(run_morphology(cfg.model_copy(update={"unet_dir": str(saved), "limit": 1}),
                                           tmp_path / "reuse"))
    assert again["seg_auc"].iloc[0] == pytest.approx(df["seg_auc"].iloc[0])
