"""The run-directory contract and atomic writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from synthfm import __version__
from synthfm.config import StrictModel
from synthfm.errors import SynthfmError
from synthfm.io import atomic_open, atomic_write_text
from synthfm.runs import RunDir, config_hash, run_stage


class Cfg(StrictModel):
    steps: int = 3
    name: str = "x"


def test_fresh_run_writes_resolved_config_with_version(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r", "demo", Cfg(steps=5))
    assert run.open() == "fresh"
    header = yaml.safe_load((tmp_path / "r/config.yaml").read_text())
    assert header["config"] == {"steps": 5, "name": "x"}
    assert header["synthfm_version"] == __version__ and header["git_commit"]
    assert header["config_hash"] == config_hash(Cfg(steps=5))


def test_finished_stage_is_a_noop(tmp_path: Path) -> None:
    calls = []
    def work(run: RunDir) -> dict:
        calls.append(1)
        run.log(step=1, loss=0.5)
        return {"ok": True}
    run_stage(tmp_path / "r", "demo", Cfg(), work)
    run = run_stage(tmp_path / "r", "demo", Cfg(), work)
    assert calls == [1] and run.is_complete and run.summary() == {"ok": True}
    assert run.metrics()[0]["loss"] == 0.5


def test_interrupted_stage_resumes(tmp_path: Path) -> None:
    def crash(run: RunDir) -> dict:
        run.log(step=1)
        raise RuntimeError("killed")
    with pytest.raises(RuntimeError):
        run_stage(tmp_path / "r", "demo", Cfg(), crash)
    run = RunDir(tmp_path / "r", "demo", Cfg())
    assert run.open() == "resume" and len(run.metrics()) == 1


def test_a_kill_during_the_first_config_write_leaves_no_temporary(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / ".config.yaml.k1ll3d.tmp").write_text("stage: demo\n")  # killed before the rename
    run_stage(tmp_path / "r", "demo", Cfg(), lambda run: {})
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["COMPLETE.json", "config.yaml"]


def test_resumed_stage_logs_each_step_once(tmp_path: Path) -> None:
    """A stage's work starts over when resumed: the killed attempt's records are not kept beside the new ones."""
    def crash(run: RunDir) -> dict:
        run.log(step="summary")
        raise RuntimeError("killed")

    def work(run: RunDir) -> dict:
        run.log(step="summary")
        run.log(step="train")
        return {}
    with pytest.raises(RuntimeError):
        run_stage(tmp_path / "r", "demo", Cfg(), crash)
    run = run_stage(tmp_path / "r", "demo", Cfg(), work)
    assert [r["step"] for r in run.metrics()] == ["summary", "train"]


def test_other_config_in_same_dir_is_an_error(tmp_path: Path) -> None:
    RunDir(tmp_path / "r", "demo", Cfg()).open()
    with pytest.raises(SynthfmError, match="different config"):
        RunDir(tmp_path / "r", "demo", Cfg(steps=9)).open()


def test_torn_metrics_line_skipped(tmp_path: Path) -> None:
    run = RunDir(tmp_path, "demo", Cfg())
    run.open()
    run.log(a=1)
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"a": 2, "b"')
    assert [m["a"] for m in run.metrics()] == [1]


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_open(target) as fh:
        fh.write("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_resume_sweeps_a_killed_writers_temporaries(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r", "demo", Cfg())
    run.open()
    (tmp_path / "r/encoder").mkdir()
    stray = [tmp_path / "r/encoder/.model.safetensors.k3j2.tmp", tmp_path / "r/.metrics.jsonl.a1.tmp.csv"]
    for p in stray:
        p.write_text("partial")
    (tmp_path / "r/ckpt/.step_00000004.tmp").mkdir(parents=True)
    (tmp_path / "r/ckpt/.step_00000004.tmp/model.safetensors").write_text("partial")
    (tmp_path / "r/encoder/model.safetensors").write_text("kept")
    run.release()  # as if the process had died
    assert RunDir(tmp_path / "r", "demo", Cfg()).open() == "resume"
    assert not any(p.exists() for p in stray) and not (tmp_path / "r/ckpt/.step_00000004.tmp").exists()
    assert (tmp_path / "r/encoder/model.safetensors").read_text() == "kept"


def test_read_run_config_types_what_a_run_recorded(tmp_path: Path) -> None:
    """One loader for a run folder's config: typed, stage-checked; a folder without a run reads as no header."""
    from synthfm.runs import read_header, read_run_config

    run = RunDir(tmp_path / "r", "demo", Cfg(steps=7))
    run.open()
    assert read_header(run.path)["stage"] == "demo"
    assert read_run_config(run.path, Cfg) == Cfg(steps=7)
    assert read_run_config(run.path, Cfg, "demo").steps == 7
    with pytest.raises(SynthfmError, match="holds a 'demo' run, not a 'adapt' run"):
        read_run_config(run.path, Cfg, "adapt")
    assert read_header(tmp_path / "nothing") == {}
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.yaml").write_text("- a list, not a header\n")
    assert read_header(tmp_path / "bad") == {}
    with pytest.raises(SynthfmError, match="no readable run"):
        read_run_config(tmp_path / "bad", Cfg)
