"""The vessel-segmentation study: arms, seeds, hand-checked summary, resume without retraining, clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from synthfm.analyze import vessel_study as vs
from synthfm.analyze.unet import UNetConfig
from synthfm.errors import SynthfmError

ARMS = {vs.PRETRAINED, vs.FINETUNED, vs.REAL_ONLY}


@pytest.fixture(scope="module")
def vessel_card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six 96 px phantom eyes of three patients, with a vessel mask and an identical 'second observer' mask."""
    from tests.analyze.conftest import render, write_card

    samples = [render(i, 96) for i in range(6)]
    for s in samples:
        s.masks["second"] = s.masks["vessels"].copy()
    root = tmp_path_factory.mktemp("vessels") / "vessels"
    return write_card(root, samples, {"patient": ["a", "a", "b", "b", "c", "c"]}, {"patient_id": "patient"},
                      masks=("vessels", "second"))


def tiny(card: Path, **kw: Any) -> vs.VesselStudyConfig:
    """A seconds-long study: 2 test images, 64 px, 2-step U-Nets, 3 seeds."""
    base = {"card": str(card / "dataset.yaml"), "mask": "vessels", "second_observer": "second", "test_last": 2,
            "work_size": 64, "seeds": [0, 1, 2], "phantom_images": 1, "pretrain_steps": 2, "finetune_steps": 2,
            "unet": UNetConfig(batch_size=2, patch=32, threads=1, width=4)}
    return vs.VesselStudyConfig(**(base | kw))


def test_study_writes_every_arm_seed_and_the_paired_test(vessel_card: Path, tmp_path: Path) -> None:
    """Three U-Net arms per seed, Sato once, the second observer scores Dice 1 against an identical mask."""
    out = vs.run_vessel_study(tiny(vessel_card), tmp_path / "study")
    per = pd.read_parquet(out / "per_image.parquet")
    assert set(per["method"]) == ARMS | {"sato", vs.SECOND_OBSERVER}
    assert per[per["method"].isin(ARMS)].groupby("method")["seed"].nunique().eq(3).all()
    assert per.groupby(["method", "seed"], dropna=False)["image"].nunique().eq(2).all()
    second = per[(per["method"] == vs.SECOND_OBSERVER) & (per["metric"] == "dice")]
    assert np.allclose(second["value"], 1.0)
    tests = pd.read_parquet(out / "tests.parquet")
    assert set(tests["metric"]) == set(vs.METRICS) and (tests["n"] == 3).all()


def test_summary_and_test_equal_hand_computed_values() -> None:
    """Per-seed means over images, then mean over seeds; the paired t-test is scipy's on the seed means."""
    rows = []
    values = {vs.FINETUNED: [[0.5, 0.7], [0.6, 0.8], [0.9, 0.7]], vs.REAL_ONLY: [[0.4, 0.6], [0.5, 0.5], [0.6, 0.6]]}
    for method, seeds in values.items():
        for seed, images in enumerate(seeds):
            rows += [{"method": method, "seed": seed, "image": f"i{k}", "metric": "dice", "value": v}
                     for k, v in enumerate(images)]
    summary, tests = vs.summarise_study(pd.DataFrame(rows))
    ft = summary[summary["method"] == vs.FINETUNED].iloc[0]
    assert ft["mean"] == pytest.approx(np.mean([0.6, 0.7, 0.8])) and ft["n"] == 3
    t, p = stats.ttest_rel([0.6, 0.7, 0.8], [0.5, 0.5, 0.6])
    row = tests.iloc[0]
    assert row["difference"] == pytest.approx(np.mean([0.1, 0.2, 0.2]))
    assert row["t"] == pytest.approx(t) and row["p"] == pytest.approx(p)
    assert row["p_holm"] == pytest.approx(p)  # a family of one metric
    half = stats.t.ppf(0.975, 2) * np.std([0.1, 0.2, 0.2], ddof=1) / np.sqrt(3)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((row["difference"] - half, row["difference"] + half))


def test_killed_study_resumes_without_retraining(vessel_card: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A study killed after seed 0 trains only the missing U-Nets on rerun, and matches an uninterrupted run."""
    cfg = tiny(vessel_card)
    calls: list[Any] = []
    real = vs.train_unet

    def counting(examples: Any, ucfg: UNetConfig, init: Any = None) -> Any:
        calls.append((ucfg.seed, init is not None))
        if len(calls) == 4:
            raise KeyboardInterrupt  # killed during seed 1
        return real(examples, ucfg, init=init)

    monkeypatch.setattr(vs, "train_unet", counting)
    with pytest.raises(KeyboardInterrupt):
        vs.run_vessel_study(cfg, tmp_path / "killed")
    monkeypatch.setattr(vs, "train_unet", lambda e, u, init=None: (calls.append(("again", u.seed)),
                                                                   real(e, u, init=init))[1])
    vs.run_vessel_study(cfg, tmp_path / "killed")
    assert calls[:3] == [(0, False), (0, True), (0, False)]  # phantom, fine-tune from it, real only
    assert calls[4:] == [("again", s) for s in (1, 1, 1, 2, 2, 2)]  # seed 0 is never trained again
    monkeypatch.setattr(vs, "train_unet", real)
    vs.run_vessel_study(cfg, tmp_path / "whole")
    a = pd.read_parquet(tmp_path / "killed" / "per_image.parquet")
    b = pd.read_parquet(tmp_path / "whole" / "per_image.parquet")
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize(("change", "fragment"), [
    ({"test_ids": ["img/999.png"]}, "not manifest ids"),
    ({"test_ids": ["img/000.png"]}, "both the test and the training"),
    ({"mask": "arteries"}, "no mask 'arteries'"),
    ({"test_last": 6}, "leave some rows"),
])
def test_bad_settings_are_clear_errors(vessel_card: Path, tmp_path: Path, change: dict, fragment: str) -> None:
    """Unknown test ids, a patient split across test and train, a missing mask, no training rows."""
    with pytest.raises(SynthfmError, match=fragment):
        vs.run_vessel_study(tiny(vessel_card, **change), tmp_path / "bad")


def test_verdict_reads_dice_and_names_secondary_metrics_after_holm() -> None:
    """Dice (primary) decides the verdict; a secondary metric is named only when it survives Holm's correction."""
    summary = pd.DataFrame([{"method": m, "metric": k, "mean": v} for m, k, v in [
        (vs.FINETUNED, "dice", 0.77), (vs.REAL_ONLY, "dice", 0.75), (vs.FINETUNED, "auc", 0.97),
        (vs.REAL_ONLY, "auc", 0.96), ("sato", "dice", 0.63)]])
    tests = pd.DataFrame([
        {"metric": "dice", "n": 5, "difference": 0.02, "ci_low": -0.001, "ci_high": 0.04, "p": 0.06, "p_holm": 0.06,
         "note": ""},
        {"metric": "auc", "n": 5, "difference": 0.006, "ci_low": 0.004, "ci_high": 0.008, "p": 0.001,
         "p_holm": 0.002, "note": ""}])
    lines = vs.verdict_lines("chase", 8, summary, tests)
    assert "test dice 0.770 vs 0.750, difference +0.020 (95% CI -0.001 to +0.040)" in lines[0]
    assert "Dice of the other methods: sato 0.630" in lines[2]
    assert lines[3].startswith("Verdict (vessels): phantom pretraining made no significant difference to Dice")
    assert lines[4] == "Secondary metrics that differ after Holm's correction: auc +0.006 (Holm p=0.002)."
