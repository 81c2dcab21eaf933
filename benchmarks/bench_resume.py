"""Kill -9 at random points, then rerun the same command: is the output identical to an uninterrupted run?

For each long command (pretrain, phantom, generate, adapt, pipeline, site run) at smoke size: two
uninterrupted runs give the reference and tell which files differ from run to run anyway (timestamps,
durations); then each trial starts the command, kills it with SIGKILL at a random moment inside the
reference's wall time, reruns it to completion and compares every other file byte for byte (the run's own
folder path masked). A finished output must also hold no hidden `.tmp` file and no lock.

    python benchmarks/bench_resume.py [--quick] [--trials 20] [--only pretrain,phantom] [--json OUT]

Prints one JSON object: per command the trials, how many resumed identical, the mismatching files, stray
files, the reference wall time, and the 1-minute load average at start and end.
"""

from __future__ import annotations

import argparse
import hashlib
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
        "generate": lambda out: synthfm("synth", "generate", work / "generate.yaml", out),
        "adapt": lambda out: synthfm("adapt", work / "adapt.yaml", "-o", out),
        "pipeline": lambda out: synthfm("run", work / "pipeline.yaml", "-o", out),
        "site run": lambda out: synthfm("site", "run", work / "site.yaml", "--key", work / "keys" / "site_a.key",
                                        "-o", out),
    }


# ---- comparing outputs -------------------------------------------------------------------------------------------

def digests(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of the bytes with the folder's own path masked (it is written into some files)."""
    out = {}
    mask = str(folder).encode()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[p.relative_to(folder).as_posix()] = hashlib.sha256(p.read_bytes().replace(mask, b"<OUT>")).hexdigest()
    return out


def strays(folder: Path) -> list[str]:
    """Hidden temporaries and locks left in a finished output."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob(".*") if any(s in p.name for s in STRAY))


def trial(cmd: Any, out: Path, cwd: Path, kill_after: float, reference: dict[str, str],
          volatile: set[str]) -> dict[str, Any]:
    """Start, SIGKILL after `kill_after` s, rerun to completion, compare."""
    proc = subprocess.Popen(cmd(out), cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        proc.wait(timeout=kill_after)
        finished_first = True
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        finished_first = False
    run(cmd(out), cwd)
    got = digests(out)
    diff = sorted(k for k in set(got) | set(reference) if k not in volatile and got.get(k) != reference.get(k))
    return {"kill_after_s": round(kill_after, 2), "finished_before_kill": finished_first, "identical": not diff,
            "mismatch": diff[:10], "stray": strays(out)}


def bench(name: str, cmd: Any, work: Path, trials: int, rng: random.Random) -> dict[str, Any]:
    """Reference runs, then `trials` kill-and-resume trials (two at a time)."""
    base = work / name.replace(" ", "_")
    ref_a, ref_b = base / "ref_a", base / "ref_b"
    wall = run(cmd(ref_a), work)
    run(cmd(ref_b), work)
    reference, again = digests(ref_a), digests(ref_b)
    volatile = {k for k in set(reference) | set(again) if reference.get(k) != again.get(k)}
    kills = [rng.uniform(0.15, 0.95) * wall for _ in range(trials)]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda ik: trial(cmd, base / f"t{ik[0]:02d}", work, ik[1], reference, volatile),
                                enumerate(kills)))
    killed = [r for r in results if not r["finished_before_kill"]]
    return {"trials": trials, "killed_mid_run": len(killed),
            "identical": sum(r["identical"] for r in results),
            "with_stray_files": sum(bool(r["stray"]) for r in results),
            "reference_wall_s": round(wall, 2), "files_compared": len(set(reference) - volatile),
            "volatile_files": sorted(volatile), "reference_stray": strays(ref_a),
            "failures": [r for r in results if not r["identical"] or r["stray"]][:5]}


def to_doc(result: dict[str, Any], trials: int, wall: float, load: list[float]) -> dict[str, Any]:
    """The JSON of a run: one row per command (docs/benchmarks.md renders `results`), then the details."""
    import platform

    import torch

    rows = [{"case": name, **{k: r[k] for k in ("trials", "killed_mid_run", "identical", "with_stray_files",
                                                 "reference_wall_s", "files_compared")}}
            for name, r in result.items()]
    return {"benchmark": "bench_resume", "results": rows, "trials_per_command": trials,
            "all_identical": sum(r["identical"] for r in rows), "all_trials": sum(r["trials"] for r in rows),
            "stray_outputs": sum(r["with_stray_files"] for r in rows),
            "volatile_files": {name: r["volatile_files"] for name, r in result.items()},
            "failures": {name: r["failures"] for name, r in result.items() if r["failures"]},
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
    try:
        cmds = commands(work)
        wanted = [c for c in args.only.split(",") if c] or list(cmds)
        setup(work, wanted)
        result = {name: bench(name, cmds[name], work, trials, rng) for name in wanted}
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    doc = to_doc(result, trials, round(time.perf_counter() - t0, 1), [load_start, round(os.getloadavg()[0], 2)])
    text = json.dumps(doc, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
