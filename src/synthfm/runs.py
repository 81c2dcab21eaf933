"""The run-directory contract every stage follows.

A run directory holds the resolved `config.yaml` (with the package version and git commit),
`metrics.jsonl` (one JSON object per line), the stage's artefacts, and a completion marker
`COMPLETE.json` written last. Re-running a finished stage with the same config is a no-op;
a different config in an existing directory is an error rather than a silent overwrite. While a stage
writes, it holds the folder's lock (`synthfm.locks`): a second writer is refused, naming the first.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel

from synthfm import __version__
from synthfm.config import StrictModel, validate_config
from synthfm.errors import SynthfmError
from synthfm.io import atomic_write_json, atomic_write_text
from synthfm.locks import LOCK_FILE, acquire, is_secondary_rank, release

M = TypeVar("M", bound=BaseModel)

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
MARKER_FILE = "COMPLETE.json"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines log (none if it is missing; a torn line from a kill is skipped)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


@cache
def git_commit() -> str:
    """The git commit of the synthfm source tree, or 'unknown' outside a checkout."""
    src = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def config_hash(config: BaseModel | dict[str, Any]) -> str:
    """A stable SHA-256 of a config's resolved values (first 16 hex digits)."""
    data = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def sweep_temporaries(folder: Path) -> list[Path]:
    """Remove the hidden temporaries (`.NAME.*.tmp*` files and folders) a killed writer left under `folder`."""
    found = sorted((p for p in folder.rglob(".*") if ".tmp" in p.name), key=lambda p: len(p.parts), reverse=True)
    for p in found:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return found


def read_header(run_dir: str | Path) -> dict[str, Any]:
    """A run folder's config.yaml header (stage, version, commit, config hash, resolved config); {} without one.

    An unreadable or non-mapping file reads as {} too: callers treat it as "no run recorded here".
    """
    path = Path(run_dir) / CONFIG_FILE
    try:
        header = yaml.safe_load(path.read_text()) if path.is_file() else {}
    except (yaml.YAMLError, UnicodeDecodeError, OSError):
        return {}
    return header if isinstance(header, dict) else {}


def recorded(config: BaseModel) -> dict[str, Any]:
    """The config as a run folder records it (a StrictModel leaves out its unused fields at their default)."""
    return config.recorded() if isinstance(config, StrictModel) else config.model_dump(mode="json")


def read_run_config(run_dir: str | Path, model: type[M], stage: str | None = None) -> M:
    """The typed config a run folder recorded, checked to be of `stage` when given."""
    header, where = read_header(run_dir), Path(run_dir) / CONFIG_FILE
    if not header:
        raise SynthfmError(f"{run_dir} holds no readable run ({CONFIG_FILE} missing or not a mapping)",
                           "point at a run folder that synthfm wrote")
    if stage is not None and header.get("stage") != stage:
        raise SynthfmError(f"{run_dir} holds a '{header.get('stage')}' run, not a '{stage}' run",
                           f"point at the folder of a {stage} run")
    return validate_config(model, header.get("config"), str(where))


class RunDir:
    """One stage's run directory: resolved config, metrics log, artefacts, completion marker."""

    def __init__(self, path: str | Path, stage: str, config: BaseModel, lock: str | None = LOCK_FILE) -> None:
        self.path = Path(path)
        self.stage = stage
        self.config = config
        self.hash = config_hash(config)
        self.lock_name = lock  # None: the caller coordinates writers itself
        self._lock: Path | None = None

    def _take_lock(self) -> None:
        """Hold the folder's lock until `complete` (a distributed launch's other ranks rely on the main one)."""
        if self.lock_name and self._lock is None and not is_secondary_rank():
            self._lock = acquire(self.path, self.lock_name)

    def release(self) -> None:
        """Let go of the folder's lock (done by `complete`; a failed run's lock dies with its process)."""
        if self._lock is not None:
            release(self._lock)
            self._lock = None

    @property
    def is_complete(self) -> bool:
        """Whether the marker exists and was written for this same config."""
        marker = self.path / MARKER_FILE
        if not marker.is_file():
            return False
        return json.loads(marker.read_text()).get("config_hash") == self.hash

    def open(self) -> str:
        """Lock and prepare the directory; return 'done', 'resume' or 'fresh'."""
        if self.path.exists() and not self.path.is_dir():
            raise SynthfmError(f"output {self.path} is a file, not a folder", "give a folder path for the output")
        cfg_file = self.path / CONFIG_FILE
        self._take_lock()
        try:
            status = self._prepare(cfg_file)
        except BaseException:
            self.release()
            raise
        if status == "done":
            self.release()
        return status

    def _prepare(self, cfg_file: Path) -> str:
        """Check or write the resolved config (the lock is held)."""
        if cfg_file.is_file():
            try:
                found = (yaml.safe_load(cfg_file.read_text()) or {}).get("config_hash")
            except (yaml.YAMLError, UnicodeDecodeError, AttributeError):
                found = "unreadable"
            if found != self.hash:
                raise SynthfmError(
                    f"run directory {self.path} holds a {self.stage} run with a different config "
                    f"(hash {found}, now {self.hash})",
                    "choose a new output directory, or delete the old one to start over",
                )
            if self.is_complete:
                return "done"
            if self.lock_name == LOCK_FILE and self._lock is not None:
                sweep_temporaries(self.path)  # this process is the folder's only writer
            return "resume"
        if self.lock_name == LOCK_FILE and self._lock is not None:  # a kill during the first config write left it
            for tmp in self.path.glob(f".{CONFIG_FILE}.*.tmp*"):
                tmp.unlink(missing_ok=True)
        header = {
            "stage": self.stage,
            "synthfm_version": __version__,
            "git_commit": git_commit(),
            "config_hash": self.hash,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "config": recorded(self.config),
        }
        atomic_write_text(cfg_file, yaml.safe_dump(header, sort_keys=False))
        return "fresh"

    def log(self, **metrics: Any) -> None:
        """Append one metrics record (flushed and synced, so a kill loses at most this line)."""
        self.append(METRICS_FILE, [{"time": time.time(), **metrics}])

    def restart_metrics(self) -> None:
        """Forget a killed attempt's metrics records, for work that starts over when resumed (it logs them again)."""
        (self.path / METRICS_FILE).unlink(missing_ok=True)

    def metrics(self) -> list[dict[str, Any]]:
        """Read back the metrics log, skipping a torn last line."""
        return self.records(METRICS_FILE)

    def append(self, name: str, records: list[dict[str, Any]]) -> None:
        """Append JSON records to a log file in the run directory, synced to disk."""
        with open(self.path / name, "a") as fh:
            fh.writelines(json.dumps(r, default=str) + "\n" for r in records)
            fh.flush()
            os.fsync(fh.fileno())

    def records(self, name: str) -> list[dict[str, Any]]:
        """Read a JSON-lines log of the run directory (a torn line from a kill is skipped)."""
        return read_jsonl(self.path / name)

    def done_rows(self, name: str = "progress.jsonl") -> dict[int, dict[str, Any]]:
        """Rows finished by an earlier attempt, from a progress log keyed by 'row'."""
        return {int(r["row"]): r for r in self.records(name)}

    def complete(self, **summary: Any) -> None:
        """Write the completion marker, last of all."""
        atomic_write_json(self.path / MARKER_FILE, {
            "config_hash": self.hash, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "summary": summary,
        })
        self.release()

    def summary(self) -> dict[str, Any]:
        """The summary recorded in the completion marker."""
        return json.loads((self.path / MARKER_FILE).read_text()).get("summary", {})


def run_stage(path: str | Path, stage: str, config: BaseModel, work: Callable[[RunDir], dict[str, Any]]) -> RunDir:
    """Run `work` in a run directory unless it already finished with this config (a resumed `work` starts over)."""
    run = RunDir(path, stage, config)
    status = run.open()
    if status == "done":
        return run
    if status == "resume":  # `work` starts over: its records would follow the killed attempt's
        run.restart_metrics()
    summary = work(run)
    run.complete(**(summary or {}))
    return run
