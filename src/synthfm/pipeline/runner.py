"""`synthfm run PIPELINE.yaml`: plan every job before running any, reuse finished ones, resume the rest.

Each job runs in `ROOT/<stage>/<job>-<key>`, where the key hashes the job's resolved config (defaults
included), the keys of the jobs it refers to, and the bytes of external files it reads. A job is finished
when its `job.json` holds that key; the stage functions themselves resume an interrupted job from their own
progress logs, so `kill -9` then the same command redoes nothing that finished. `ROOT/pipeline.json` lists
the plan and what happened, and is what the HTML report reads.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from synthfm import __version__
from synthfm.data.digest import path_digest
from synthfm.errors import SynthfmError
from synthfm.io import atomic_write_json
from synthfm.jobs import PLAN_FILE
from synthfm.locks import folder_lock
from synthfm.pipeline.kinds import KINDS, Kind
from synthfm.pipeline.spec import STAGES, JobSpec, PipelineSpec, load_spec, refs_in, substitute
from synthfm.runs import config_hash, git_commit

JOB_FILE = "job.json"
LOG_FILE = "job.log"
log = logging.getLogger("synthfm")


@dataclass
class Job:
    """A planned job: validated config, key, folder, output and the jobs it needs."""

    spec: JobSpec
    kind: Kind
    config: BaseModel
    key: str
    dir: Path
    output: Path
    deps: list[str]
    status: str = "pending"
    seconds: float | None = None

    @property
    def name(self) -> str:
        """`stage.job`."""
        return self.spec.key

    @property
    def finished(self) -> bool:
        """Whether this job's folder holds a finished run of this exact key."""
        marker = self.dir / JOB_FILE
        return marker.is_file() and json.loads(marker.read_text()).get("key") == self.key

    def record(self) -> dict[str, Any]:
        """The job as pipeline.json lists it."""
        done = json.loads((self.dir / JOB_FILE).read_text()) if self.finished else {}
        return {"stage": self.spec.stage, "name": self.spec.name, "kind": self.spec.kind, "key": self.key,
                "dir": str(self.dir), "output": str(self.output), "deps": self.deps, "status": self.status,
                "seconds": done.get("seconds", self.seconds), "load_1m": done.get("load_1m"),
                "summary": done.get("summary", {}),
                "config": self.config.model_dump(mode="json")}


def file_digest(path: Path) -> str:
    """One digest over the bytes of every file behind an input path (a card: its YAML, manifest and images)."""
    if not path.exists():
        return "absent"
    return path_digest(path)


def _deps(job: JobSpec, earlier: list[str]) -> list[str]:
    """The jobs a job refers to (the report needs every earlier job)."""
    if job.stage == "report":
        return list(earlier)
    return list(dict.fromkeys(f"{s}.{n}" for s, n in refs_in(job.raw)))


def _external(job: JobSpec, kind: Kind, cfg: BaseModel, made: list[Path]) -> list[Path]:
    """The job's input files that no earlier job makes (inside an earlier job's folder); each must exist now."""
    paths = [Path(p) for p in kind.inputs(cfg) if not any(Path(p).is_relative_to(m) for m in made)]
    for p in paths:
        if not p.exists():
            raise SynthfmError(f"job '{job.key}': input {p} does not exist",
                               "fix the path in the pipeline file, or make it with an earlier job and refer to it "
                               "as ${stage.job}")
    return paths


def plan(spec: PipelineSpec, root: Path) -> list[Job]:
    """Validate every job, resolve references and compute keys and folders; nothing runs."""
    outputs: dict[str, str] = {}
    keys: dict[str, str] = {}
    dirs: dict[str, Path] = {}
    jobs: list[Job] = []
    for js in spec.jobs:
        kind = KINDS[js.stage][js.kind]
        where = f"{spec.source}, job '{js.key}'"
        deps = _deps(js, [j.name for j in jobs])
        cfg = kind.validate(substitute(js.raw, outputs), where)
        keyed = kind.validate(substitute(js.raw, {k: f"job:{v}" for k, v in keys.items()}), where)
        made = [dirs[d] for d in deps]
        files = {str(p): file_digest(p) for p in _external(js, kind, cfg, made)}
        key = config_hash({"stage": js.stage, "kind": js.kind, "config": keyed.model_dump(mode="json"),
                           "deps": {d: keys[d] for d in deps}, "files": files})[:10]
        folder = root / js.stage / f"{js.name}-{key}"
        job = Job(js, kind, cfg, key, folder, kind.output(cfg, folder), deps)
        outputs[js.key], keys[js.key], dirs[js.key] = str(job.output), key, folder
        jobs.append(job)
    return jobs


def select(jobs: list[Job], only: list[str] | None, start: str | None) -> list[Job]:
    """Mark jobs cached / to run / skipped for --only and --from; check skipped inputs are finished."""
    if start is not None and start not in STAGES:
        raise SynthfmError(f"--from {start!r} is not a stage", f"stages are {', '.join(STAGES)}")
    names = {j.name for j in jobs} | {j.spec.stage for j in jobs}
    bad = [o for o in only or [] if o not in names]
    if bad:
        raise SynthfmError(f"--only {', '.join(bad)}: no such stage or job in this pipeline",
                           "name stages (e.g. adapt) or jobs: " + ", ".join(j.name for j in jobs))
    by_name = {j.name: j for j in jobs}
    for job in jobs:
        wanted = (not only or job.name in only or job.spec.stage in only) and (
            start is None or STAGES.index(job.spec.stage) >= STAGES.index(start))
        job.status = "cached" if job.finished else "to run" if wanted else "skipped"
    for job in jobs:
        for dep in job.deps if job.status == "to run" else []:
            if by_name[dep].status == "skipped":
                raise SynthfmError(f"job '{job.name}' needs '{dep}', which has not finished and is not selected",
                                   "run without --only/--from first, or include that stage")
    return jobs


def write_plan(spec: PipelineSpec, root: Path, jobs: list[Job], started: float) -> None:
    """Write ROOT/pipeline.json: the pipeline, its jobs and their state (rewritten after each job)."""
    atomic_write_json(root / PLAN_FILE, {
        "name": spec.name, "description": spec.description, "source": spec.source, "root": str(root),
        "synthfm_version": __version__, "git_commit": git_commit(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": round(time.time() - started, 1), "spec": spec.raw, "jobs": [j.record() for j in jobs]})


def execute(job: Job) -> None:
    """Run one job in its folder with a log file; a failure names the job and its log."""
    job.dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(job.dir / LOG_FILE)
    log.addHandler(handler)
    log.info("running %s (%s) into %s", job.name, job.spec.kind, job.dir)
    t0, load = time.perf_counter(), os.getloadavg()[0]  # the machine may be shared: its load says how much
    try:
        summary = job.kind.run(job.config, job.dir)
    except Exception as err:
        log.error("job %s failed:\n%s", job.name, traceback.format_exc())
        job.status = "failed"
        message = err.message if isinstance(err, SynthfmError) else f"{type(err).__name__}: {err}"
        fix = err.fix if isinstance(err, SynthfmError) else ""
        raise SynthfmError(f"stage '{job.name}' failed: {message}",
                           (fix + "; " if fix else "") + f"the full log is {job.dir / LOG_FILE}; run the same "
                           "command again after fixing it (finished jobs are reused)") from err
    finally:
        log.removeHandler(handler)
        handler.close()
    job.seconds = round(time.perf_counter() - t0, 2)
    atomic_write_json(job.dir / JOB_FILE, {"name": job.name, "kind": job.spec.kind, "key": job.key,
                                           "output": str(job.output), "seconds": job.seconds,
                                           "load_1m": [round(load, 2), round(os.getloadavg()[0], 2)],
                                           "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                           "summary": summary or {}})
    job.status = "ran"


def run_pipeline(path: str | Path, out: str | Path | None = None, only: list[str] | None = None,
                 start: str | None = None, dry_run: bool = False,
                 say: Callable[[str], None] = print) -> tuple[Path, list[Job]]:
    """Plan, then run the selected jobs in order; return the root folder and the jobs."""
    spec = load_spec(path, KINDS)
    root = Path(out or spec.root or Path("runs") / spec.name)
    if root.exists() and not root.is_dir():
        given = "--out" if out else f"'root' in {spec.source}"
        raise SynthfmError(f"pipeline run root {root} is a file, not a folder ({given})",
                           "give a folder for the run root")
    jobs = select(plan(spec, root), only, start)
    for job in jobs:
        say(f"{job.status:>8}  {job.name:<28} {job.spec.kind:<10} {job.dir}")
    if dry_run:
        return root, jobs
    started = time.time()
    with folder_lock(root):
        for tmp in root.glob(".*.tmp*"):  # a kill while pipeline.json or report.html was written left it
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp)
            else:
                tmp.unlink(missing_ok=True)
        for job in jobs:
            write_plan(spec, root, jobs, started)
            if job.status != "to run":
                continue
            say(f"-> {job.name} ({job.spec.kind})")
            try:
                execute(job)
            finally:
                write_plan(spec, root, jobs, started)
            say(f"   {job.name} finished in {job.seconds:.1f} s")
    return root, jobs
