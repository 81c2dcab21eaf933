"""Summaries: suppression by hand, no small cell ever shown or drawn, DP noise scales, and draws that match."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from synthfm.consortium.conditions import AGE_BAND, PATIENT
from synthfm.consortium.generators import GeneratorConfig, phantom_schema
from synthfm.consortium.summary import (
    Noise,
    PrivacyConfig,
    SummaryConfig,
    check_summary,
    draw_conditions,
    merge_bins,
    summarize,
    suppress,
)
from synthfm.data.vocabulary import band_index
from synthfm.errors import SynthfmError

SCHEMA = phantom_schema(GeneratorConfig())
ETHNICITY = ["white", "black", "asian", "south_asian", "hispanic"]


def table(n: int, seed: int = 0, black: int = 3) -> pd.DataFrame:
    """A condition table with a known rare group: exactly `black` rows of ethnicity 'black'."""
    rng = np.random.default_rng(seed)
    eth = rng.choice(["white", "asian", "hispanic"], n, p=[0.5, 0.3, 0.2]).astype(object)
    eth[:black] = "black"
    return pd.DataFrame({
        "dr_grade": rng.choice(5, n, p=[0.5, 0.2, 0.15, 0.1, 0.05]), "amd": rng.integers(0, 2, n),
        "age": rng.uniform(25, 89, n), "sex": rng.choice(["F", "M"], n), "ethnicity": eth,
        "device": rng.choice(["topcon", "canon", "zeiss"], n), PATIENT: [f"p{i // 2}" for i in range(n)],
    })


def shown_counts(summary: dict) -> list[int]:
    """Every count a summary shows: cells, non-zero pools, histogram bins."""
    out = [c["count"] for t in summary["tables"] for c in t["cells"]]
    out += [t["other"] for t in summary["tables"] if t["other"]]
    return out + [b["count"] for b in summary.get("age_histogram", {}).get("bins", [])]


def test_suppress_by_hand() -> None:
    released, other = suppress(np.array([12, 3, 0, 25, 4]), 10)
    # 3 + 0 + 4 = 7 < 10, so the smallest released cell (12) joins the pool: 19
    assert released.tolist() == [False, False, False, True, False] and other == 19
    released, other = suppress(np.array([12, 30, 0]), 10)
    assert released.tolist() == [True, True, False] and other == 0
    released, other = suppress(np.array([4, 3]), 10)
    assert not released.any() and other is None


def test_merge_bins_by_hand() -> None:
    assert merge_bins(np.array([3, 8, 12, 2]), 10) == [(0, 1, 11), (2, 3, 14)]
    assert merge_bins(np.array([10, 10]), 10) == [(0, 0, 10), (1, 1, 10)]
    assert merge_bins(np.array([4, 5]), 10) == []


def test_small_cells_are_never_shown() -> None:
    s = summarize(table(400), SCHEMA, SummaryConfig(k=10))
    assert min(shown_counts(s)) >= 10 and check_summary(s, 10) == []
    eth = next(t for t in s["tables"] if t["variables"] == ["ethnicity"])
    assert "black" not in json.dumps(eth) and "black" not in s["marginals"]["ethnicity"]
    assert eth["other"] >= 10  # the 3 'black' rows were pooled with the smallest released group


def test_marginals_and_histogram_add_nothing_to_the_tables() -> None:
    """Marginals are sums of released cells; histogram band totals equal the joint table's band totals."""
    s = summarize(table(400), SCHEMA, SummaryConfig(k=10))
    joint = s["tables"][0]
    assert joint["variables"] == ["dr_grade", AGE_BAND, "sex"]
    for j, var in enumerate(joint["variables"]):
        sums: dict[str, int] = {}
        for c in joint["cells"]:
            sums[c["values"][j]] = sums.get(c["values"][j], 0) + c["count"]
        assert s["marginals"][var] == sums
    hist = s["age_histogram"]
    for band, total in s["marginals"][AGE_BAND].items():
        lo, hi = (float(x) for x in band.strip("[)").split(","))
        assert sum(b["count"] for b in hist["bins"] if lo <= b["lo"] and b["hi"] <= hi) == total


def test_exact_counts_without_noise() -> None:
    t = table(400)
    s = summarize(t, SCHEMA, SummaryConfig(k=10, blocks=[["sex"]]))
    sex = next(x for x in s["tables"] if x["variables"] == ["sex"])
    assert {c["values"][0]: c["count"] for c in sex["cells"]} == t["sex"].value_counts().to_dict()


def test_laplace_noise_scale_and_statement() -> None:
    privacy = PrivacyConfig(mechanism="laplace", epsilon=2.0, max_images_per_patient=2, seed=0)
    noise = Noise(privacy, tables=4)
    assert noise.scale == pytest.approx(2 / (2.0 / 4))  # sensitivity / epsilon per table
    draws = noise.apply(np.full(20000, 1000)) - 1000
    assert np.std(draws) == pytest.approx(math.sqrt(2) * noise.scale, rel=0.05)
    desc = noise.describe()
    assert desc["epsilon_per_table"] == 0.5 and desc["sensitivity"] == 2


def test_gaussian_sigma_and_its_epsilon_limit() -> None:
    privacy = PrivacyConfig(mechanism="gaussian", epsilon=2.0, delta=1e-5, max_images_per_patient=1, seed=0)
    noise = Noise(privacy, tables=4)
    assert noise.scale == pytest.approx(math.sqrt(2 * math.log(1.25 / 2.5e-6)) / 0.5)
    with pytest.raises(SynthfmError, match="per table < 1"):
        Noise(privacy.model_copy(update={"epsilon": 8.0}), tables=4)


def test_dp_summary_bounds_patients_and_still_suppresses() -> None:
    t = table(400)
    t[PATIENT] = "same"  # one patient with 400 images: only max_images_per_patient of them count
    s = summarize(t, SCHEMA, SummaryConfig(k=3, privacy=PrivacyConfig(mechanism="laplace", epsilon=50.0,
                                                                      max_images_per_patient=2, seed=1)))
    assert all(tab["total"] is None or tab["total"] < 20 for tab in s["tables"])
    assert min(shown_counts(s) or [3]) >= 3 and s["privacy"]["mechanism"] == "laplace"


def test_dp_noise_changes_counts_but_never_below_k() -> None:
    cfg = SummaryConfig(k=10, privacy=PrivacyConfig(mechanism="laplace", epsilon=1.0, seed=3))
    noisy, exact = summarize(table(600), SCHEMA, cfg), summarize(table(600), SCHEMA, SummaryConfig(k=10))
    assert noisy["tables"] != exact["tables"] and min(shown_counts(noisy)) >= 10


def test_check_summary_catches_small_cells_and_low_k() -> None:
    s = summarize(table(400), SCHEMA, SummaryConfig(k=10))
    assert check_summary(s, 20) and "below the hub's minimum" in check_summary(s, 20)[0]
    s["tables"][0]["cells"].append({"values": ["4", "[0,40)", "F"], "count": 1})
    assert "under k=10" in check_summary(s, 10)[0]


def test_marginals_pass_the_same_small_cell_rule() -> None:
    s = summarize(table(400), SCHEMA, SummaryConfig(k=10))
    assert check_summary(s, 10) == [] and any(s["marginals"].values())
    var, counts = next((v, c) for v, c in s["marginals"].items() if c)
    value = next(iter(counts))
    shown = json.loads(json.dumps(s))
    shown["marginals"][var][value] = 2  # a pooled cell's count, re-signed into the marginals
    assert check_summary(shown, 10) == [f"marginals.{var} shows 1 count(s) under k=10 (['{value}'])"]
    shown["marginals"][var][value] = counts[value] + 10  # >= k but not what the tables released
    assert check_summary(shown, 10) == [f"marginals.{var} is not the sum of the released cells of the joint tables"]
    shown = json.loads(json.dumps(s))
    shown["marginals"]["patient_name"] = {"Jane Doe": 12}
    assert check_summary(shown, 10) == ["marginals.patient_name is not the sum of the released cells of the joint "
                                        "tables"]


def _cells(rows: list[dict], variables: list[str]) -> pd.Series:
    """Counts of drawn conditions per joint cell (values as the summary names them)."""
    labels = SCHEMA.labels()
    bands = ["[0,40)", "[40,70)", "[70,120)"]
    keys = []
    for c in rows:
        key = []
        for v in variables:
            if v == AGE_BAND:
                key.append(bands[int(band_index(c["age"], [0, 40, 70, 120], clip=False))])
            elif v in labels:
                key.append(labels[v][c[v]])
            else:
                key.append(c[v])
        keys.append(tuple(key))
    return pd.Series(keys).value_counts()


@pytest.mark.parametrize("reweight", [{}, {"ethnicity": {"hispanic": 3.0}, "sex": {"F": 0.5}}])
def test_drawn_conditions_match_each_table_within_sampling_error(reweight: dict) -> None:
    s = summarize(table(2000, seed=4), SCHEMA, SummaryConfig(k=10))
    rows = draw_conditions(s, SCHEMA, 5000, seed=7, reweight=reweight)
    for t in s["tables"]:
        got = _cells(rows, t["variables"])
        released = {tuple(c["values"]): c["count"] for c in t["cells"]}
        assert set(got.index) <= set(released), "a pooled (suppressed) cell was drawn"
        w = np.array([released[k] for k in released], float)
        for j, var in enumerate(t["variables"]):
            w *= [reweight.get(var, {}).get(k[j], 1.0) for k in released]
        observed = np.array([got.get(k, 0) for k in released])
        p = stats.chisquare(observed, w / w.sum() * observed.sum()).pvalue
        assert p > 1e-3, (t["variables"], p)
    ages = np.array([r["age"] for r in rows])
    assert ages.min() >= 20 and ages.max() <= 90  # inside the generator's age range
