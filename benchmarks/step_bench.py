"""Shared machinery of bench_mae.py and bench_dino.py: the engine's training step (auto settings, real data path)
against a plain eager fp32 loop of the same recipe model, at 64 px / patch 8 and 224 px / patch 16 ViT-Ti.

For each case both loops draw their batches from the engine's own data path (a rendered phantom card: PNG decode,
per-sample seeded augmentation, collation), so the ratio compares steps, and the data share is measured apart:
- engine: `Engine` with `mixed_precision: auto` and `compile: auto` resolved for a long run (the planned stage is
  COMPILE_MIN_STEPS; on a CPU auto stays eager), fused AdamW where available; one step = next batch + `train_step`;
- eager: `TrainModule` of a fresh objective, plain `torch.optim.AdamW`, fp32, no compile: next batch, forward,
  backward, step, zero (and the objective's `after_step`, e.g. the DINOv2 teacher EMA, in both).
Rounds alternate engine and eager; each reports the median of its rounds. The engine's rounds are split by phase
(data, forward, backward, optimiser; wall time, device work awaited). FLOPs per step come from
torch.utils.flop_counter over one forward + backward; peaks are measured n x n matmuls: fp32 before every round
(the best of the case's rounds is its peak, as the load of a shared machine changes), bf16 once as a ratio to fp32.
Goals (issue "Training throughput"): without native bf16, auto never picks bf16, engine >= 1.3x eager and
>= 0.75 of the fp32 matmul peak; with native bf16, >= 2x eager and >= 0.4 of the bf16 matmul peak.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from synthfm import hardware
from synthfm.pretrain.config import PretrainConfig, pretrain_config
from synthfm.pretrain.engine import Engine, TrainModule
from synthfm.pretrain.objective import build_objective
from synthfm.train.optim import param_groups

os.environ.setdefault("SYNTHFM_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CASES = {"64px_p8": {"image_size": 64, "backbone_overrides": {}},
         "224px_p16": {"image_size": 224, "backbone_overrides": {"patch_size": 16}}}
PHASES = ("data", "forward", "backward", "optimiser")


def sync(device: torch.device) -> None:
    """Wait for queued device work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[], None], steps: int, device: torch.device) -> float:
    """Seconds per call of `step` over `steps` calls."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - t0) / steps


def matmul_flops(device: torch.device, dtype: torch.dtype, n: int = 1024, reps: int = 2) -> float:
    """Measured FLOP/s of an n x n matrix product (best of `reps`)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    return 2 * n**3 / min(timed(lambda: a @ b, 1, device) for _ in range(reps))


def step_flops(module: torch.nn.Module, batch: dict[str, torch.Tensor]) -> int:
    """FLOPs of one forward + backward of the training module's loss."""
    with FlopCounterMode(display=False) as counter:
        module(batch)[0].backward()
    module.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def loop_batches(engine: Engine, steps: int) -> Iterator[dict[str, torch.Tensor]]:
    """The engine's micro-batches of its first stage, from the start again whenever they run out."""
    sp = engine.stage_plan(0)
    while True:
        yield from engine.batches(sp, sp.steps - steps)


def case_config(base: dict[str, Any], case: dict[str, Any], batch: int, cache: Path,
                compile_: bool | str = "auto") -> PretrainConfig:
    """The recipe at the case's size, a phantom card source, and a stage long enough for `compile: auto`."""
    data = {**base, "image_size": case["image_size"], "batch_size": batch, "cache_dir": str(cache),
            "backbone_overrides": {**base.get("backbone_overrides", {}), "img_size": case["image_size"],
                                   **case["backbone_overrides"]},
            "mixed_precision": "auto", "compile": compile_, "optim": {**base.get("optim", {}), "lr": 1e-4},
            "stages": [{"name": "bench", "sources": [{"source": "phantom", "n": 64}],
                        "steps": hardware.COMPILE_MIN_STEPS}]}
    return pretrain_config(data)


def run_case(name: str, cfg: PretrainConfig, args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """Engine vs eager rounds for one size; the row of the report."""
    engine = Engine(cfg, run_dir)
    engine.run.open()
    compiled = engine.setup_compile()
    device = engine.acc.device
    engine.set_lr(1e-4)
    after = getattr(engine.objective, "after_step", None)
    data_e, data_p = loop_batches(engine, args.steps), loop_batches(engine, args.steps)

    torch.manual_seed(cfg.seed)
    plain = TrainModule(build_objective(cfg)).to(device)
    plain_after = getattr(plain.objective, "after_step", None)
    opt = torch.optim.AdamW(param_groups(plain, cfg.optim.weight_decay), lr=1e-4, betas=cfg.optim.betas,
                            fused=False, foreach=False)

    def engine_step() -> None:
        with engine.phase("data"):
            batch = next(data_e)
        engine.train_step([batch])
        if after is not None:
            after(0, 10)

    def eager_step() -> None:
        batch = next(data_p)
        plain(batch)[0].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if plain_after is not None:
            plain_after(0, 10)

    t0 = time.perf_counter()
    for _ in range(args.warmup + 2 * compiled):  # compiling takes the first steps
        engine_step()
    warm_s = time.perf_counter() - t0
    for _ in range(args.warmup):
        eager_step()
    engine_s, eager_s, phases, peaks = [], [], [], []
    for _ in range(args.rounds):
        peaks.append(matmul_flops(device, torch.float32))  # the fp32 peak under this round's load
        engine.phase_seconds = {}
        engine_s.append(timed(engine_step, args.steps, device))
        phases.append({k: engine.phase_seconds.get(k, 0.0) / args.steps for k in PHASES})
        engine.phase_seconds = None
        eager_s.append(timed(eager_step, args.steps, device))
    t_engine, t_eager = statistics.median(engine_s), statistics.median(eager_s)
    split = {k: statistics.median(p[k] for p in phases) for k in PHASES}
    flops = step_flops(plain, next(data_p))
    return {"case": name, "batch": cfg.batch_size, "mixed_precision": engine.acc.mixed_precision,
            "compile": compiled, "first_steps_s": round(warm_s, 1),
            "engine_img_s": round(cfg.batch_size / t_engine, 1), "eager_img_s": round(cfg.batch_size / t_eager, 1),
            "engine_over_eager": round(t_eager / t_engine, 3),
            "engine_img_s_rounds": [round(cfg.batch_size / t, 1) for t in engine_s],
            "eager_img_s_rounds": [round(cfg.batch_size / t, 1) for t in eager_s],
            "gflop_per_step": round(flops / 1e9, 2), "engine_gflop_s": round(flops / t_engine / 1e9, 1),
            "eager_gflop_s": round(flops / t_eager / 1e9, 1),
            "split_s": {k: round(v, 4) for k, v in split.items()},
            "data_fraction": round(split["data"] / t_engine, 3), "_flop_s": flops / t_engine,
            "_fp32_peak": max(peaks), "fp32_peak_gflop_s_rounds": [round(x / 1e9, 1) for x in peaks]}


def goals(native: bool, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's goals for this machine's case, each with the measured value and whether it holds."""
    worst_ratio = min(r["engine_over_eager"] for r in rows)
    if native:
        peak_key, ratio_goal, peak_goal = "fraction_of_bf16_peak", 2.0, 0.4
        checks = {}
    else:
        peak_key, ratio_goal, peak_goal = "fraction_of_fp32_peak", 1.3, 0.75
        checks = {"auto_never_bf16": {"goal": True, "measured": all(r["mixed_precision"] != "bf16" for r in rows)}}
    worst_peak = min(r[peak_key] for r in rows)
    checks["engine_over_eager"] = {"goal": f">= {ratio_goal}", "measured": worst_ratio,
                                   "missed_by": round(max(0.0, ratio_goal - worst_ratio), 3)}
    checks[peak_key] = {"goal": f">= {peak_goal}", "measured": worst_peak,
                        "missed_by": round(max(0.0, peak_goal - worst_peak), 3)}
    for c in checks.values():
        c["met"] = c.get("missed_by", 0.0) == 0.0 and c["measured"] is not False
    return checks


def main(objective: str, base: dict[str, Any], doc: str, batches: dict[str, int],
         per_case: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Parse the common options, run every case, return the report (the caller prints it)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--batch-64", type=int, default=batches["64px_p8"])
    p.add_argument("--batch-224", type=int, default=batches["224px_p16"])
    p.add_argument("--steps", type=int, default=2, help="steps per round")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3, help="alternating engine / eager rounds; medians reported")
    p.add_argument("--threads", type=int, default=2, help="torch threads (sets SYNTHFM_THREADS)")
    p.add_argument("--compile", choices=["auto", "true", "false"], default="auto",
                   help="the engine's compile setting (auto: the machine's rule; true: measure a compiled step)")
    args = p.parse_args()
    os.environ[hardware.THREADS_ENV] = str(args.threads)
    hardware.set_threads(force=True)
    load_start = round(os.getloadavg()[0], 2)
    device = hardware.default_device()
    peaks = {"fp32": matmul_flops(device, torch.float32), "bf16": matmul_flops(device, torch.bfloat16)}
    bf16_over_fp32 = peaks["bf16"] / peaks["fp32"]  # measured together; scales the per-round fp32 peaks
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.cases:
            batch = args.batch_64 if name == "64px_p8" else args.batch_224
            compile_ = {"true": True, "false": False}.get(args.compile, "auto")
            cfg = case_config({**base, **(per_case or {}).get(name, {})}, CASES[name], batch, Path(tmp) / "sources",
                              compile_)
            rows.append(run_case(name, cfg, args, Path(tmp) / name))
    for r in rows:
        flop_s, fp32_peak = r.pop("_flop_s"), r.pop("_fp32_peak")
        peaks["fp32"] = max(peaks["fp32"], fp32_peak)
        r["fraction_of_fp32_peak"] = round(flop_s / fp32_peak, 3)
        r["fraction_of_bf16_peak"] = round(flop_s / (fp32_peak * bf16_over_fp32), 3)
    native = hardware.native_bf16(device.type)
    checks = goals(native, rows)
    return {
        "benchmark": objective, "machine": f"{platform.machine()} {platform.processor() or ''} "
                                           f"{os.cpu_count()} logical cores, device {device}".replace("  ", " "),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "load_average_1m_start_end": [load_start, round(os.getloadavg()[0], 2)],
        "native_bf16": native, "cpu_bf16_flags": hardware.cpu_bf16_flags(),
        "case": "native bf16" if native else "no native bf16",
        "engine_over_eager": min(r["engine_over_eager"] for r in rows),
        "data_fraction": max(r["data_fraction"] for r in rows),
        "fraction_of_fp32_peak": min(r["fraction_of_fp32_peak"] for r in rows),
        "fraction_of_bf16_peak": min(r["fraction_of_bf16_peak"] for r in rows),
        "matmul_peak_gflop_s": {k: round(v / 1e9, 1) for k, v in peaks.items()},
        "goals": checks, "goals_met": all(c["met"] for c in checks.values()),
        "summary_rule": "top-level ratios and fractions are the worst case over sizes; data_fraction the largest",
        "results": rows,
    }
