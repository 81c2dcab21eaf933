"""Results tables and comparisons on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from synthfm.evaluate.results import compare, summary_table, tidy_rows


def _table(values: dict[float, list[float]], encoder: str) -> pd.DataFrame:
    """A results table with one test AUROC per seed for each fraction."""
    rows = [r for f, vs in values.items() for seed, v in enumerate(vs)
            for r in tidy_rows({"test": {"auroc": v}}, dataset="d", task="t", policy="finetune", encoder=encoder,
                               fraction=f, seed=seed)]
    return pd.DataFrame(rows)


def test_summary_numbers() -> None:
    s = summary_table(_table({1.0: [0.8, 0.9, 1.0]}, "a")).iloc[0]
    half = 1.96 * 0.1 / math.sqrt(3)
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.9) and s["sd"] == pytest.approx(0.1)
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((0.9 - half, 0.9 + half))
    assert 0.8 <= s["boot_low"] <= 0.9 <= s["boot_high"] <= 1.0


def test_compare_paired_t_and_holm() -> None:
    a = _table({0.5: [0.8, 0.9, 1.0], 1.0: [0.8, 0.9, 1.0]}, "a")
    b = _table({0.5: [0.7, 0.85, 0.9], 1.0: [0.8, 0.9, 1.0 - 1e-3]}, "b")
    table = compare(a, b).set_index("fraction")
    # differences 0.1, 0.05, 0.1: mean 1/12, sd 0.05/sqrt(3) -> t = 5 with 2 df; p = 1 - t / sqrt(t^2 + 2)
    assert table.loc[0.5, "t"] == pytest.approx(5.0)
    p = 1 - 5 / math.sqrt(27)
    assert table.loc[0.5, "p"] == pytest.approx(p)
    assert table.loc[0.5, "mean_diff"] == pytest.approx(1 / 12)
    p2 = table.loc[1.0, "p"]  # differences 0, 0, 1e-3: t = 1, p = 1 - 1/sqrt(3)
    assert p2 == pytest.approx(1 - 1 / math.sqrt(3))
    assert table.loc[0.5, "p_holm"] == pytest.approx(2 * p)
    assert table.loc[1.0, "p_holm"] == pytest.approx(max(p2, 2 * p))
    assert list(table["significant"]) == [bool(2 * p < 0.05), False]
    assert np.isfinite(table["shapiro_w"]).all()
