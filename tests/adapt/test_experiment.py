"""Experiments over fractions × seeds: kill -9 and resume, and the results tables."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from synthfm.adapt.experiment import run_experiment
from synthfm.errors import SynthfmError
from synthfm.evaluate.predictions import run_path
from synthfm.runs import MARKER_FILE

SCRIPT = ("import json, sys; from synthfm.adapt.config import AdaptConfig; "
          "from synthfm.adapt.experiment import run_experiment; "
          "run_experiment(AdaptConfig(**json.loads(sys.argv[1])), sys.argv[2])")


def test_kill9_resumes_without_redoing_finished_seed(tiny_cfg, tmp_path: Path) -> None:
    cfg = tiny_cfg(seeds=[0, 1], epochs=2, policy="finetune")
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, cfg.model_dump_json(), str(out)],
                            env={**os.environ, "SYNTHFM_PROGRESS": "0"})
    first = run_path(out, 1.0, 0) / MARKER_FILE
    deadline = time.time() + 300
    while not first.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first.is_file() and not (run_path(out, 1.0, 1) / MARKER_FILE).is_file()  # killed inside seed 1
    stamp = first.stat().st_mtime_ns
    resumed = run_experiment(cfg, out)
    assert first.stat().st_mtime_ns == stamp
    clean = run_experiment(cfg, tmp_path / "clean")
    assert set(resumed["experiment"]) == {"killed"} and set(clean["experiment"]) == {"clean"}
    pd.testing.assert_frame_equal(resumed.drop(columns="experiment"), clean.drop(columns="experiment"))
    assert set(resumed["seed"]) == {0, 1} and set(resumed["split"]) == {"val", "test"}


def test_experiment_tables(tiny_cfg, tmp_path: Path) -> None:
    cfg = tiny_cfg(seeds=[0, 1], label_fractions=[0.5, 1.0], epochs=1, policy="linear_probe")
    results = run_experiment(cfg, tmp_path)
    assert len(results) == 2 * 2 * 2 * 7  # fractions × seeds × splits × binary metrics
    summary = pd.read_csv(tmp_path / "summary.csv")
    row = summary.query("fraction == 1.0 and split == 'test' and metric == 'auroc'").iloc[0]
    values = results.query("fraction == 1.0 and split == 'test' and metric == 'auroc'")["value"]
    assert row["n"] == 2 and abs(row["mean"] - values.mean()) < 1e-12
    assert abs(row["ci_high"] - row["mean"] - 1.96 * values.std(ddof=1) / 2 ** 0.5) < 1e-12
    run = run_path(tmp_path, 1.0, 1)
    metrics = json.loads((run / "metrics.json").read_text())
    assert values.iloc[1] == metrics["test"]["auroc"]
    preds = pd.read_parquet(run / "predictions_test.parquet")
    assert list(preds.columns) == ["index", "y", "score", "image_id", "patient_id", "age", "sex", "ethnicity",
                                   "device"] and len(preds) == 16
    assert pd.read_parquet(tmp_path / "results.parquet").equals(results)


def test_the_card_is_read_once_per_experiment(tiny_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Four runs (2 fractions x 2 seeds) share the card the experiment loaded; none reads and checks it again."""
    from synthfm.adapt import experiment
    from synthfm.train import trainer

    reads = []
    real = experiment.load_card

    def counting(path, *args, **kwargs):
        reads.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(experiment, "load_card", counting)
    monkeypatch.setattr(trainer, "load_card", counting)
    cfg = tiny_cfg(policy="linear_probe", epochs=1, seeds=[0, 1], label_fractions=[0.5, 1.0])
    results = run_experiment(cfg, tmp_path / "exp")
    assert len(reads) == 1 and results["seed"].nunique() == 2 and results["fraction"].nunique() == 2


def test_baseline_experiments_finish_and_export_what_they_can(tiny_cfg, tmp_path: Path) -> None:
    """A ResNet-18 experiment gets its model card and exports as a plain-timm ResNet (head `fc`) with the same
    logits; the pixels experiment finishes without a card and refuses export in words."""
    import timm

    from synthfm.adapt.adapted import load_adapted
    from synthfm.adapt.experiment import run_experiment
    from synthfm.adapt.export import export_model

    cnn = tmp_path / "cnn"
    run_experiment(tiny_cfg(encoder="random:resnet18", backbone_overrides={}, image_size=32, epochs=1), cnn)
    assert (cnn / "README.md").is_file()
    out = export_model(cnn, tmp_path / "cnn_export")
    info = json.loads((out / "config.json").read_text())
    plain = timm.create_model(info["architecture"], pretrained=True, pretrained_cfg_overlay={
        "file": str(out / "model.safetensors"), "num_classes": 1}, **info["model_args"]).eval()
    model, _ = load_adapted(cnn / "fraction_1" / "seed_0")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model(x))
    pixels = tmp_path / "pixels"
    results = run_experiment(tiny_cfg(encoder="pixels", policy="linear_probe", image_size=16, backbone_overrides={}),
                             pixels)
    assert set(results["encoder"]) == {"pixels"} and not (pixels / "README.md").exists()
    with pytest.raises(SynthfmError, match="raw-pixel baseline"):
        export_model(pixels, tmp_path / "pixels_export")
