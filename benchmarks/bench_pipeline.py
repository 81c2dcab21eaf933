"""Wall time of the README's two commands in a fresh clone: install, the CI run (`bash .ci/run`), `make demo`
from cold and `make demo` again (every job reused).

Clones the committed HEAD of this repository into a temporary folder beside it (so local edits and runs/ play
no part, and ../shared/data is found as from the repository),
then times each step there, one after another. The pytest summary line gives the test count and test time;
the demo's runs/demo/pipeline.json gives its per-job seconds. Prints JSON; `--out` also writes it
(docs/bench/pipeline.json). A failing step stops the run and is recorded with its exit status and output tail.
It is a benchmark, not a test: it takes about 15 minutes on the 2-core CPU machine.
Usage: python benchmarks/bench_pipeline.py [--steps install,ci,demo,demo_again] [--keep] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STEPS: dict[str, tuple[list[str], str]] = {
    "install": (["make", "install"], "create .venv and install torch, torchvision and synthfm[dev]"),
    "ci": (["bash", ".ci/run"], "the CI entry point (= make test) after the install"),
    "demo": (["make", "demo"], "synthfm run configs/demo.yaml from cold, after the install"),
    "demo_again": (["make", "demo"], "the same command again: every job reused"),
}
PYTEST_SUMMARY = re.compile(r"=+ (?P<counts>[^=]*?) in (?P<seconds>[\d.]+)s")


def pytest_summary(output: str) -> dict[str, Any] | None:
    """Counts (passed, failed, ...) and seconds from pytest's last summary line, if present."""
    found = PYTEST_SUMMARY.findall(output)
    if not found:
        return None
    counts, seconds = found[-1]
    parsed = {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", counts)}
    return {**parsed, "seconds": float(seconds)}


def demo_jobs(clone: Path) -> dict[str, float]:
    """Seconds per job of the demo pipeline, from its pipeline.json (jobs reused keep their first time)."""
    plan = clone / "runs" / "demo" / "pipeline.json"
    if not plan.is_file():
        return {}
    return {j["name"]: j["seconds"] for j in json.loads(plan.read_text())["jobs"] if j.get("seconds") is not None}


def run_step(name: str, clone: Path) -> dict[str, Any]:
    """Run one step in the clone; its wall time, exit status and what it reported."""
    argv, what = STEPS[name]
    env = {**os.environ, "SYNTHFM_PROGRESS": "0", "HF_HUB_OFFLINE": "1"}
    venv = env.pop("VIRTUAL_ENV", None)  # the clone makes its own .venv from the system Python
    if venv:
        env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not p.startswith(venv))
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=clone, env=env, capture_output=True, text=True)
    out = {"step": name, "command": " ".join(argv), "what": what, "returncode": proc.returncode,
           "wall_s": round(time.perf_counter() - t0, 1)}
    tests = pytest_summary(proc.stdout)
    if tests:
        out["tests"] = tests
    if proc.returncode != 0:
        out["output_tail"] = (proc.stdout + proc.stderr)[-3000:]
    return out


def clone_torch(clone: Path) -> str:
    """The torch version the clone's `make install` put in its .venv ('' when there is none)."""
    python = clone / ".venv" / "bin" / "python"
    if not python.is_file():
        return ""
    return subprocess.run([str(python), "-c", "import torch; print(torch.__version__)"], capture_output=True,
                          text=True).stdout.strip()


def commit() -> str:
    """The commit that is cloned."""
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def main() -> None:
    """Clone, time the steps, print (and write) the JSON report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, in order, from {list(STEPS)}")
    ap.add_argument("--keep", action="store_true", help="keep the clone (its path is in the JSON)")
    ap.add_argument("--out", help="also write the JSON report here")
    args = ap.parse_args()
    steps = args.steps.split(",")
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        ap.error(f"unknown step(s) {unknown}; choose from {list(STEPS)}")
    # Beside this checkout, as CI lays it out, so the clone finds ../shared/data like the repository does.
    clone = Path(tempfile.mkdtemp(prefix="synthfm-clone-", dir=ROOT.parent))
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    rows: list[dict[str, Any]] = []
    try:
        for name in steps:
            rows.append(run_step(name, clone))
            if rows[-1]["returncode"] != 0:
                break
        jobs, torch_version = demo_jobs(clone), clone_torch(clone)
    finally:
        if not args.keep:
            shutil.rmtree(clone, ignore_errors=True)
    report = {"benchmark": "pipeline", "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "torch": torch_version, "commit": commit(),
              "results": [{k: v for k, v in r.items() if k not in ("tests", "output_tail")} for r in rows],
              "tests": next((r["tests"] for r in rows if "tests" in r), None),
              "total_s": round(sum(r["wall_s"] for r in rows), 1), "demo_job_seconds": jobs,
              "failures": [r for r in rows if r["returncode"] != 0], **({"clone": str(clone)} if args.keep else {})}
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
