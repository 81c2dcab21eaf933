"""Results tables and comparisons on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from synthfm.errors import SynthfmError
from synthfm.evaluate.results import compare, summary_table, tidy_rows
from synthfm.evaluate.stats import detectable_difference


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


def _cv_table(per_fold: list[float], encoder: str, seeds: int = 2, n_test: int = 20) -> pd.DataFrame:
    """Cross-validated results: 5 folds x 1 repeat, test AUROC per fold shared by `seeds` seeds (+/- 0.01)."""
    rows = [r for fold, v in enumerate(per_fold) for seed in range(seeds)
            for r in tidy_rows({"test": {"auroc": v + (0.01 if seed else -0.01)}}, dataset="d", task="t",
                               policy="finetune", encoder=encoder, fraction=1.0, seed=seed, repeat=0, fold=fold,
                               n_train=80, n_test=n_test)]
    return pd.DataFrame(rows)


def test_compare_over_cv_folds_uses_the_corrected_test() -> None:
    """Fold differences d = (0.01, 0.03, 0.02, 0.04, 0.00) (seeds averaged), n_test/n_train = 20/80, by hand:

    mean 0.02, var (ddof 1) = (1 + 1 + 0 + 4 + 4)e-4 / 4 = 2.5e-4, t = 0.02 / sqrt((1/5 + 1/4) * 2.5e-4) = 1.885618
    (the naive paired t would be 0.02 / sqrt(2.5e-4 / 5) = 2.828427).
    """
    base = [0.70, 0.72, 0.68, 0.71, 0.69]
    a = _cv_table([b + d for b, d in zip(base, (0.01, 0.03, 0.02, 0.04, 0.00), strict=True)], "a")
    row = compare(a, _cv_table(base, "b")).iloc[0]
    assert row["test"] == "corrected resampled t" and row["n"] == 5 and row["mean_diff"] == pytest.approx(0.02)
    assert row["t"] == pytest.approx(1.885618, rel=1e-5)
    assert row["p"] == pytest.approx(2 * stats.t.sf(1.885618, 4), rel=1e-4)
    se = math.sqrt(2.5e-4) * math.sqrt(1 / 5 + 1 / 4)  # the power line uses the corrected standard error
    assert row["detectable_diff"] == pytest.approx(detectable_difference(math.sqrt(2.5e-4), 5, 0.25))
    assert row["detectable_diff"] > (stats.t.ppf(0.975, 4) + stats.t.ppf(0.8, 4)) * se * 0.9
    plain = compare(_table({1.0: [0.8, 0.9, 1.0]}, "a"), _table({1.0: [0.7, 0.85, 0.9]}, "b")).iloc[0]
    assert plain["test"] == "paired t"
    with pytest.raises(SynthfmError, match="cross-validated and the other is not"):
        compare(a, _table({1.0: [0.8, 0.9, 1.0]}, "b"))
    with pytest.raises(SynthfmError, match="folds differ in size"):
        compare(a, _cv_table(base, "b", n_test=21))
