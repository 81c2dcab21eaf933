"""A linear probe run scores every pooling and a k-NN from its one cached feature pass; `pool` in the classifier."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from synthfm.adapt.commands import show_probes
from synthfm.adapt.experiment import run_experiment
from synthfm.adapt.export import load_classifier
from synthfm.adapt.trainer import Trainer
from synthfm.evaluate.knn import knn_scores
from synthfm.evaluate.metrics import task_metrics
from synthfm.evaluate.predictions import run_path
from synthfm.evaluate.probes import POOL_CHOICE, PROBES
from synthfm.models.checkpoint import load_state, save_state
from synthfm.models.pooling import pool_features
from synthfm.runs import config_hash
from synthfm.train.trainer import FEATURES_FILE


def test_probe_run_writes_every_pool_and_knn(tiny_cfg, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tiny_cfg(policy="linear_probe", seeds=[0, 1], epochs=2)
    results = run_experiment(cfg, tmp_path)
    assert len(results) == 2 * 2 * 7  # results: the configured head's rows only, as before
    probes = pd.read_parquet(tmp_path / f"{PROBES}.parquet")
    keys = set(probes[["readout", "pool"]].itertuples(index=False))
    assert keys == {(r, p) for r in ("linear", "knn") for p in ("cls", "mean", "cls+mean")}
    assert len(probes) == 2 * 6 * 2 * 7  # seeds x readouts/pools x splits x binary metrics
    run = run_path(tmp_path, 1.0, 1)
    summary = json.loads((run / "COMPLETE.json").read_text())["summary"]
    assert summary["probes"]["linear:cls"] == summary["metrics"]  # the configured head is the cls probe
    # the cached features hold every pooling from the same pass; the head's input is the cls pooling
    state = load_state(run / FEATURES_FILE)
    assert torch.equal(state["test.x"], state["test.pool.cls"])
    assert state["test.pool.cls+mean"].shape[1] == 2 * state["test.pool.mean"].shape[1] == 96
    # the k-NN entry is DINO's vote on those features (train subset as memory bank)
    p = knn_scores(state["train.pool.mean"], state["train.y"], state["test.pool.mean"], "binary", 2)
    assert summary["probes"]["knn:mean"]["test"] == task_metrics("binary", state["test.y"].numpy(), p)
    # the pool choice is the best mean validation AUROC over the two seeds
    choice = pd.read_csv(tmp_path / f"{POOL_CHOICE}.csv")
    val = probes.query("readout == 'linear' and split == 'val' and metric == 'auroc'")
    best = val.groupby("pool")["value"].mean()
    assert choice.set_index("pool")["mean"].to_dict() == pytest.approx(best.to_dict())
    assert choice.loc[choice["chosen"], "pool"].item() == best.idxmax()
    show_probes(tmp_path)  # what `synthfm adapt` prints after its results
    printed = capsys.readouterr().out
    assert "pooling chosen by mean val AUROC" in printed and "cls+mean" in printed and "knn" in printed


def test_pool_sets_the_head_input_and_probes_can_be_off(tiny_cfg, tmp_path: Path) -> None:
    cfg = tiny_cfg(policy="linear_probe", pool="cls+mean", probes={"pools": False, "knn": False}, epochs=1)
    t = Trainer(cfg, tmp_path)
    assert t.model.pool == "cls+mean" and t.model.head[0].num_features == 96
    summary = t.fit()
    assert "probes" not in summary
    state = load_state(tmp_path / FEATURES_FILE)
    assert not any(".pool." in k for k in state)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(t.model.encoder.eval()(x), pool_features(t.model.encoder, x, "cls"))
        assert pool_features(t.model.encoder, x, "cls+mean").shape == (2, 96)


def test_finetune_with_mean_pool_exports_to_plain_timm(tiny_cfg, tmp_path: Path) -> None:
    t = Trainer(tiny_cfg(policy="finetune", pool="mean", epochs=1), tmp_path)
    t.fit()
    clf, info = load_classifier(tmp_path)
    assert info["overrides"]["global_pool"] == "avg" and info["overrides"]["fc_norm"] is False
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(clf(x), t.model.eval()(x))


def test_new_fields_keep_old_hashes(tiny_cfg) -> None:
    cfg = tiny_cfg()
    dump = cfg.model_dump()
    assert "pool" not in dump and "probes" not in dump
    assert config_hash(cfg) != config_hash(tiny_cfg(pool="mean")) != config_hash(tiny_cfg(probes={"knn": False}))


def test_runs_finished_before_probes_are_backfilled_without_retraining(tiny_cfg, tmp_path: Path) -> None:
    cfg = tiny_cfg(policy="linear_probe", seeds=[0, 1], epochs=1)
    run_experiment(cfg, tmp_path)
    fresh = pd.read_parquet(tmp_path / f"{PROBES}.parquet")
    for seed in (0, 1):  # make the experiment look as it did before probes: no summary entry, tables or pools
        run = run_path(tmp_path, 1.0, seed)
        marker = json.loads((run / "COMPLETE.json").read_text())
        marker["summary"].pop("probes")
        (run / "COMPLETE.json").write_text(json.dumps(marker))
        state = load_state(run / FEATURES_FILE)
        save_state({k: v for k, v in state.items() if ".pool." not in k}, run / FEATURES_FILE)
    for name in (PROBES, POOL_CHOICE):
        for suffix in (".parquet", ".csv"):
            (tmp_path / f"{name}{suffix}").unlink()
    best = run_path(tmp_path, 1.0, 0) / "best.safetensors"
    stamp = best.stat().st_mtime_ns
    run_experiment(cfg, tmp_path)
    assert best.stat().st_mtime_ns == stamp
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / f"{PROBES}.parquet"), fresh)


def test_ordinal_probe_run_scores_class_shares(tiny_cfg, tmp_path: Path) -> None:
    summary = Trainer(tiny_cfg(policy="linear_probe", task="dr_grade", epochs=1), tmp_path).fit()
    assert set(summary["probes"]) == {f"{r}:{p}" for r in ("linear", "knn") for p in ("cls", "mean", "cls+mean")}
    state = load_state(tmp_path / FEATURES_FILE)
    p = knn_scores(state["train.pool.cls"], state["train.y"], state["val.pool.cls"], "ordinal", 5)
    assert p.shape == (16, 5) and p.sum(1) == pytest.approx(1.0)
    assert summary["probes"]["knn:cls"]["val"] == task_metrics("ordinal", state["val.y"].numpy(), p)
    assert "kappa_quadratic" in summary["probes"]["linear:mean"]["test"]
