"""Patient-level stratified splits: whole patients, ratios per stratum, seeded, never leaking."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from synthfm.data.manifest import SPLIT, load_card
from synthfm.data.splits import SplitConfig, _allocate, assign_splits, patient_cuts, split_card
from synthfm.errors import SynthfmError


def test_allocate_largest_remainder() -> None:
    assert _allocate(10, (0.7, 0.1, 0.2)) == [7, 1, 2]
    assert _allocate(3, (0.5, 0.25, 0.25)) == [2, 1, 0] or sum(_allocate(3, (0.5, 0.25, 0.25))) == 3
    assert sum(_allocate(7, (0.6, 0.2, 0.2))) == 7


def test_assign_keeps_patients_whole_and_stratifies() -> None:
    patients = pd.Series([f"p{i // 3}" for i in range(300)])
    strata = pd.Series([str((i // 3) % 2) for i in range(300)])
    split = assign_splits(patients, strata, (0.6, 0.2, 0.2), seed=1)
    assert split.groupby(patients).nunique().max() == 1
    for s in ("0", "1"):
        counts = split[strata == s].value_counts()
        assert counts["train"] == 90 and counts["val"] == 30 and counts["test"] == 30


def test_assign_is_seeded() -> None:
    p = pd.Series([f"p{i}" for i in range(50)])
    s = pd.Series(["a"] * 50)
    assert assign_splits(p, s, (0.7, 0.1, 0.2), 3).equals(assign_splits(p, s, (0.7, 0.1, 0.2), 3))
    assert not assign_splits(p, s, (0.7, 0.1, 0.2), 3).equals(assign_splits(p, s, (0.7, 0.1, 0.2), 4))


def test_split_card_writes_new_card_without_touching_source(make_card, tmp_path) -> None:
    src = make_card(n=40)
    before = (src / "manifest.csv").read_bytes()
    out = split_card(src, tmp_path / "split", SplitConfig(ratios=(0.5, 0.25, 0.25), seed=0))
    assert (src / "manifest.csv").read_bytes() == before
    data = load_card(out)
    assert set(data.df[SPLIT]) == {"train", "val", "test"}
    assert data.df.groupby("patient")[SPLIT].nunique().max() == 1
    assert data.image_path(0).is_file()


def test_split_keep_existing_test(make_card, tmp_path) -> None:
    def with_test(df: pd.DataFrame) -> pd.DataFrame:
        return df.assign(split=["test" if int(p[1:]) < 4 else "train" for p in df["patient"]])
    src = make_card(n=40, rows=with_test, card={"split": {"column": "split"}})
    out = load_card(split_card(src, tmp_path / "s", SplitConfig(ratios=(0.75, 0.25, 0.0), keep=["test"])))
    orig = load_card(src)
    np.testing.assert_array_equal(out.df[SPLIT] == "test", orig.df[SPLIT] == "test")
    assert (out.df[SPLIT] == "val").sum() > 0


def test_bad_ratios_rejected() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        SplitConfig(ratios=(0.5, 0.5, 0.5))


def test_unknown_keep_split(make_card, tmp_path) -> None:
    with pytest.raises(SynthfmError, match="unknown split"):
        split_card(make_card(), tmp_path / "s", SplitConfig(keep=["holdout"]))


def test_label_fractions_nested_stratified_patient_level() -> None:
    from synthfm.data.splits import label_fractions
    patients = pd.Series([f"p{i // 2}" for i in range(400)])
    strata = pd.Series([str((i // 2) % 4) for i in range(400)])
    subsets = label_fractions(patients, strata, [0.1, 0.2, 0.4, 1.0], seed=0)
    assert subsets[1.0].all()
    for small, big in ((0.1, 0.2), (0.2, 0.4), (0.4, 1.0)):
        assert (subsets[small] <= subsets[big]).all()
    for f, mask in subsets.items():
        assert patients[mask].map(patients.value_counts()).eq(2).all()
        counts = strata[mask].value_counts()
        assert counts.min() == counts.max() == int(np.ceil(f * 50)) * 2
    with pytest.raises(SynthfmError, match="outside"):
        label_fractions(patients, strata, [1.5], seed=0)


def test_patient_cuts_keep_patients_whole_and_cut_at_the_first_boundary_past_each_fraction() -> None:
    """Patients a (3 images), b (1), c (2), d (4): 10 rows. Whatever the seeded order, every part holds whole
    patients, parts are disjoint and cover the rows, and part k ends at the first patient boundary at or after
    cuts[k] x 10 rows."""
    patients = np.array(list("aaabccdddd"))
    for seed in range(5):
        first, second, rest = patient_cuts(patients, [0.3, 0.6], seed)
        parts = [set(patients[p]) for p in (first, second, rest)]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        assert sorted(np.concatenate([first, second, rest]).tolist()) == list(range(10))
        order = np.concatenate([first, second, rest])
        ends = np.cumsum([np.sum(patients == p) for p in dict.fromkeys(patients[order])])  # patient boundaries
        assert len(first) == ends[np.searchsorted(ends, 3)]
        assert len(first) + len(second) == ends[np.searchsorted(ends, 6)]
    assert sum(len(part) for part in patient_cuts(patients, [0.5], 0, limit=4)) == 4  # at most `limit` rows drawn
    first, rest = patient_cuts(np.array(list("abcdefghij")), [0.2], 1)  # one image per patient: exactly 20%
    assert len(first) == 2 and len(rest) == 8
