"""Fairness: a planted subgroup gap is found; small groups are reported as too small."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from synthfm.evaluate.fairness import (
    attribute_groups,
    bootstrap_auroc,
    gaps,
    rates,
    stratified_resamples,
    subgroup_table,
    too_small,
)


def test_age_groups_follow_the_configured_edges() -> None:
    frame = pd.DataFrame({"age": [20, 40, 69.9, 70, None]})
    assert attribute_groups(frame, "age").tolist()[:4] == ["0-40", "40-70", "40-70", "70-120"]
    assert attribute_groups(frame, "age", [0, 50, 120]).tolist()[:4] == ["0-50", "0-50", "50-120", "50-120"]


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


def test_rates_one_vs_rest_by_hand() -> None:
    y = np.array([0, 1, 2, 2])
    p = np.array([[0.8, 0.1, 0.1], [0.2, 0.5, 0.3], [0.1, 0.6, 0.3], [0.1, 0.2, 0.7]])  # argmax 0, 1, 1, 2
    r = rates("multiclass", y, p)
    assert (r["tpr_0"], r["fpr_0"]) == (1.0, 0.0)
    assert (r["tpr_1"], r["fpr_1"]) == (1.0, pytest.approx(1 / 3))  # row 2 (class 2) predicted as 1
    assert (r["tpr_2"], r["fpr_2"]) == (0.5, 0.0)


def test_equalised_odds_difference_multiclass() -> None:
    table = pd.DataFrame({"group": ["a", "b", "c"], "too_small": [False, False, True], "auroc": [0.9, 0.7, 0.1],
                          "tpr_0": [0.9, 0.8, 0.0], "fpr_0": [0.1, 0.3, 1.0], "tpr_1": [0.5, 0.6, 0.0],
                          "fpr_1": [np.nan, 0.2, 0.9]})
    g = gaps(table)
    assert g["auroc_gap"] == pytest.approx(0.2)  # the too-small group c is left out
    assert g["equalised_odds_difference"] == pytest.approx(0.2)  # fpr_0: 0.3 - 0.1


def test_bootstrap_auroc_matches_sklearn_on_the_same_resamples() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 90)
    p = rng.dirichlet([1, 1, 1], 90) + np.eye(3)[y] * 0.3
    p = p / p.sum(1, keepdims=True)
    idx = stratified_resamples(y, 60, seed=4)
    assert all(np.bincount(y[i], minlength=3).tolist() == np.bincount(y).tolist() for i in idx)
    ref = [roc_auc_score(y[i], p[i], multi_class="ovr", average="macro") for i in idx]
    assert bootstrap_auroc(y, p, 60, seed=4) == pytest.approx(tuple(np.percentile(ref, [2.5, 97.5])))
    yb, pb = (y == 0).astype(int), p[:, 0]
    refb = [roc_auc_score(yb[i], pb[i]) for i in stratified_resamples(yb, 100, seed=4)]
    assert bootstrap_auroc(yb, pb, 100, seed=4) == pytest.approx(tuple(np.percentile(refb, [2.5, 97.5])))


def test_too_small_needs_every_class() -> None:
    assert too_small(np.array([0] * 40 + [1] * 4), 2, min_n=30, min_per_class=5)
    assert not too_small(np.array([0] * 40 + [1] * 5), 2, min_n=30, min_per_class=5)
    assert too_small(np.array([0] * 20 + [1] * 20), 3, min_n=30, min_per_class=5)  # class 2 absent
    assert too_small(np.array([0] * 10 + [1] * 10), 2, min_n=30, min_per_class=5)
