"""Chance-level models and falling label curves, on constructed results with known answers."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from synthfm.evaluate.checks import chance_table, falling_curves
from synthfm.evaluate.results import summary_table, tidy_rows


def _results(model: str, auroc: dict[float, list[float]], accuracy: list[float], majority: float) -> pd.DataFrame:
    """Test AUROC and accuracy per seed and fraction, with the test set's majority-class rate on every row."""
    rows = [r for f, vs in auroc.items() for seed, v in enumerate(vs)
            for r in tidy_rows({"test": {"auroc": v, "accuracy": accuracy[seed]}}, model=model, fraction=f,
                               seed=seed, eval_set="internal")]
    return pd.DataFrame(rows).assign(majority_rate=majority)


def test_chance_level_is_a_ci_reaching_half_or_the_majority_rate() -> None:
    # good: AUROC 0.80, 0.82, 0.84 -> CI 0.82 +/- 1.96 * 0.02 / sqrt(3) = [0.7974, 0.8426]: not at chance;
    # its accuracy 0.60, 0.62, 0.64 has CI [0.5974, 0.6426], above the majority rate 0.435.
    good = _results("good", {1.0: [0.80, 0.82, 0.84]}, [0.60, 0.62, 0.64], 0.435)
    # coin: AUROC 0.48, 0.53, 0.55 -> mean 0.52, sd 0.036056, CI [0.4792, 0.5608] contains 0.5;
    # collapsed: accuracy 0.435 on every seed = the majority rate (AUROC 0.70 +/- 0.01 is fine).
    coin = _results("coin", {1.0: [0.48, 0.53, 0.55]}, [0.60, 0.62, 0.64], 0.435)
    collapsed = _results("collapsed", {1.0: [0.69, 0.70, 0.71]}, [0.435, 0.435, 0.435], 0.435)
    table = chance_table(pd.concat([good, coin, collapsed]), ["model"]).set_index(["model", "metric"])
    half = 1.96 * 0.02 / math.sqrt(3)
    assert table.loc[("good", "auroc"), "ci_low"] == pytest.approx(0.82 - half)
    assert table.loc[("coin", "auroc"), "ci_low"] == pytest.approx(0.52 - 1.96 * 0.036056 / math.sqrt(3), abs=1e-6)
    assert table.loc[("collapsed", "accuracy"), "chance"] == pytest.approx(0.435)
    flagged = set(table.index[table["at_chance"]])
    assert flagged == {("coin", "auroc"), ("collapsed", "accuracy")}


def test_without_majority_rates_only_auroc_is_checked() -> None:
    res = _results("coin", {1.0: [0.48, 0.53, 0.55]}, [0.4, 0.4, 0.4], 0.5).drop(columns="majority_rate")
    assert list(chance_table(res, ["model"])["metric"]) == ["auroc"]


def test_a_curve_that_falls_as_labels_grow_is_found() -> None:
    rising = _results("rising", {0.1: [0.60] * 3, 0.5: [0.70] * 3, 1.0: [0.705] * 3}, [0.5] * 3, 0.4)
    falling = _results("falling", {0.1: [0.66] * 3, 0.5: [0.72] * 3, 1.0: [0.69] * 3}, [0.5] * 3, 0.4)
    summ = summary_table(pd.concat([rising, falling]), by=["model", "fraction", "metric"])
    falls = falling_curves(summ, ["model"])
    assert len(falls) == 1  # rising's 0.70 -> 0.705 is no fall; the flat accuracy curves neither
    row = falls.iloc[0]
    assert (row["model"], row["metric"], row["from_fraction"], row["to_fraction"]) == ("falling", "auroc", 0.5, 1.0)
    assert row["drop"] == pytest.approx(0.03)
    assert falling_curves(summ, ["model"], tolerance=0.05).empty
