"""The pipeline runner: plan before running, reuse finished jobs, resume after kill -9, clear errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from synthfm.errors import SynthfmError
from synthfm.pipeline.runner import JOB_FILE, run_pipeline

QUIET = {"say": lambda s: None}


def test_second_run_reuses_every_job(finished: Path, spec: Any, write_spec: Any) -> None:
    stamps = {p: p.stat().st_mtime_ns for p in finished.rglob("*") if p.is_file() and p.name != "pipeline.json"}
    t0 = time.perf_counter()
    _, jobs = run_pipeline(write_spec(finished.parent / "tiny.yaml", spec()), finished, **QUIET)
    assert [j.status for j in jobs] == ["cached"] * len(jobs)
    assert time.perf_counter() - t0 < 30  # no training ran (generous bound against a loaded machine)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    plan = json.loads((finished / "pipeline.json").read_text())
    assert [j["status"] for j in plan["jobs"]] == ["cached"] * len(jobs)
    assert all(len(j["load_1m"]) == 2 and min(j["load_1m"]) >= 0 for j in plan["jobs"])  # as the job first ran
    assert (finished / "report.html").is_file()


def test_changed_config_runs_only_downstream_jobs(finished: Path, tmp_path: Path, spec: Any, write_spec: Any) -> None:
    cfg = spec()
    cfg["evaluate"]["mae_vs_random"]["compare"]["metric"] = "accuracy"
    _root, jobs = run_pipeline(write_spec(tmp_path / "p.yaml", cfg), finished, dry_run=True, **QUIET)
    status = {j.name: j.status for j in jobs}
    assert status["pretrain.mae"] == "cached" and status["adapt.mae_probe"] == "cached"
    assert status["evaluate.mae_vs_random"] == "to run" and status["report.report"] == "to run"


def test_dry_run_plans_without_running(tmp_path: Path, spec: Any, write_spec: Any) -> None:
    lines: list[str] = []
    _root, jobs = run_pipeline(write_spec(tmp_path / "p.yaml", spec()), tmp_path / "run", dry_run=True,
                              say=lines.append)
    assert [j.status for j in jobs] == ["to run"] * 11 and not (tmp_path / "run").exists()
    assert any("pretrain.mae" in line and "to run" in line for line in lines)


@pytest.mark.parametrize(("edit", "needle"), [
    (lambda s: s.update(analyse={}), "unknown stage or key 'analyse'"),
    (lambda s: s["adapt"]["mae_probe"].update(epoch=3), "unknown key 'epoch'"),
    (lambda s: s["data"].update(real={"card": "nowhere/dataset.yaml"}), "nowhere/dataset.yaml does not exist"),
    (lambda s: s["adapt"]["mae_probe"].update(encoder="${pretrain.dino}"), "refers to '${pretrain.dino}'"),
    (lambda s: s["data"]["fundus"]["phantom"].update(condition={"x": "${adapt.mae_probe}"}), "not a job listed before"),
    (lambda s: s["evaluate"].update(x={"fairnes": {}}), "must be a mapping with exactly one key naming its kind"),
])
def test_bad_pipeline_fails_before_anything_runs(tmp_path: Path, edit: Any, needle: str, spec: Any,
                                                  write_spec: Any) -> None:
    cfg = spec()
    edit(cfg)
    with pytest.raises(SynthfmError) as err:
        run_pipeline(write_spec(tmp_path / "p.yaml", cfg), tmp_path / "run", **QUIET)
    assert needle in err.value.message
    assert not (tmp_path / "run").exists()


def test_only_needs_finished_inputs(tmp_path: Path, spec: Any, write_spec: Any) -> None:
    with pytest.raises(SynthfmError, match=r"needs 'data\.fundus'"):
        run_pipeline(write_spec(tmp_path / "p.yaml", spec()), tmp_path / "run", only=["adapt"], **QUIET)
    with pytest.raises(SynthfmError, match="not a stage"):
        run_pipeline(write_spec(tmp_path / "p.yaml", spec()), tmp_path / "run", start="train", **QUIET)


def test_failure_names_the_stage_and_its_log(tmp_path: Path, make_card: Any, write_spec: Any) -> None:
    card = make_card(12)
    (card / "img/003.png").unlink()
    cfg = {"name": "broken", "data": {"real": {"card": str(card)}}, "report": None}
    with pytest.raises(SynthfmError) as err:
        run_pipeline(write_spec(tmp_path / "p.yaml", cfg), tmp_path / "run", **QUIET)
    assert "stage 'data.real' failed" in err.value.message and "003.png" in err.value.message
    log = next((tmp_path / "run/data").glob("real-*/job.log"))
    assert str(log) in err.value.fix and "Traceback" in log.read_text()
    plan = json.loads((tmp_path / "run/pipeline.json").read_text())
    assert plan["jobs"][0]["status"] == "failed"


def test_kill_9_then_same_command_redoes_no_finished_job(tmp_path: Path, spec: Any, write_spec: Any) -> None:
    cfg = {k: v for k, v in spec(steps=12).items() if k in ("name", "data", "pretrain")}
    pipe = write_spec(tmp_path / "p.yaml", {**cfg, "report": None})
    root = tmp_path / "run"
    env = {**os.environ, "SYNTHFM_PROGRESS": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "synthfm", "run", str(pipe), "--out", str(root)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and not list(root.glob("pretrain/mae-*/checkpoints/*/state.json")):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    data_marker = next(root.glob("data/fundus-*/")) / JOB_FILE
    assert data_marker.is_file(), "the data job should have finished before the kill"
    stamp = data_marker.stat().st_mtime_ns
    assert not list(root.glob("pretrain/mae-*/" + JOB_FILE)), "killed before pretraining finished"
    _, jobs = run_pipeline(pipe, root, **QUIET)
    status = {j.name: j.status for j in jobs}
    assert status["data.fundus"] == "cached" and status["pretrain.mae"] == "ran"
    assert data_marker.stat().st_mtime_ns == stamp
    metrics = (next(root.glob("pretrain/mae-*")) / "metrics.jsonl").read_text()
    assert '"event": "resume"' in metrics  # the engine continued from its checkpoint, not from step 0


def test_a_kill_while_pipeline_json_was_written_leaves_no_temporary(tmp_path: Path, spec: Any,
                                                                   write_spec: Any) -> None:
    cfg = {k: v for k, v in spec().items() if k in ("name", "data")}
    root = tmp_path / "run"
    root.mkdir()
    (root / ".pipeline.json.k1ll3d.tmp").write_text("{")  # killed before the rename
    run_pipeline(write_spec(tmp_path / "p.yaml", {**cfg, "report": None}), root, **QUIET)
    assert (root / "pipeline.json").is_file() and not list(root.rglob(".*.tmp*"))


def test_edited_manifest_is_a_new_job_not_a_stale_reuse(tmp_path: Path, make_card: Any, write_spec: Any) -> None:
    import pandas as pd

    card = make_card(n=12)
    path = write_spec(tmp_path / "p.yaml", {"name": "p", "data": {"c": {"card": str(card)},
                                                                   "s": {"split": {"input": "${data.c}"}}}})
    _, first = run_pipeline(path, tmp_path / "run", **QUIET)
    df = pd.read_csv(card / "manifest.csv")
    df.loc[0, "grade"] = 2  # relabel one row behind the same path
    df.to_csv(card / "manifest.csv", index=False)
    _, planned = run_pipeline(path, tmp_path / "run", dry_run=True, **QUIET)
    assert [j.status for j in planned[:2]] == ["to run", "to run"]
    assert planned[0].key != first[0].key and planned[1].key != first[1].key
    _, second = run_pipeline(path, tmp_path / "run", **QUIET)
    split = pd.read_parquet(second[1].dir / "manifest.parquet")
    assert split.loc[0, "grade"] == 2


def test_checkpoints_job_plans_on_a_fresh_root(tmp_path: Path, spec: Any, write_spec: Any) -> None:
    doc = spec(steps=4)
    doc["evaluate"] = {"curve": {"checkpoints": {"pretrain": "${pretrain.mae}", "adapt": {
        "card": "${data.fundus}", "task": "dr_grade", "policy": "linear_probe", "image_size": 32, "epochs": 1,
        "seeds": [0], "backbone": "vit_tiny_p8_64", "backbone_overrides": {"img_size": 32}}}}}
    doc.pop("analyze")
    _, jobs = run_pipeline(write_spec(tmp_path / "p.yaml", doc), tmp_path / "run", dry_run=True, **QUIET)
    assert jobs[-2].name == "evaluate.curve" and jobs[-2].status == "to run"
