"""The shared metadata vocabulary: age bands (clipped or not, labels in both forms) and sex codes, by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd

from synthfm.data.vocabulary import (
    AGE_EDGES,
    age_bands,
    band_index,
    band_label,
    band_labels,
    interval_labels,
    normalise_sex,
    sex_codes,
)

AGES = np.array([-3.0, 0.0, 39.9, 40.0, 69.9, 70.0, 119.0, 120.0, 150.0, np.nan])


def test_band_index_open_ended_by_default() -> None:
    assert band_index(AGES, AGE_EDGES).tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2, -1]


def test_band_index_without_clip_leaves_outside_ages_out() -> None:
    assert band_index(AGES, AGE_EDGES, clip=False).tolist() == [-1, 0, 0, 1, 1, 2, 2, -1, -1, -1]


def test_labels_in_both_forms() -> None:
    assert band_labels(AGE_EDGES) == ("0-40", "40-70", "70-120")
    assert interval_labels([0, 40, 70, 120]) == ["[0,40)", "[40,70)", "[70,120)"]
    assert band_label(AGE_EDGES, 70.0) == "70-120"
    assert band_label(AGE_EDGES, float("nan")) is None


def test_age_bands_of_a_column_keep_missing_missing() -> None:
    out = age_bands(pd.Series([20, "41", "n/a", None, 95]))
    assert out.tolist()[:2] == ["0-40", "40-70"]
    assert out.isna().tolist() == [False, False, True, True, False]
    assert out.iloc[4] == "70-120"


def test_sex_spellings() -> None:
    assert [normalise_sex(v) for v in ["female", " m", "F", "Male", "x", None, float("nan"), 1]] == [
        "F", "M", "F", "M", None, None, None, None]
    assert sex_codes(pd.Series(["F", "male", "unknown", None])).tolist() == [0, 1, -1, -1]


def test_task_labels_under_the_generator_s_names(make_card) -> None:
    """Mapped and same-named tasks are kept (class indices), tasks the generator lacks are skipped, and a task
    whose class count differs from the generator's is one error naming both."""
    import pytest

    from synthfm.data.manifest import load_card
    from synthfm.data.vocabulary import mapped_task_labels
    from synthfm.errors import SynthfmError

    data = load_card(make_card(n=6), check_files=False)
    got = mapped_task_labels(data, {"grade": "dr_grade"}, {"dr_grade": ["a", "b", "c"], "other": ["x"]}, "card t")
    assert list(got) == ["dr_grade"] and got["dr_grade"].tolist() == [0, 1, 2, 0, 1, 2]
    assert mapped_task_labels(data, {}, {"dr_grade": ["a", "b", "c"]}, "card t") == {}
    with pytest.raises(SynthfmError, match=r"card t: task 'grade' has 3 classes, the generator's 'grade' has 5"):
        mapped_task_labels(data, {}, {"grade": list("abcde")}, "card t")
