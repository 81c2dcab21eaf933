"""The pooling of a probe experiment is chosen on validation rows only, and the arms comparison uses that choice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from synthfm.errors import SynthfmError
from synthfm.evaluate.arms import arm_tables
from synthfm.evaluate.probes import POOL_CHOICE, PROBES, choose_pool, headline_rows, probe_rows, write_probe_tables
from synthfm.evaluate.results import RESULTS, tidy_rows
from synthfm.io import write_table_pair

# Per pool: (validation AUROC, test AUROC) of seeds 0..2. Validation ranks mean > cls+mean > cls, test the reverse.
AUROC = {"cls": ((0.70, 0.71, 0.69), (0.86, 0.85, 0.84)),
         "mean": ((0.79, 0.78, 0.77), (0.72, 0.71, 0.73)),
         "cls+mean": ((0.74, 0.75, 0.73), (0.80, 0.81, 0.79))}
META = {"dataset": "d", "task": "t", "policy": "linear_probe", "encoder": "e", "fraction": 1.0, "eval_set": "internal"}


def probes_summary(seed: int, auroc: dict = AUROC) -> dict[str, dict[str, dict[str, float]]]:
    """One run's `probes` summary: a linear probe per pool and a k-NN on cls that is best of all on validation."""
    out = {f"linear:{p}": {"val": {"auroc": v[0][seed]}, "test": {"auroc": v[1][seed]}} for p, v in auroc.items()}
    out["knn:cls"] = {"val": {"auroc": 0.95}, "test": {"auroc": 0.60}}
    return out


def probes_table(experiment: str = "exp", auroc: dict = AUROC) -> pd.DataFrame:
    return pd.DataFrame([r for seed in range(3)
                         for r in probe_rows(probes_summary(seed, auroc), experiment=experiment, **META, seed=seed)])


def test_choice_reads_validation_only() -> None:
    probes = probes_table()
    choice = choose_pool(probes, "val")
    assert choice.set_index("pool")["chosen"].to_dict() == {"cls": False, "mean": True, "cls+mean": False}
    assert choice.set_index("pool")["mean"]["mean"] == pytest.approx(0.78)
    assert set(choice["readout"]) == {"linear"} and set(choice["split"]) == {"val"}  # k-NN is reported, not chosen
    head = headline_rows(probes, choice)
    assert set(head["pool"]) == {"mean"} and "readout" not in head
    assert sorted(head.query("split == 'test'")["value"]) == [0.71, 0.72, 0.73]
    # choosing on the test split would have picked cls: test rows must not move the choice
    assert choose_pool(probes, "test").set_index("pool")["chosen"]["cls"]
    worse = {**AUROC, "mean": (AUROC["mean"][0], (0.1, 0.1, 0.1))}
    assert choose_pool(probes_table(auroc=worse), "val").set_index("pool")["chosen"]["mean"]
    nan_best = {**AUROC, "cls": ((np.nan,) * 3, AUROC["cls"][1])}
    assert not choose_pool(probes_table(auroc=nan_best), "val").set_index("pool")["chosen"]["cls"]
    with pytest.raises(SynthfmError, match="validation split 'valid'"):
        choose_pool(probes, "valid")


def write_experiment(path: Path, configured: dict[int, float], probes: pd.DataFrame | None) -> Path:
    """An experiment folder: results (the configured head's test AUROC per seed) and, optionally, probes."""
    rows = [r for seed, v in configured.items()
            for r in tidy_rows({"test": {"auroc": v}}, experiment=path.name, **META, seed=seed)]
    path.mkdir(parents=True)
    write_table_pair(pd.DataFrame(rows), path / RESULTS)
    if probes is not None:
        write_probe_tables(probes.to_dict("records"), path, "val")
    return path


def test_arms_take_each_probe_experiment_at_its_validation_choice(tmp_path: Path) -> None:
    probed = write_experiment(tmp_path / "mae", {s: AUROC["cls"][1][s] for s in range(3)}, probes_table("mae"))
    assert (probed / f"{PROBES}.parquet").is_file() and (probed / f"{POOL_CHOICE}.csv").is_file()
    plain = write_experiment(tmp_path / "random", {0: 0.60, 1: 0.62, 2: 0.61}, None)
    tables = arm_tables({"mae": str(probed), "random": str(plain)}, baselines=["random"], reference="random",
                        metrics=["auroc"])
    summary = tables["summary"].set_index("arm")["mean"]
    assert summary["mae"] == pytest.approx(0.72)  # the val-chosen mean pooling's test AUROC, not cls's 0.85
    assert summary["random"] == pytest.approx(0.61)
    test = tables["tests"].iloc[0]
    assert test["mean_a"] == pytest.approx(0.72) and test["mean_diff"] == pytest.approx(0.11)
    pooling = tables["pooling"]
    assert set(pooling["arm"]) == {"mae"}
    assert set(pooling[["readout", "pool"]].itertuples(index=False)) == {
        ("linear", "cls"), ("linear", "mean"), ("linear", "cls+mean"), ("knn", "cls")}
    chosen = pooling[pooling["chosen"]]
    assert set(chosen["pool"]) == {"mean"} and set(chosen["readout"]) == {"linear"}
    knn_test = pooling.query("readout == 'knn' and split == 'test'")["mean"].item()
    assert knn_test == pytest.approx(0.60)
