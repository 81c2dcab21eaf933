"""Kill -9 at random points, then rerun the same command: is the output identical to an uninterrupted run?

For each long command (pretrain, phantom, generate, adapt, pipeline, site run) at smoke size: uninterrupted
reference runs give the expected output and tell which files or fields differ from run to run anyway
(timestamps: two runs in the same folder are compared field by field for JSON / JSONL / YAML / CSV / parquet,
byte for byte otherwise; a `git_commit` field and the `event: resume` record a resumed run logs are never
compared, and a pipeline job's `cached` status counts as `ran`). Each trial starts the command, waits until it
has begun writing its output folder, kills it with SIGKILL at a point drawn from one of `trials` equal slices of
the reference's working time (every third trial then waits for an atomic write in flight, a hidden `.tmp` file,
and kills it there), reruns it to completion in the same folder and compares every file outside the volatile
fields with a reference run in that folder (the folder's own path masked). A finished output must also hold no
hidden `.tmp` file and no lock.

    python benchmarks/bench_resume.py [--quick] [--trials 20] [--only pretrain,phantom] [--json OUT]

Prints one JSON object: per command the trials, how many were killed mid-run and during a write, how many resumed
identical, the mismatching files, stray files, the reference wall and working time, the 1-minute load average at
the command's start and end, and the volatile files and fields.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

PY = sys.executable
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "SYNTHFM_PROGRESS": "0", "HF_HUB_OFFLINE": "1"}
STRAY = (".tmp", ".synthfm.lock", ".synthfm.rank")


def synthfm(*args: str) -> list[str]:
    """The CLI as a subprocess command line."""
    return [PY, "-m", "synthfm", *map(str, args)]


def run(cmd: list[str], cwd: Path) -> float:
    """Run to completion (raising on failure); return the wall time."""
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return time.perf_counter() - t0


# ---- the commands, each with its inputs made once -------------------------------------------------------------

def setup(work: Path, wanted: list[str]) -> None:
    """Inputs the wanted commands share: a phantom card, a trained tiny generator, a site key."""
    run(synthfm("synth", "phantom", "-o", work / "card", "--n", "48", "--size", "32"), work)
    if "site run" in wanted:
        run(synthfm("site", "keygen", "--site", "site_a", "-o", work / "keys"), work)
    if "generate" not in wanted:
        return
    gen_cfg = {"objective": "diffusion", "image_size": 32, "batch_size": 8, "log_every": 2, "checkpoint_every": 4,
               "diffusion": {"conditions": ["dr_grade"], "prediction_type": "sample",
                             "unet": {"block_out_channels": [16, 32], "attention": [False, False],
                                      "layers_per_block": 1, "norm_num_groups": 8}},
               "stages": [{"name": "main", "steps": 8, "sources": [{"source": str(work / "card"), "split": "train"}]}]}
    (work / "generator.yaml").write_text(yaml.safe_dump(gen_cfg))
    run(synthfm("pretrain", "run", work / "generator.yaml", "-o", work / "gen"), work)


def commands(work: Path) -> dict[str, Any]:
    """name -> function(out folder) -> command line, with its config files written to `work`."""
    pre = {"recipe": "mae_vit_tiny_demo", "image_size": 32, "backbone_overrides": {"img_size": 32}, "batch_size": 8,
           "log_every": 1, "checkpoint_every": 3,
           "stages": [{"name": "a", "steps": 12, "sources": [{"source": str(work / "card"), "split": "train"}]}]}
    (work / "pretrain.yaml").write_text(yaml.safe_dump(pre))
    gen = {"generator": str(work / "gen" / "generator"), "n": 48, "batch_size": 8, "shard_size": 8,
           "sampler": {"name": "dpmpp", "steps": 4}}
    (work / "generate.yaml").write_text(yaml.safe_dump(gen))
    adapt = {"card": str(work / "card"), "task": "dr_grade", "encoder": "random:vit_tiny_p8_64", "image_size": 32,
             "backbone_overrides": {"img_size": 32, "depth": 2}, "policy": "finetune", "epochs": 3,
             "warmup_epochs": 1, "batch_size": 8, "seeds": [0, 1]}
    (work / "adapt.yaml").write_text(yaml.safe_dump(adapt))
    probe = {"card": "${data.fundus}", "task": "dr_grade", "encoder": "${pretrain.mae}", "policy": "linear_probe",
             "image_size": 32, "epochs": 2, "warmup_epochs": 0, "seeds": [0, 1]}
    pipe = {"name": "resume", "data": {"fundus": {"phantom": {"n": 32, "size": 32}}},
            "pretrain": {"mae": {**pre, "stages": [{"name": "a", "steps": 6,
                                                     "sources": [{"source": "${data.fundus}", "split": "train"}]}]}},
            "adapt": {"probe": probe, "random": {**probe, "encoder": "random:vit_tiny_p8_64",
                                                 "backbone_overrides": {"img_size": 32}}},
            "evaluate": {"cmp": {"compare": {"a": "${adapt.probe}", "b": "${adapt.random}"}}},
            "report": {"title": "resume"}}
    (work / "pipeline.yaml").write_text(yaml.safe_dump(pipe, sort_keys=False))
    site = {"site": "site_a", "card": str(work / "card"), "generator": {"size": 32},
            "audit": {"n_samples": 16}, "summary": {"k": 10}}
    (work / "site.yaml").write_text(yaml.safe_dump(site))
    return {
        "pretrain": lambda out: synthfm("pretrain", "run", work / "pretrain.yaml", "-o", out),
        "phantom": lambda out: synthfm("synth", "phantom", "-o", out, "--n", "32", "--size", "48"),
        "generate": lambda out: synthfm("synth", "generate", work / "generate.yaml", "-o", out),
        "adapt": lambda out: synthfm("adapt", work / "adapt.yaml", "-o", out),
        "pipeline": lambda out: synthfm("run", work / "pipeline.yaml", "-o", out),
        "site run": lambda out: synthfm("site", "run", work / "site.yaml", "--key", work / "keys" / "site_a.key",
                                        "-o", out),
    }


# ---- comparing outputs -------------------------------------------------------------------------------------------

STRUCTURED = (".json", ".jsonl", ".yaml", ".yml", ".csv", ".parquet")
TEXT = (*STRUCTURED, ".md", ".html", ".txt")
Path_ = tuple[str, ...]  # a field inside a structured file: keys, with "*" for any list item


ALWAYS_VOLATILE = ("git_commit",)  # the shared checkout may gain commits while a trial runs


def dropped(obj: Any) -> Any:
    """`obj` without the fields that may differ for reasons outside the command, without the `{"event": "resume",
    ...}` record a resumed run logs by design, and with a pipeline job's status `cached` (its work was done by the
    killed invocation, pipeline.json records what this one did) read as `ran`."""
    if isinstance(obj, dict):
        return {k: "ran" if k == "status" and v == "cached" else dropped(v) for k, v in obj.items()
                if k not in ALWAYS_VOLATILE}
    if isinstance(obj, list):
        return [dropped(v) for v in obj if not (isinstance(v, dict) and v.get("event") == "resume")]
    return obj


def content(path: Path, folder: Path) -> Any:
    """A file's content with the run folder's own path masked (it is written into some files): parsed for JSON /
    JSONL / YAML / CSV / parquet, so that single fields can be left out, bytes otherwise."""
    def mask(text: str) -> str:
        return text.replace(str(folder), "<OUT>")

    if path.suffix == ".parquet":
        import pandas as pd

        frame = pd.read_parquet(path)
        return json.loads(mask(frame.to_json(orient="records", date_format="iso")))
    raw = path.read_bytes()
    if path.suffix not in TEXT:
        return raw.replace(str(folder).encode(), b"<OUT>")
    try:
        text = mask(raw.decode())
        if path.suffix == ".json":
            return json.loads(text)
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        if path.suffix in (".yaml", ".yml"):
            return yaml.safe_load(text)
        if path.suffix == ".csv":
            return list(csv.DictReader(io.StringIO(text)))
        return text
    except (UnicodeDecodeError, ValueError, yaml.YAMLError):
        return raw


def differing(a: Any, b: Any, at: Path_ = ()) -> set[Path_]:
    """The fields whose values differ between two parsed contents (the whole content: `()`)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: set[Path_] = set()
        for k in a.keys() | b.keys():
            out |= differing(a[k], b[k], (*at, str(k))) if k in a and k in b else {(*at, str(k))}
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return set().union(*(differing(x, y, (*at, "*")) for x, y in zip(a, b, strict=True)))
    same = a == b if isinstance(a, bytes) or isinstance(b, bytes) else json.dumps(a, default=repr) == json.dumps(
        b, default=repr)
    return set() if same else {at}


def masked(obj: Any, volatile: set[Path_], at: Path_ = ()) -> Any:
    """`obj` with every volatile field replaced by a placeholder."""
    if at in volatile:
        return "<VOLATILE>"
    if isinstance(obj, dict):
        return {k: masked(v, volatile, (*at, str(k))) for k, v in obj.items()}
    if isinstance(obj, list):
        return [masked(v, volatile, (*at, "*")) for v in obj]
    return obj


def digest(obj: Any) -> str:
    """SHA-256 of a (masked) content."""
    data = obj if isinstance(obj, bytes) else json.dumps(obj, sort_keys=True, default=repr).encode()
    return hashlib.sha256(data).hexdigest()


def contents(folder: Path) -> dict[str, Any]:
    """Relative path -> content of every file in the folder."""
    return {p.relative_to(folder).as_posix(): dropped(content(p, folder)) for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.is_symlink()}


def volatile_fields(first: dict[str, Any], second: dict[str, Any]) -> dict[str, set[Path_]]:
    """Files (`()`) and fields that differ between two uninterrupted runs in the same folder (timestamps)."""
    found = {k: differing(first[k], second[k]) if k in first and k in second else {()}
             for k in first.keys() | second.keys()}
    return {k: v for k, v in found.items() if v}


class Reference:
    """An uninterrupted run's output: what a resumed run in the same folder must hold outside the volatile fields."""

    def __init__(self, first: dict[str, Any], volatile: dict[str, set[Path_]]) -> None:
        self.volatile = volatile
        self.digests = {k: digest(masked(v, volatile.get(k, set()))) for k, v in first.items()
                        if () not in volatile.get(k, set())}

    def mismatch(self, folder: Path) -> list[str]:
        """Files of `folder` that differ from the reference outside its volatile fields (or are missing/extra)."""
        got = {k: v for k, v in contents(folder).items() if () not in self.volatile.get(k, set())}
        return sorted(k for k in got.keys() | self.digests.keys() if k not in got or k not in self.digests
                      or digest(masked(got[k], self.volatile.get(k, set()))) != self.digests[k])


def described(volatile: dict[str, set[Path_]]) -> list[str]:
    """The volatile files (`path`) and fields (`path: a.b`, `*` for every list item), for the report."""
    return sorted(k if () in v else f"{k}: " + ", ".join(sorted(".".join(f) for f in v)) for k, v in volatile.items())


def strays(folder: Path) -> list[str]:
    """Hidden temporaries and locks left in a finished output."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob(".*") if any(s in p.name for s in STRAY))


def writing(folder: Path) -> bool:
    """Whether an atomic write is in flight under `folder` (its hidden `.tmp` file exists)."""
    return any(f.startswith(".") and ".tmp" in f for _, _, files in os.walk(folder) for f in files)


def started(folder: Path) -> bool:
    """Whether the command has begun writing its output (anything in the folder, its lock included)."""
    return folder.is_dir() and any(folder.iterdir())


def reference_run(cmd: list[str], out: Path, cwd: Path) -> tuple[float, float]:
    """Run to completion (raising on failure): (seconds until the output folder is first written, wall)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=err)
        first = None
        while proc.poll() is None:
            if first is None and started(out):
                first = time.perf_counter() - t0
            time.sleep(0.005)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err.read()[-3000:]}")
    return (wall if first is None else first), wall


def trial(cmd: Any, out: Path, cwd: Path, into_work: float, at_write: bool, window: float,
          reference: Reference, tag: str) -> dict[str, Any]:
    """Start; SIGKILL `into_work` s after the output folder is first written (with `at_write`: at the first atomic
    write in flight from then on, within `window` s); rerun to completion in the same folder; compare."""
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.Popen(cmd(out), cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    t0 = time.perf_counter()
    while proc.poll() is None and not started(out):
        time.sleep(0.005)
    t_work = time.perf_counter()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=into_work)
    during_write = False
    while at_write and proc.poll() is None and time.perf_counter() < t_work + window \
            and not (during_write := writing(out)):
        time.sleep(0.002)
    killed_at = time.perf_counter()
    finished_first = proc.poll() is not None
    if not finished_first:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    row = {"kill_after_s": round(killed_at - t0, 2), "into_work_s": round(killed_at - t_work, 2),
           "at_write": at_write, "killed_during_write": during_write and not finished_first,
           "finished_before_kill": finished_first}
    try:
        run(cmd(out), cwd)
    except RuntimeError as e:  # the resumed run failed: a failed trial, not a failed benchmark
        out.rename(out.with_name(f"failed_{tag}"))
        return {**row, "identical": False, "error": str(e)[-1500:], "mismatch": [], "stray": []}
    diff = reference.mismatch(out)
    stray = strays(out)
    if diff or stray:  # kept for a look (with --keep)
        out.rename(out.with_name(f"failed_{tag}"))
    return {**row, "identical": not diff, "mismatch": diff[:10], "stray": stray}


def kill_points(trials: int, work: float, rng: random.Random) -> list[tuple[float, bool]]:
    """Kill moments spread over the reference's working time (after its output folder is first written): one
    uniform draw in each of `trials` equal slices of it, every third one then waiting for an atomic write."""
    return [((i + rng.random()) / trials * work, i % 3 == 2) for i in range(trials)]


def bench(name: str, cmd: Any, work: Path, trials: int, rng: random.Random) -> dict[str, Any]:
    """Reference runs, then `trials` kill-and-resume trials, two at a time in two folders: each folder has its own
    reference run (file names may hash the output path), the volatile fields come from two runs in the first."""
    load_start = round(os.getloadavg()[0], 2)
    slots = [work / name.replace(" ", "_") / f"out_{i}" for i in (0, 1)]
    first, wall = reference_run(cmd(slots[0]), slots[0], work)
    ref_stray = strays(slots[0])
    run_a = contents(slots[0])
    shutil.rmtree(slots[0])
    first_b, wall_b = reference_run(cmd(slots[0]), slots[0], work)
    volatile = volatile_fields(run_a, contents(slots[0]))
    first_c, wall_c = reference_run(cmd(slots[1]), slots[1], work)
    refs = [Reference(run_a, volatile), Reference(contents(slots[1]), volatile)]
    # kills spread over the shortest working time (a first run may be slower: caches warm up)
    first, wall = min([(first, wall), (first_b, wall_b), (first_c, wall_c)], key=lambda fw: fw[1] - fw[0])
    kills = kill_points(trials, wall - first, rng)

    def slot(i: int) -> list[dict[str, Any]]:
        return [trial(cmd, slots[i], work, *kills[j], wall - first, refs[i], f"t{j:02d}") for j in range(i, trials, 2)]

    with ThreadPoolExecutor(2) as pool:
        results = [r for rs in pool.map(slot, (0, 1)) for r in rs]
    killed = [r for r in results if not r["finished_before_kill"]]
    return {"trials": trials, "killed_mid_run": len(killed),
            "killed_during_write": sum(r["killed_during_write"] for r in killed),
            "identical": sum(r["identical"] for r in results),
            "with_stray_files": sum(bool(r["stray"]) for r in results),
            "reference_wall_s": round(wall, 2), "work_s": round(wall - first, 2),
            "files_compared": len(refs[0].digests), "load_1m": f"{load_start} / {round(os.getloadavg()[0], 2)}",
            "volatile": described(volatile), "reference_stray": ref_stray,
            "into_work_s": sorted(r["into_work_s"] for r in killed),
            "failures": [r for r in results if not r["identical"] or r["stray"]][:5]}


def to_doc(result: dict[str, Any], trials: int, wall: float, load: list[float]) -> dict[str, Any]:
    """The JSON of a run: one row per command (docs/benchmarks.md renders `results`), then the details."""
    import platform

    import torch

    rows = [{"case": name, **{k: r[k] for k in ("trials", "killed_mid_run", "killed_during_write", "identical",
                                                 "with_stray_files", "reference_wall_s", "work_s", "files_compared",
                                                 "load_1m")}}
            for name, r in result.items()]
    return {"benchmark": "bench_resume", "results": rows, "trials_per_command": trials,
            "all_identical": sum(r["identical"] for r in rows), "all_trials": sum(r["trials"] for r in rows),
            "stray_outputs": sum(r["with_stray_files"] for r in rows),
            "volatile": {name: r["volatile"] for name, r in result.items()},
            "kills_into_work_s": {name: r["into_work_s"] for name, r in result.items()},
            "failures": {name: r["failures"] for name, r in result.items() if r["failures"]},
            "command": " ".join(["python benchmarks/bench_resume.py", *sys.argv[1:]]),
            "wall_s": wall, "machine": f"{platform.machine()}, {os.cpu_count()} cores", "torch": torch.__version__,
            "load_average_1m_start_end": load}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20, help="kill-and-resume trials per command")
    ap.add_argument("--quick", action="store_true", help="3 trials per command")
    ap.add_argument("--only", default="", help="comma-separated commands (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = ap.parse_args()
    trials = 3 if args.quick else args.trials
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="bench_resume_"))
    load_start = round(os.getloadavg()[0], 2)
    t0 = time.perf_counter()

    def write(result: dict[str, Any]) -> str:
        doc = to_doc(result, trials, round(time.perf_counter() - t0, 1), [load_start, round(os.getloadavg()[0], 2)])
        text = json.dumps(doc, indent=2)
        if args.json:  # after every command, so that a run cut short keeps what it measured
            args.json.write_text(text + "\n")
        return text

    result: dict[str, Any] = {}
    try:
        cmds = commands(work)
        wanted = [c for c in args.only.split(",") if c] or list(cmds)
        setup(work, wanted)
        for name in wanted:
            result[name] = bench(name, cmds[name], work, trials, rng)
            write(result)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(write(result))


if __name__ == "__main__":
    main()
