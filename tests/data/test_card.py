"""Dataset cards and manifests: validation names the key, column, row or file and the fix."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from synthfm.data.card import DatasetCard, TaskSpec, read_card, write_card
from synthfm.data.manifest import SPLIT, load_card
from synthfm.errors import SynthfmError


def test_valid_card_loads_and_encodes_labels(make_card) -> None:
    data = load_card(make_card(n=6))
    assert len(data) == 6
    np.testing.assert_array_equal(data.labels["grade"], [0, 1, 2, 0, 1, 2])
    assert data.channels == 3


def test_labels_by_class_name(make_card) -> None:
    names = ["none", "mild", "severe"]
    card = make_card(n=6, rows=lambda df: df.assign(grade=[names[g] for g in df["grade"]]))
    np.testing.assert_array_equal(load_card(card).labels["grade"], [0, 1, 2, 0, 1, 2])


def test_card_round_trip(tmp_path: Path) -> None:
    card = DatasetCard(name="x", modality="cxr", tasks=[TaskSpec(name="tb", type="binary", classes=["no", "yes"])])
    write_card(card, tmp_path)
    again, _ = read_card(tmp_path)
    assert again == card


def test_unknown_card_key_named_with_allowed_keys(make_card) -> None:
    with pytest.raises(SynthfmError) as e:
        load_card(make_card(card={"taks": []}))
    assert "unknown key 'taks'" in e.value.message and "tasks" in e.value.message


def test_unknown_nested_key(make_card) -> None:
    with pytest.raises(SynthfmError, match=r"unknown key 'metadata.gender'.*allowed keys here: age"):
        load_card(make_card(card={"metadata": {"gender": "sex"}}))


def test_wrong_type_names_key_and_value(make_card) -> None:
    with pytest.raises(SynthfmError, match=r"bad value for 'modality': 'mri'"):
        load_card(make_card(card={"modality": "mri"}))


def test_binary_task_needs_two_classes() -> None:
    with pytest.raises(ValueError, match="exactly 2 classes"):
        TaskSpec(name="t", type="binary", classes=["a", "b", "c"])


def test_missing_declared_column(make_card) -> None:
    card = make_card(rows=lambda df: df.drop(columns=["age"]))
    with pytest.raises(SynthfmError, match=r"lacks column\(s\) 'age' \(from metadata.age\)"):
        load_card(card)


def test_nan_label_names_rows(make_card) -> None:
    def nan_row(df: pd.DataFrame) -> pd.DataFrame:
        df["grade"] = df["grade"].astype(float)
        df.loc[4, "grade"] = math.nan
        return df
    with pytest.raises(SynthfmError, match=r"NaN labels at rows 5") as e:
        load_card(make_card(rows=nan_row))
    assert "grade" in e.value.message


def test_unknown_label(make_card) -> None:
    card = make_card(rows=lambda df: df.assign(grade=[*df["grade"][:-1], 7]))
    with pytest.raises(SynthfmError, match=r"label 7 in column 'grade', not one of task 'grade' classes"):
        load_card(card)


def test_duplicate_ids(make_card) -> None:
    card = make_card(rows=lambda df: pd.concat([df, df.iloc[[0]]], ignore_index=True))
    with pytest.raises(SynthfmError, match=r"duplicate image ids.*img/000.png"):
        load_card(card)


def test_missing_image_file(make_card) -> None:
    card = make_card(n=5)
    (card / "img/003.png").unlink()
    with pytest.raises(SynthfmError, match=r"missing.*img/003.png \(row 4\)"):
        load_card(card)


def test_empty_manifest(make_card) -> None:
    with pytest.raises(SynthfmError, match="no rows"):
        load_card(make_card(rows=lambda df: df.iloc[0:0]))


def test_patient_leakage_is_an_error(make_card) -> None:
    def leaky(df: pd.DataFrame) -> pd.DataFrame:
        return df.assign(split=["train" if i % 2 == 0 else "test" for i in range(len(df))])
    with pytest.raises(SynthfmError, match=r"patient leakage.*patient='p000' in \['test', 'train'\]"):
        load_card(make_card(rows=leaky, card={"split": {"column": "split"}}))


def test_split_map_and_unknown_split(make_card) -> None:
    def splits(df: pd.DataFrame) -> pd.DataFrame:
        return df.assign(split=["dev" if int(p[1:]) % 3 == 0 else "holdout" for p in df["patient"]])
    mapping = {"split": {"column": "split", "map": {"dev": "val", "holdout": "test"}}}
    data = load_card(make_card(rows=splits, card=mapping))
    assert set(data.df[SPLIT]) == {"val", "test"}
    with pytest.raises(SynthfmError, match=r"unknown split value\(s\) \['dev', 'holdout'\]"):
        load_card(make_card(rows=splits, card={"split": {"column": "split"}}, name="b"))


def test_derived_column_by_regex(make_card) -> None:
    card = make_card(n=4, card={"derive": {"stem": {"source": "path", "regex": r"img/(\d+)"}}})
    assert load_card(card).df["stem"].tolist() == ["000", "001", "002", "003"]


def test_env_var_in_root(make_card, monkeypatch, tmp_path: Path) -> None:
    card = make_card(n=3)
    monkeypatch.setenv("TINY_ROOT", str(card))
    spec = yaml.safe_load((card / "dataset.yaml").read_text())
    spec["source"] = {"root": "${TINY_ROOT}", "path_column": "path"}
    spec["manifest"] = "${TINY_ROOT}/manifest.csv"
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "dataset.yaml").write_text(yaml.safe_dump(spec))
    assert len(load_card(other)) == 3
    monkeypatch.delenv("TINY_ROOT")
    with pytest.raises(SynthfmError, match="TINY_ROOT is not set"):
        load_card(other)


def test_card_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(SynthfmError, match="dataset card not found"):
        load_card(tmp_path / "nothing")
