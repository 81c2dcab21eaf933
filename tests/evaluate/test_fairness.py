"""Fairness: a planted subgroup gap is found; small groups are reported as too small."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from synthfm.evaluate.fairness import age_band, gaps, subgroup_table


def test_age_bands() -> None:
    assert age_band(pd.Series([20, 40, 69.9, 70, None])).tolist()[:4] == ["<40", "40-70", "40-70", ">70"]


def test_planted_gap_found() -> None:
    rng = np.random.default_rng(0)
    n = 400
    sex = pd.Series(np.where(np.arange(n) % 2 == 0, "F", "M"))
    y = rng.integers(0, 2, n)
    good = np.clip(y * 0.6 + rng.normal(0.2, 0.15, n), 0, 1)
    noise = rng.uniform(0, 1, n)
    p = np.where(sex == "F", good, noise)
    table = subgroup_table("binary", y, p, sex).set_index("group")
    assert table.loc["F", "auroc"] > 0.95 and abs(table.loc["M", "auroc"] - 0.5) < 0.1
    g = gaps(table.reset_index())
    assert g["auroc_gap"] == pytest.approx(table.loc["F", "auroc"] - table.loc["M", "auroc"])
    tpr_gap = abs(table.loc["F", "tpr"] - table.loc["M", "tpr"])
    fpr_gap = abs(table.loc["F", "fpr"] - table.loc["M", "fpr"])
    assert g["equalised_odds_difference"] == pytest.approx(max(tpr_gap, fpr_gap))


def test_small_group_not_reported() -> None:
    y = np.array([0, 1] * 50 + [1, 0, 1])
    p = np.linspace(0, 1, len(y))
    groups = pd.Series(["a"] * 100 + ["b"] * 3)
    table = subgroup_table("binary", y, p, groups).set_index("group")
    assert bool(table.loc["b", "too_small"]) and np.isnan(table.loc["b"].get("auroc", np.nan))
    assert not table.loc["a", "too_small"]
