"""Small-data mode: patient-grouped stratified repeated folds, run directories per fold, resume after kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from synthfm.adapt.config import AdaptConfig, CVConfig
from synthfm.adapt.cv import fold_rows, fold_sizes, fold_table, strata, train_subset
from synthfm.adapt.experiment import run_experiment
from synthfm.data.manifest import load_card
from synthfm.errors import SynthfmError
from synthfm.evaluate.predictions import run_keys, run_path
from synthfm.runs import MARKER_FILE, config_hash


@pytest.fixture
def grouped_card(make_card):
    """60 images of 20 patients (3 each); a patient's grade is (patient % 3), so 7/7/6 patients per grade."""
    return make_card(n=60, rows=lambda df: df.assign(patient=[f"p{i // 3:02d}" for i in range(60)],
                                                     grade=[(i // 3) % 3 for i in range(60)]))


def test_folds_are_patient_grouped_stratified_and_differ_across_repeats(grouped_card) -> None:
    data = load_card(grouped_card)
    cv = CVConfig(folds=5, repeats=3)
    table = fold_table(data, data.card.task("grade"), cv)
    patients = data.patient_ids().to_numpy()
    grade_of = {f"p{p:02d}": p % 3 for p in range(20)}
    per_grade = pd.Series(grade_of).value_counts()  # 7, 7, 6 patients
    tests_by_repeat = []
    for (r, k), one in table.groupby(["repeat", "fold"]):
        roles = {role: set(g["row"]) for role, g in one.groupby("role")}
        assert set().union(*roles.values()) == set(range(60))  # the pool is every row, each in one role
        assert sum(len(v) for v in roles.values()) == 60
        owners = {role: {patients[i] for i in rows} for role, rows in roles.items()}
        assert not owners["train"] & owners["val"] and not owners["train"] & owners["test"]
        assert not owners["val"] & owners["test"]  # patient-grouped: no patient in two roles
        for role, share in (("test", 1 / 5), ("val", 4 / 5 * 1 / 4)):  # val: 1 of 4 inner folds of the rest
            counts = pd.Series([grade_of[p] for p in owners[role]]).value_counts()
            for grade, n in per_grade.items():  # stratified: each grade's patients split within one of even
                assert abs(counts.get(grade, 0) - n * share) < 1 + 1e-9, (r, k, role, grade)
    for r in range(3):
        tests = table[(table["repeat"] == r) & (table["role"] == "test")]
        assert sorted(tests["row"]) == list(range(60))  # every row is tested exactly once per repeat
        tests_by_repeat.append(dict(zip(tests["row"], tests["fold"], strict=True)))
    assert tests_by_repeat[0] != tests_by_repeat[1] != tests_by_repeat[2]  # a new shuffle per repeat
    pd.testing.assert_frame_equal(table, fold_table(data, data.card.task("grade"), cv))  # identical on rerun
    sizes = fold_sizes(table)
    assert (sizes["n_train"] + sizes["n_test"] == 60).all() and len(sizes) == 15


def test_label_fraction_subsets_the_training_part_only(grouped_card) -> None:
    data = load_card(grouped_card)
    task = data.card.task("grade")
    rows = fold_rows(data, task, CVConfig(folds=5, repeats=1), 0, 2)
    half = train_subset(data, task, rows["train"], 0.5, seed=0)
    assert set(half) < set(rows["train"]) and not set(half) & (set(rows["val"]) | set(rows["test"]))
    patients = data.patient_ids().to_numpy()
    assert {patients[i] for i in half}.isdisjoint({patients[i] for i in set(rows["train"]) - set(half)})
    assert (train_subset(data, task, rows["train"], 1.0, seed=0) == rows["train"]).all()


def test_pool_of_named_splits_and_too_few_patients(make_card) -> None:
    card = make_card(n=40, card={"split": {"column": "split"}},
                     rows=lambda df: df.assign(split=["train"] * 24 + ["val"] * 8 + ["test"] * 8))
    data = load_card(card)
    task = data.card.task("grade")
    table = fold_table(data, task, CVConfig(folds=3, repeats=1, pool=["train", "val"]))
    assert set(table["row"]) == set(range(32))  # the test split stays out of the pool
    with pytest.raises(SynthfmError, match="fewer than the 30 folds"):
        fold_table(data, task, CVConfig(folds=30, repeats=1, pool=["train"]))


def test_multilabel_strata_are_label_combinations_with_rare_ones_merged(make_card) -> None:
    card = make_card(n=12, card={"tasks": [{"name": "findings", "type": "multilabel", "classes": ["a", "b"]}]},
                     rows=lambda df: df.assign(a=[1, 1, 0, 0] * 3, b=[1, 0, 0, 0] * 2 + [0, 0, 0, 1]))
    data = load_card(card)
    got = strata(data, data.card.task("findings"), np.arange(12), folds=2)
    assert list(got[:4]) == ["11", "10", "00", "00"] and got[11] == "rare"  # "01" has one patient: merged


def test_cv_is_left_out_of_the_config_hash_when_unset(tiny_cfg) -> None:
    cfg = tiny_cfg()
    assert "cv" not in cfg.model_dump() and config_hash(cfg) == config_hash(tiny_cfg(cv=None))
    with_cv = tiny_cfg(cv={"folds": 2, "repeats": 1})
    assert with_cv.model_dump()["cv"] == {"folds": 2, "repeats": 1, "pool": ["all"], "val_folds": None, "seed": 0}
    single = with_cv.single(1.0, 0, 0, 1)
    assert single.cv.run == (0, 1) and config_hash(single) != config_hash(with_cv.single(1.0, 0, 0, 0))
    with pytest.raises(ValueError, match="leave val_split and test_splits out"):
        tiny_cfg(cv={"folds": 2}, test_splits=["test", "val"])
    with pytest.raises(ValueError, match="outside 1 repeats x 2 folds"):
        CVConfig(folds=2, repeats=1, run=(1, 0))
    assert run_keys(tiny_cfg(seeds=[0, 1], cv={"folds": 2, "repeats": 2}))[:3] == [(1.0, 0, 0, 0), (1.0, 1, 0, 0),
                                                                                   (1.0, 0, 0, 1)]


SCRIPT = ("import json, sys; from synthfm.adapt.config import AdaptConfig; "
          "from synthfm.adapt.experiment import run_experiment; "
          "run_experiment(AdaptConfig(**json.loads(sys.argv[1])), sys.argv[2])")


def test_killed_cv_experiment_redoes_no_finished_fold(tiny_cfg, tmp_path: Path) -> None:
    cfg: AdaptConfig = tiny_cfg(policy="linear_probe", epochs=2, cv={"folds": 2, "repeats": 2})
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, cfg.model_dump_json(), str(out)],
                            env={**os.environ, "SYNTHFM_PROGRESS": "0"})
    first = run_path(out, 1.0, 0, 0, 0) / MARKER_FILE
    deadline = time.time() + 300
    while not first.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first.is_file() and not (out / MARKER_FILE).is_file()  # killed after fold 0, before the end
    stamp = first.stat().st_mtime_ns
    resumed = run_experiment(cfg, out)
    assert first.stat().st_mtime_ns == stamp  # the finished fold was not redone
    clean = run_experiment(cfg, tmp_path / "clean")
    pd.testing.assert_frame_equal(resumed.drop(columns="experiment"), clean.drop(columns="experiment"))
    test = resumed[(resumed["split"] == "test") & (resumed["metric"] == "auroc")]
    assert sorted(zip(test["repeat"], test["fold"], strict=True)) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert (test["n_train"] + test["n_test"] == 64).all() and set(test["n_test"]) == {32}
    folds = pd.read_parquet(out / "cv_folds.parquet")
    preds = pd.read_parquet(run_path(out, 1.0, 0, 1, 1) / "predictions_test.parquet")
    want = folds[(folds["repeat"] == 1) & (folds["fold"] == 1) & (folds["role"] == "test")]["row"]
    assert sorted(preds["index"]) == sorted(want)  # the trainer tested on its own fold's rows
    share = preds["y"].value_counts(normalize=True).max()
    assert test.set_index(["repeat", "fold"]).loc[(1, 1), "majority_rate"] == pytest.approx(share)


def test_the_documented_cv_example_validates() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "small_data.md").read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    cfg = AdaptConfig(**yaml.safe_load(block))
    assert cfg.cv == CVConfig(folds=5, repeats=3, pool=["all"]) and cfg.seeds == [0, 1, 2]


def test_cross_validated_experiments_are_compared_and_evaluated_per_fold(tiny_cfg, tmp_path: Path) -> None:
    from synthfm.evaluate.arms import arm_tables
    from synthfm.evaluate.experiment import evaluate_experiment
    from synthfm.evaluate.results import compare

    cv = {"folds": 3, "repeats": 1}
    a = tmp_path / "a"
    run_experiment(tiny_cfg(policy="linear_probe", epochs=1, cv=cv), a)
    run_experiment(tiny_cfg(policy="linear_probe", epochs=1, cv=cv, lr=1e-2), tmp_path / "b")
    row = compare(a, tmp_path / "b").iloc[0]
    assert row["test"] == "corrected resampled t" and row["n"] == 3 and np.isfinite(row["detectable_diff"])
    tables = arm_tables({"a": a, "b": tmp_path / "b"}, baselines=["b"], reference="b", metrics=["auroc"])
    assert not tables["pooling"].empty  # the probe arms enter through their validation-chosen pooling
    assert list(tables["tests"]["test"]) == ["corrected resampled t"]
    assert set(tables["chance"]["metric"]) == {"auroc", "accuracy"}  # majority rates came with the results
    evaluated = evaluate_experiment(a)
    assert sorted(set(evaluated["subgroups"]["fold"])) == [0, 1, 2]
    assert "fold" not in set(evaluated["subgroup_summary"]["metric"])


def test_class_balance_weights_the_folds_training_rows(tiny_cfg, tmp_path: Path) -> None:
    """Under cv the balanced class weights come from the run's (repeat, fold) training rows (a cv run with
    class_balance used to fail: the weights were only set for the card's fixed splits)."""
    from synthfm.adapt.trainer import Trainer

    cfg = tiny_cfg(policy="linear_probe", epochs=1, class_balance="loss", cv={"folds": 2, "repeats": 1})
    t = Trainer(cfg.single(1.0, 0, 0, 1), tmp_path)
    sets, rows = t.image_datasets()
    labels = t.data.labels["cataract"][rows].reshape(-1)
    t.datasets()
    n, pos = len(labels), int(labels.sum())
    assert rows.tolist() == sets["train"].indices and n < len(t.data)
    assert t.class_weight.tolist() == pytest.approx([n / (2 * (n - pos)), n / (2 * pos)])
    assert t.fit()["fold"] == 1
