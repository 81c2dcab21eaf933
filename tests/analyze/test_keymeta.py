"""Key-metadata identification: a planted effect is found, an unplanted one is not, confounders are held fixed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from synthfm.analyze.keymeta import KeyMetaConfig, key_metadata, run_keymeta, subgroups
from synthfm.analyze.morphology import MorphologyConfig, run_morphology


def _confounded(n: int = 240, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Site B shifts tortuosity and the latent features; sex follows site (80% male at B) but acts on nothing."""
    rng = np.random.default_rng(seed)
    site = np.repeat(["A", "B"], n // 2)
    sex = np.where(rng.uniform(size=n) < np.where(site == "B", 0.8, 0.2), "M", "F")
    batch = rng.choice(["x", "y"], size=n)
    table = pd.DataFrame({"id": [f"{i}" for i in range(n)], "site": site, "sex": sex, "batch": batch,
                          "age": rng.uniform(20, 90, n),
                          "tortuosity_distance": 1.0 + 0.3 * (site == "B") + rng.normal(0, 0.1, n),
                          "fractal_dimension": rng.normal(1.4, 0.05, n)})
    feats = rng.normal(size=(n, 8))
    feats[:, :3] += 2.0 * (site == "B")[:, None]
    return table, feats


def test_age_bands_follow_the_paper() -> None:
    """Ages fall into the papers' <40, 40-70 and >=70, labelled as everywhere else (0-40, 40-70, 70-120)."""
    cfg = KeyMetaConfig()
    got = subgroups(pd.Series(np.arange(20.0, 90.0, 5.0)), "age", cfg)
    assert sorted(got.unique()) == ["0-40", "40-70", "70-120"]
    assert got.iloc[0] == "0-40" and got.iloc[-1] == "70-120" and got.iloc[6] == "40-70" and got.iloc[10] == "70-120"


def test_planted_field_ranks_first_and_stratification_removes_a_confounded_one() -> None:
    """Site is key (morphology and latent); sex differs only through site, so it is not key once site is fixed."""
    table, feats = _confounded()
    cfg = KeyMetaConfig()
    res = key_metadata(table, cfg, ["site", "sex", "batch", "age"], ["tortuosity_distance", "fractal_dimension"],
                       feats)
    ranked = res["ranked"].set_index("field")
    assert res["ranked"]["field"].iloc[0] == "site"
    assert ranked.loc["site", "key"] and ranked.loc["site", "indices"] == "tortuosity_distance"
    assert not ranked.loc["sex", "key"] and not ranked.loc["batch", "key"] and not ranked.loc["age", "key"]
    tests = res["tests"].set_index(["field", "index"])
    assert tests.loc[("sex", "tortuosity_distance"), "p_pooled"] < 1e-4  # confounded when pooled ...
    assert tests.loc[("sex", "tortuosity_distance"), "p"] > 0.05  # ... not with site held fixed
    assert ranked.loc["site", "knn_gain"] > 0.2
    assert abs(ranked.loc["batch", "knn_gain"]) < 0.12
    assert ranked.loc["site", "silhouette"] > ranked.loc["batch", "silhouette"] + 0.1


def test_planted_phantom_effect_is_found_and_unplanted_is_not(planted_card: Path, tmp_path: Path) -> None:
    """On measured phantom morphology: site (tortuosity planted) is key, batch (random) is not."""
    morph = run_morphology(MorphologyConfig(card=str(planted_card), size=None, examples=0), tmp_path / "m")
    out = run_keymeta(KeyMetaConfig(morphology=[str(morph)], fields=["site", "batch"]), tmp_path / "k")
    ranked = pd.read_csv(out).set_index("field")
    assert bool(ranked.loc["site", "key"]) and not bool(ranked.loc["batch", "key"])
    assert "tortuosity_distance" in ranked.loc["site", "indices"]
    assert ranked.loc["site", "min_p_holm"] < 1e-3
    assert ranked.loc["batch", "min_p_holm"] > 0.05
    strata = pd.read_csv(tmp_path / "k" / "keymeta_strata.csv")
    assert set(strata[strata["field"] == "site"]["n"]) == {20}  # two batch strata of 20 eyes each


def test_unknown_field_is_named() -> None:
    """A field the table lacks is a clear error."""
    from synthfm.analyze.keymeta import _fields
    from synthfm.errors import SynthfmError

    with pytest.raises(SynthfmError, match="'ethnicity'"):
        _fields(pd.DataFrame({"site": ["A"]}), KeyMetaConfig(fields=["ethnicity"]), [])
