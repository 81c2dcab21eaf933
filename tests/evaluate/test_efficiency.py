"""Label efficiency on constructed results with known answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from synthfm.errors import SynthfmError
from synthfm.evaluate.efficiency import fraction_to_match, label_curve, labels_needed
from synthfm.evaluate.results import tidy_rows

SPREAD = (-0.01, 0.0, 0.01)  # three seeds around each mean: sd 0.01


def results(curves: dict[str, dict[float, float]]) -> pd.DataFrame:
    """Tidy results: for each model and fraction, three seeds at mean - 0.01, mean, mean + 0.01."""
    rows = [r for model, curve in curves.items() for f, m in curve.items() for seed, d in enumerate(SPREAD)
            for r in tidy_rows({"test": {"auroc": m + d, "accuracy": 0.5}}, experiment=model, dataset="d",
                               task="t", fraction=f, seed=seed, eval_set="internal")]
    return pd.DataFrame(rows)


CURVES = {
    "synthetic_fm": {0.1: 0.60, 0.2: 0.70, 0.4: 0.80, 1.0: 0.85},
    "imagenet": {0.1: 0.55, 0.2: 0.60, 0.4: 0.70, 1.0: 0.75},
    "weak": {0.1: 0.50, 0.2: 0.55, 0.4: 0.60, 1.0: 0.70},
    "strong": {0.1: 0.80, 0.2: 0.85, 0.4: 0.88, 1.0: 0.90},
    "dip": {0.1: 0.60, 0.2: 0.76, 0.4: 0.74, 1.0: 0.80},
}


def test_curve_means_and_cis() -> None:
    curve = label_curve(results(CURVES)).set_index(["experiment", "fraction"])
    row = curve.loc[("synthetic_fm", 0.4)]
    half = 1.96 * 0.01 / math.sqrt(3)
    assert row["n"] == 3 and row["mean"] == pytest.approx(0.80)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((0.80 - half, 0.80 + half))
    assert 0.79 <= row["boot_low"] <= 0.80 <= row["boot_high"] <= 0.81
    assert len(curve) == 5 * 4 and set(curve["metric"]) == {"auroc"}


def test_fraction_needed_to_match_reference_at_100_percent() -> None:
    table = labels_needed(results(CURVES), reference="imagenet").set_index("experiment")
    assert table.loc["synthetic_fm", "target"] == pytest.approx(0.75)
    # 0.70 at 20%, 0.80 at 40%: 0.75 is reached half-way, at 30% of the labels
    assert table.loc["synthetic_fm", "fraction_needed"] == pytest.approx(0.30)
    assert table.loc["imagenet", "fraction_needed"] == pytest.approx(1.0)
    assert np.isnan(table.loc["weak", "fraction_needed"]) and table.loc["weak", "note"] == "not reached"
    assert not table.loc["weak", "reached"]
    assert table.loc["strong", "fraction_needed"] == 0.1 and table.loc["strong", "note"].startswith("at most 0.1")
    # first crossing of a non-monotone curve: 0.60 -> 0.76 between 10% and 20%
    assert table.loc["dip", "fraction_needed"] == pytest.approx(0.1 + 0.15 / 0.16 * 0.1)


def test_fraction_to_match_unsorted_input_and_unknown_reference() -> None:
    assert fraction_to_match([1.0, 0.25, 0.5], [0.9, 0.5, 0.7], 0.8) == pytest.approx(0.75)
    assert math.isnan(fraction_to_match([0.5, 1.0], [0.5, 0.6], 0.7))
    with pytest.raises(SynthfmError, match="reference model 'nope'"):
        labels_needed(results(CURVES), reference="nope")
    with pytest.raises(SynthfmError, match="no results for metric 'kappa'"):
        label_curve(results(CURVES), metric="kappa")


def test_epoch_seconds_skip_the_gap_of_a_resume() -> None:
    """Gaps between epoch records (the first from the start); after a resume the median of the others."""
    from synthfm.evaluate.efficiency import epoch_seconds

    records = [{"epoch": 0, "time": 10.0}, {"epoch": 1, "time": 13.0}, {"epoch": 2, "time": 17.0},
               {"event": "resume", "time": 25.0}, {"epoch": 3, "time": 30.0}, {"epoch": 4, "time": 33.0}]
    assert epoch_seconds(records, 8.0) == [2.0, 3.0, 4.0, 3.0, 3.0]  # median of 2, 3, 4, 3


def test_finetune_curve_over_runs(tmp_path) -> None:
    """Validation score per label fraction and epoch over the runs, with mean cumulative seconds."""
    import json

    from synthfm.evaluate.efficiency import finetune_curve

    for seed, vals in ((0, [0.6, 0.7]), (1, [0.8, 0.9])):
        run = tmp_path / "fraction_0.5" / f"seed_{seed}"
        run.mkdir(parents=True)
        (run / "config.yaml").write_text("created: '2026-01-01T00:00:00+0000'\n")
        start = 1767225600.0  # 2026-01-01T00:00:00Z
        lines = [{"time": start + 10 * (e + 1) * (seed + 1), "epoch": e, "val_auroc": v} for e, v in enumerate(vals)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    curve = finetune_curve(tmp_path)
    assert list(curve["epoch"]) == [1, 2] and list(curve["n"]) == [2, 2]
    assert list(curve["mean"]) == pytest.approx([0.7, 0.8])
    assert list(curve["seconds"]) == pytest.approx([15.0, 30.0])  # seed 0: 10, 20 s; seed 1: 20, 40 s
