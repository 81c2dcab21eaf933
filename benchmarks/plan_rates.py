"""Measure the CPU rates `synthfm plan` uses: two calibration pipelines of different sizes, fitted per job family.

Each pipeline has one job of every family the shipped pipelines use (card, phantom, prepare, generator,
generate, gate, MAE pretraining, linear probe, fine-tune, evaluate, the analyses, report), with models and
lengths that differ from the shipped configs. Every job's wall time (its `job.json`) and the work the planner
counts for it (runs, FLOPs or units) give, per family, a non-negative least-squares fit of
`seconds = runs x c + work / rate`, in CPU seconds of one torch thread (user + system: what the job takes on an
otherwise idle machine; the wall time, which a busy shared machine inflates, is kept beside it). Writes
docs/bench/plan/cpu_rates.json (or --out) with the points, the fits, the machine and its 1-minute load average.
`--check CONFIG --out FILE` runs a shipped pipeline job by job and writes measured vs estimated seconds;
`--check CONFIG --recorded docs/results.md --out FILE` compares with the job times a finished run recorded there.

Usage: python benchmarks/plan_rates.py [--out docs/bench/plan/cpu_rates.json] [--root /tmp/plan_rates]
(about 8 min on the 2-core CPU machine; run it under /work/notes/heavy there)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy.optimize import nnls

os.environ.setdefault("SYNTHFM_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RETINA = str(REPO / "configs" / "cards" / "retinamnist.yaml")


def calibration(scale: int) -> dict[str, Any]:
    """A calibration pipeline; `scale` 1 (small) or 2 (large) changes lengths, counts and model depth."""
    small = scale == 1
    unet = {"block_out_channels": [16, 32] if small else [16, 32, 32], "attention": [False, True] if small else
            [False, False, True], "layers_per_block": 1, "norm_num_groups": 8}
    mae = {"recipe": "mae_vit_tiny_demo", "image_size": 32, "backbone_overrides": {"img_size": 32,
           "depth": 2 if small else 6}, "batch_size": 32 if small else 48, "log_every": 10, "checkpoint_every": 50,
           "stages": [{"name": "main", "steps": 40 if small else 80,
                       "sources": [{"source": "${data.retina}", "split": "train"}]}]}
    probe = {"card": "${data.retina}", "task": "dr_grade", "encoder": "random:vit_tiny_p8_64",
             "backbone_overrides": {"img_size": 32, "depth": 2 if small else 6}, "policy": "linear_probe",
             "image_size": 32, "epochs": 5 if small else 12, "warmup_epochs": 1, "lr": 5e-3,
             "seeds": [0] if small else [0, 1], "label_fractions": [1.0] if small else [0.25, 1.0]}
    finetune = {**probe, "encoder": "${pretrain.mae}", "policy": "finetune", "batch_size": 64,
                "epochs": 1 if small else 2, "seeds": [0] if small else [0, 1], "label_fractions": [1.0]}
    n_syn = 64 if small else 192
    return {
        "name": f"plan_rates_{scale}",
        "data": {"retina": {"card": RETINA},
                 "phantom": {"phantom": {"generator": "fundus_phantom", "n": 48 if small else 200,
                                         "size": 64 if small else 96, "seed": 3}},
                 "shards": {"prepare": {"input": "${data.phantom}", "size": 32 if small else 64, "format": "shards",
                                        "encoding": "raw", "shard_size": 64}}},
        "synth": {"generator": {"generator": {
                      "image_size": 16 if small else 32, "batch_size": 32 if small else 48,
                      "diffusion": {"conditions": ["dr_grade"], "unet": unet, "ema_decay": 0.999},
                      "optim": {"lr": 2e-3, "warmup_steps": 5, "weight_decay": 0.0}, "log_every": 10,
                      "checkpoint_every": 100,
                      "stages": [{"name": "main", "steps": 30 if small else 60,
                                  "sources": [{"source": "${data.retina}", "split": "train"}]}]}},
                  "synthetic": {"generate": {"generator": "${synth.generator}", "n": n_syn, "batch_size": 64,
                                             "shard_size": 128,
                                             "sampler": {"name": "dpmpp", "steps": 5 if small else 8,
                                                         "guidance_scale": 2.0},
                                             "target": {"card": "${data.retina}", "split": "train"}}}},
        "quality": {"gate": {"synthetic": "${synth.synthetic}", "real": "${data.retina}",
                             "config": {"gate": {"stop_on_fail": False}}}},
        "pretrain": {"mae": mae},
        "adapt": {"probe": probe, "finetune": finetune},
        "evaluate": {"compare": {"compare": {"a": "${adapt.finetune}", "b": "${adapt.probe}"}}},
        "analyze": {"morphology": {"morphology": {"card": "${data.phantom}", "size": 64 if small else 128,
                                                  "limit": 8 if small else 32}},
                    "latent": {"latent": {"cards": ["${data.phantom}"], "encoder": "${pretrain.mae}",
                                          "image_size": 32, "n": 48 if small else 100}},
                    "keymeta": {"keymeta": {"morphology": ["${analyze.morphology}"], "latent": "${analyze.latent}"}},
                    "gradcam": {"gradcam": {"adapt_run": "${adapt.finetune}/fraction_1/seed_0",
                                            "n": 4 if small else 16}}},
        "report": {"title": "plan rates calibration"},
    }


def run_timed(path: Path, root: Path, seconds: str = "cpu", partial: Path | None = None) -> list[dict[str, Any]]:
    """Run a pipeline one job at a time (`--only` that job); per job: the planner's work, wall and CPU seconds.

    CPU seconds (user + system of this process and its children, one torch thread) are what a job takes on an
    otherwise idle machine; wall seconds also count the time other processes held the cores.
    """
    from synthfm.errors import SynthfmError
    from synthfm.pipeline.kinds import KINDS
    from synthfm.pipeline.runner import plan, run_pipeline
    from synthfm.pipeline.spec import load_spec
    from synthfm.plan import Context, job_work

    def cpu() -> float:
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    ctx = Context()
    points = []
    for job in plan(load_spec(path, KINDS), root):
        work = job_work(job, ctx)
        c0, w0, load = cpu(), time.perf_counter(), os.getloadavg()[0]
        try:
            run_pipeline(path, root, only=[job.name], say=lambda s: print(s, file=sys.stderr, flush=True))
        except SynthfmError as err:  # recorded; the other jobs still count
            print(f"{job.name} failed: {err.message}", file=sys.stderr, flush=True)
            continue
        points.append({"job": job.name, "family": work.family, "runs": work.runs, "steps": work.steps,
                       "work": work.work, "flops": work.flops, "cpu_seconds": round(cpu() - c0, 2),
                       "wall_seconds": round(time.perf_counter() - w0, 2), "loadavg_1min": round(load, 2),
                       "seconds": round(cpu() - c0, 2) if seconds == "cpu" else round(time.perf_counter() - w0, 2)})
        if partial is not None:
            partial.write_text(json.dumps({"partial": True, "points": points}, indent=1) + "\n")
    return points


def run_one(spec: dict[str, Any], root: Path) -> list[dict[str, Any]]:
    """Write a calibration pipeline and run it job by job."""
    path = root / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return run_timed(path, root / spec["name"], partial=root / f"{spec['name']}.points.json")


def check(config: Path, root: Path, out: Path) -> dict[str, Any]:
    """Run a shipped pipeline job by job and put each job's measured seconds beside `synthfm plan`'s estimate."""
    from synthfm.plan import estimate

    estimates = {e.job: e.seconds for e in estimate(config, "cpu")[0]}
    points = run_timed(config, root)
    for p in points:
        p["estimate_seconds"] = round(estimates[p["job"]], 2)
    total = {k: round(sum(p[k] for p in points), 1) for k in ("cpu_seconds", "wall_seconds", "estimate_seconds")}
    doc = {"config": str(config), "total": total, "estimate_over_cpu": round(total["estimate_seconds"] /
                                                                           total["cpu_seconds"], 2),
           "jobs": points}
    out.write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def compare_recorded(config: Path, results_md: Path, out: Path) -> dict[str, Any]:
    """`synthfm plan`'s estimate beside the per-job minutes a finished run recorded in a results page's
    '| job | kind | minutes |' table (the headline run's measured wall time, docs/results.md)."""
    from synthfm.plan import estimate

    measured = {}
    for line in results_md.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and "." in cells[0] and cells[2].replace(".", "", 1).isdigit():
            measured.setdefault(cells[0], float(cells[2]) * 60)
    jobs = [{"job": e.job, "measured_seconds": measured.get(e.job), "estimate_seconds": round(e.seconds, 1)}
            for e in estimate(config, "cpu")[0]]
    both = [j for j in jobs if j["measured_seconds"] is not None]
    total = {"measured_seconds": round(sum(j["measured_seconds"] for j in both), 1),
             "estimate_seconds": round(sum(j["estimate_seconds"] for j in both), 1)}
    doc = {"config": str(config), "measured_from": str(results_md), "total": total,
           "estimate_over_measured": round(total["estimate_seconds"] / total["measured_seconds"], 2), "jobs": jobs}
    out.write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def wall_points(root: Path, runs_root: Path) -> list[dict[str, Any]]:
    """Points from finished calibration jobs' job.json (wall seconds), for pipelines `root/plan_rates_*.yaml` whose
    jobs ran under `runs_root/<pipeline>` (a run that stopped part-way still gives its finished jobs)."""
    from synthfm.pipeline.kinds import KINDS
    from synthfm.pipeline.runner import plan
    from synthfm.pipeline.spec import load_spec
    from synthfm.plan import Context, job_work

    points = []
    for spec in sorted(root.glob("plan_rates_*.yaml")):
        ctx = Context()
        for job in plan(load_spec(spec, KINDS), runs_root / spec.stem):
            work = job_work(job, ctx)
            done = root / job.dir.relative_to(runs_root) / "job.json"
            if done.is_file():
                points.append({"job": f"{spec.stem}:{job.name}", "family": work.family, "runs": work.runs,
                               "steps": work.steps, "work": work.work, "flops": work.flops,
                               "seconds": json.loads(done.read_text())["seconds"]})
    return points


def fit(points: list[dict[str, Any]]) -> dict[str, float]:
    """Non-negative least squares of seconds = runs x c + work / rate (rate inf when work does not matter)."""
    a = np.array([[p["runs"], p["work"]] for p in points], dtype=float)
    t = np.array([p["seconds"] for p in points], dtype=float)
    scale = np.maximum(np.abs(a).max(axis=0), 1e-30)
    x, _ = nnls(a / scale, t)
    c, inv = x[0] / scale[0], x[1] / scale[1]
    return {"c": float(c), "o": 0.0, "rate": float(1 / inv) if inv > 0 else float("inf")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "bench" / "plan" / "cpu_rates.json")
    parser.add_argument("--root", type=Path, default=Path("/tmp/plan_rates"))
    parser.add_argument("--check", type=Path, help="instead: run this pipeline job by job and compare with the plan")
    parser.add_argument("--wall-from", type=Path, help="instead: fit wall seconds of finished jobs (job.json) under "
                                                       "this copy of a calibration root (its jobs ran under --root)")
    parser.add_argument("--load", default=None, help="with --wall-from: the load average the jobs ran at")
    parser.add_argument("--recorded", type=Path, help="with --check: compare with this results page's job table "
                                                      "instead of running (e.g. docs/results.md)")
    args = parser.parse_args()
    if args.root.exists() and not args.wall_from:
        shutil.rmtree(args.root)
    args.root.mkdir(parents=True, exist_ok=True)
    if args.wall_from:
        points = wall_points(args.wall_from, args.root)
        write_rates(points, args.out, "wall", f"wall seconds (job.json) of the finished jobs in {args.wall_from}",
                    args.load)
        return
    if args.check and args.recorded:
        print(json.dumps(compare_recorded(args.check, args.recorded, args.out), indent=2))
        return
    if args.check:
        print(json.dumps(check(args.check, args.root, args.out), indent=2))
        return
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    points = run_one(calibration(1), args.root) + run_one(calibration(2), args.root)
    write_rates(points, args.out, "cpu", "CPU seconds (one torch thread, an otherwise idle machine) of the jobs of "
                "two calibration pipelines run job by job", f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} "
                f"after; {time.perf_counter() - t0:.0f} s")


def write_rates(points: list[dict[str, Any]], out: Path, basis: str, what: str, load: str | None) -> None:
    """Fit every family and write the rates file `synthfm plan` reads."""
    from synthfm.plan import FAMILIES

    families: dict[str, list[dict[str, Any]]] = {}
    for p in points:
        families.setdefault(p["family"], []).append(p)
    doc = {"what": f"CPU rates of `synthfm plan`: seconds = runs x c + work / rate per job family; {what} "
                   "(benchmarks/plan_rates.py)", "basis": basis,
           "machine": f"{platform.machine()} {os.cpu_count()} CPUs", "loadavg_1min": load,
           "families": {name: {**fit(pts), "unit": FAMILIES[name]["unit"]} for name, pts in families.items()},
           "points": points}
    text = json.dumps(doc, indent=2).replace("Infinity", "1e308")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
