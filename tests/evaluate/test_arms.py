"""Many-arm comparison on constructed results with known answers: CIs, one Holm family, labels to match."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from synthfm.errors import SynthfmError
from synthfm.evaluate.arms import arm_tables
from synthfm.evaluate.results import tidy_rows
from synthfm.report.verdict import arms_verdict

OFFSETS = (-0.02, 0.01, 0.0, 0.03, -0.01)  # per-seed offsets shared by every arm (what the pairing removes)
NOISE = {"random": (0.0,) * 5, "real": (0.004, -0.003, 0.001, 0.0, -0.002), "synth": (0.003, 0.0, -0.004, 0.002, 0.0),
         "phantom": (0.001, -0.001, 0.002, -0.002, 0.0)}
MEANS = {"random": {0.1: 0.60, 1.0: 0.70}, "real": {0.1: 0.66, 1.0: 0.74}, "synth": {0.1: 0.64, 1.0: 0.72},
         "phantom": {0.1: 0.55, 1.0: 0.69}}


def experiment(arm: str) -> pd.DataFrame:
    """One arm's tidy results: 5 seeds at mean + shared offset + the arm's own noise, 2 fractions."""
    rows = [r for f, m in MEANS[arm].items() for seed, (o, e) in enumerate(zip(OFFSETS, NOISE[arm], strict=True))
            for r in tidy_rows({"test": {"auroc": m + o + e, "accuracy": 0.5 + e}}, experiment=arm, dataset="d",
                               task="t", fraction=f, seed=seed, eval_set="internal")]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def tables() -> dict[str, pd.DataFrame]:
    return arm_tables({a: experiment(a) for a in MEANS}, baselines=["random", "real"], reference="random")


def test_summary_is_mean_and_normal_ci_per_arm_and_fraction(tables: dict[str, pd.DataFrame]) -> None:
    row = tables["summary"].set_index(["arm", "fraction", "metric"]).loc[("synth", 0.1, "auroc")]
    values = 0.64 + np.add(OFFSETS, NOISE["synth"])
    half = 1.96 * values.std(ddof=1) / math.sqrt(5)
    assert row["n"] == 5 and row["mean"] == pytest.approx(values.mean())
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((values.mean() - half, values.mean() + half))


def test_tests_are_paired_and_holm_runs_over_the_whole_family(tables: dict[str, pd.DataFrame]) -> None:
    tests = tables["tests"]
    auroc = tests[tests["metric"] == "auroc"]
    # 3 arms vs random + 2 more vs real (real vs random is tested once), at 2 fractions: a family of 10 per metric
    assert len(auroc) == 10 and set(auroc["baseline"]) == {"random", "real"}
    assert not ((auroc["arm"] == "random") & (auroc["baseline"] == "real")).any()
    row = auroc.set_index(["arm", "baseline", "fraction"]).loc[("synth", "random", 0.1)]
    a, b = 0.64 + np.add(OFFSETS, NOISE["synth"]), 0.60 + np.add(OFFSETS, NOISE["random"])
    t, p = stats.ttest_rel(a, b)
    assert row["t"] == pytest.approx(t) and row["p"] == pytest.approx(p)
    ranked = np.sort(auroc["p"].to_numpy())
    manual = np.minimum(np.maximum.accumulate(ranked * (10 - np.arange(10))), 1.0)
    assert np.sort(auroc["p_holm"].to_numpy()) == pytest.approx(manual)
    assert row["p_holm"] > row["p"]  # the family correction, not a per-pair one
    assert bool(row["significant"]) and row["mean_diff"] == pytest.approx(0.04 + np.mean(NOISE["synth"]))


def test_labels_to_match_reference_at_full_labels(tables: dict[str, pd.DataFrame]) -> None:
    match = tables["match"]
    auroc = match[match["metric"] == "auroc"].set_index("arm")
    assert auroc.loc["random", "target"] == pytest.approx(0.70 + np.mean(OFFSETS))
    target = auroc.loc["real", "target"]
    real_01 = 0.66 + np.mean(np.add(OFFSETS, NOISE["real"]))
    real_10 = 0.74 + np.mean(np.add(OFFSETS, NOISE["real"]))
    assert auroc.loc["real", "fraction_needed"] == pytest.approx(0.1 + (target - real_01) * 0.9 / (real_10 - real_01))
    assert auroc.loc["phantom", "note"] == "not reached"


def test_names_outside_the_arms_are_one_clear_error() -> None:
    arms = {a: experiment(a) for a in ("random", "synth")}
    with pytest.raises(SynthfmError, match="'baselines' names \\['imagenet'\\]"):
        arm_tables(arms, baselines=["imagenet"], reference="random")
    with pytest.raises(SynthfmError, match="at least two arms"):
        arm_tables({"random": experiment("random")}, baselines=["random"], reference="random")


def _doc(tables: dict[str, pd.DataFrame]) -> dict:
    records = {k: v.to_dict("records") for k, v in tables.items()}
    return {"title": "probe", "metrics": ["auroc", "accuracy"], "split": "test", "baselines": ["random", "real"],
            "reference": "random", **records}


def test_arms_verdict_names_gains_losses_and_labels_needed(tables: dict[str, pd.DataFrame]) -> None:
    lines = arms_verdict(_doc(tables))
    assert lines[0].startswith("probe, against random (test auroc") and "over all 10 tests" in lines[0]
    d = 0.04 + np.asarray(NOISE["synth"])  # synth minus random at 10%, seed by seed
    low, high = stats.t.interval(0.95, 4, loc=d.mean(), scale=d.std(ddof=1) / math.sqrt(5))
    assert f"synth better at 10% (+0.040, 95% CI [{low:+.3f}, {high:+.3f}], Holm p=" in lines[0]
    assert "phantom worse at 10% (-0.050, 95% CI" in lines[0]
    assert "Labels needed to match random at 100%" in lines[2] and "phantom not reached" in lines[2]
    assert lines[-1].startswith("Verdict (probe): mixed against random") and "What could change this" in lines[-1]


def test_arms_verdict_says_plainly_when_nothing_helped(tables: dict[str, pd.DataFrame]) -> None:
    doc = _doc(tables)
    doc["tests"] = [{**r, "significant": False} for r in doc["tests"]]
    lines = arms_verdict(doc)
    assert "no difference was significant; closest: real at 10% (+0.060, 95% CI [" in lines[0]
    assert lines[-1].startswith("Verdict (probe): no pretraining arm beat random significantly (closest: synth at "
                                "10% (+0.040, 95% CI [")
    assert "Holm p=" in lines[-1] and "What could change this" in lines[-1]
