"""Output-folder locks: a second writer is refused naming the first; a dead writer's lock is taken over."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from synthfm.config import StrictModel
from synthfm.errors import SynthfmError
from synthfm.locks import LOCK_FILE, acquire, folder_lock, release
from synthfm.runs import RunDir, run_stage


class Cfg(StrictModel):
    steps: int = 3


def hold(folder: Path, pid: int = 4242) -> int:
    """Lock `folder` through a separate open file (as another process would) naming `pid`; return the fd."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, json.dumps({"pid": pid, "host": socket.gethostname(), "command": "synthfm pretrain run"}).encode())
    return fd


def test_second_writer_is_refused_naming_the_holder(tmp_path: Path) -> None:
    fd = hold(tmp_path / "out")
    try:
        with pytest.raises(SynthfmError, match=f"in use by pid 4242 on host {socket.gethostname()}"):
            RunDir(tmp_path / "out", "demo", Cfg()).open()
        assert not (tmp_path / "out" / "config.yaml").exists()
    finally:
        os.close(fd)


def test_other_process_holding_the_lock_blocks(tmp_path: Path) -> None:
    code = ("import sys, time; from synthfm.locks import acquire; acquire(sys.argv[1]); print('held', flush=True); "
            "time.sleep(30)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "out")], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout and proc.stdout.readline().strip() == "held"
        with pytest.raises(SynthfmError, match=f"pid {proc.pid}"):
            run_stage(tmp_path / "out", "demo", Cfg(), lambda run: {})
    finally:
        proc.kill()
        proc.wait()
    # the holder died (kill -9): its lock is taken over and the stage runs
    run = run_stage(tmp_path / "out", "demo", Cfg(), lambda run: {"ok": 1})
    assert run.is_complete and not (tmp_path / "out" / LOCK_FILE).exists()


def test_dead_writer_lock_is_taken_over_with_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / LOCK_FILE).write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
    path = acquire(tmp_path / "out")
    note = capsys.readouterr().err
    assert f"pid {pid}" in note and "process is gone" in note
    assert json.loads(path.read_text())["pid"] == os.getpid()
    release(path)
    assert not path.exists()


def test_same_process_may_nest_and_release_removes_the_file(tmp_path: Path) -> None:
    with folder_lock(tmp_path) as outer, folder_lock(tmp_path) as inner:
        assert outer == inner and outer.exists()
    assert not outer.exists()


def test_finished_and_failed_runs_let_go(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r", "demo", Cfg())
    assert run.open() == "fresh" and (tmp_path / "r" / LOCK_FILE).exists()
    run.complete()
    assert not (tmp_path / "r" / LOCK_FILE).exists()
    assert RunDir(tmp_path / "r", "demo", Cfg()).open() == "done"
    assert not (tmp_path / "r" / LOCK_FILE).exists()
    with pytest.raises(SynthfmError, match="different config"):
        RunDir(tmp_path / "r", "demo", Cfg(steps=4)).open()
    assert not (tmp_path / "r" / LOCK_FILE).exists()
