"""The device check's driver (run it through benchmarks/device_check.sh): every part in its own process with its
own time box, the JSON rewritten (atomically) after each part, a failed or timed-out part recorded with the tail of
its output while the others still run.

Parts, in order: env; gpu_tests (`pytest -m gpu`; with --smoke their CPU variant); mae_tiny (per-step overhead),
mae_vit_b16 and mae_vit_l16 (at 224 px, bf16: the engine vs a plain eager bf16-autocast loop);
generator; realdata. At the end, `rates` holds what `synthfm plan --device h100|a100` reads: the achieved share
of the card's bf16 peak per model family and the seconds of overhead per optimiser step.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench_pipeline import pytest_summary

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MAE_PAPER_VIT_L_PER_V100 = 106  # images/s per V100, MAE paper (He et al. 2022), ViT-L/16 at 224 px


def parts(py: str, smoke: bool, work: Path, minutes: float) -> list[tuple[str, list[str], int, dict[str, str]]]:
    """(name, command, time box in seconds, extra environment) of every part."""
    flag = ["--smoke"] if smoke else []
    part = [py, str(HERE / "device_parts.py")]
    tests = [py, "-m", "pytest", "-m", "gpu", "-o", "addopts=--import-mode=importlib", "-p", "no:cacheprovider",
             "-W", "ignore::UserWarning", str(REPO / "tests" / "test_gpu.py")]  # banner summary: pytest_summary
    mae = [*part, "mae", *flag, "--backbone"]
    env_cpu = {"SYNTHFM_TEST_DEVICE": "cpu"} if smoke else {}
    out = [("env", [*part, "env", *flag], 60, {}),
           ("gpu_tests", tests, 240 if smoke else 150, env_cpu),
           ("mae_tiny", [*mae, "vit_tiny_p8_64"], 40, {})]
    if not smoke:
        out += [("mae_vit_b16", [*mae, "vit_base_p16_224"], 60, {}),
                ("mae_vit_l16", [*mae, "vit_large_p16_224"], 75, {})]
    out += [("generator", [*part, "generator", *flag], 75, {}),
            ("realdata", [*part, "realdata", *flag, "--work", str(work / "realdata"), "--minutes", str(minutes)],
             int(minutes * 60 + (240 if smoke else 90)), {})]
    return out


def write(doc: dict[str, Any], path: Path) -> None:
    """Atomic JSON write (temporary file, then rename), so a kill leaves the previous complete document."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def run_part(cmd: list[str], limit: float, env: dict[str, str]) -> dict[str, Any]:
    """Run one part in its own process group; its JSON (from the first '{' it prints) or its failure, timed.

    On time-out the whole group is killed (a part's own children, such as an engine process, go with it).
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, **env}, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        return {"status": "timeout", "limit_s": round(limit), "seconds": round(time.perf_counter() - t0, 1),
                "stdout_tail": stdout[-1500:], "stderr_tail": stderr[-2500:]}
    rec: dict[str, Any] = {"status": "ok" if proc.returncode == 0 else "failed", "returncode": proc.returncode,
                           "seconds": round(time.perf_counter() - t0, 1)}
    start = stdout.find("{")
    try:
        rec["result"] = json.loads(stdout[start:]) if start >= 0 else None
    except json.JSONDecodeError:
        rec["result"] = None
    if rec["result"] is None:
        rec.pop("result")
        rec["stdout_tail"] = stdout[-1500:]
    if proc.returncode != 0:
        rec["stderr_tail"] = stderr[-2500:]
    return rec


def mae_summary(rec: dict[str, Any], peak: float | None) -> dict[str, Any] | None:
    """images/s of engine and eager bf16 loops, share of the card's bf16 peak, the MAE paper anchor."""
    r = rec.get("result")
    if not r:
        return None
    eager = r["eager_images_per_s"]
    flops_image = r["flops_per_step"] / r["batch"]
    out = {"backbone": r["backbone"], "batch": r["batch"], "engine_images_per_s": r["engine_images_per_s"],
           "eager_bf16_images_per_s": eager, "engine_over_eager_bf16": r["engine_images_per_s"] / eager,
           "flops_per_image": flops_image, "seconds_per_step": r["batch"] / r["engine_images_per_s"],
           "engine_fraction_of_bf16_peak": r["engine_images_per_s"] * flops_image / peak if peak else None}
    if r["backbone"] == "vit_large_p16_224":
        out["mae_paper_vit_l_images_per_s_per_v100"] = MAE_PAPER_VIT_L_PER_V100
        out["over_one_v100"] = r["engine_images_per_s"] / MAE_PAPER_VIT_L_PER_V100
    return out


def rates(doc: dict[str, Any]) -> dict[str, Any]:
    """What `synthfm plan` reads: share of bf16 peak per family (ViT from MAE, UNet from generator training)."""
    p = doc["parts"]
    vit = [s["engine_fraction_of_bf16_peak"] for k in ("mae_vit_b16", "mae_vit_l16")
           if (s := p.get(k, {}).get("summary")) and s.get("engine_fraction_of_bf16_peak")]
    gen = p.get("generator", {}).get("result", {})
    unet = [gen[k]["fraction_of_peak"] for k in ("train_pixel", "train_latent")
            if gen.get(k, {}).get("fraction_of_peak")]
    tiny = p.get("mae_tiny", {}).get("summary") or {}
    return {"efficiency": {"vit": sum(vit) / len(vit) if vit else None,
                           "unet": sum(unet) / len(unet) if unet else None},
            "step_overhead_s": tiny.get("seconds_per_step"),
            "note": "vit: mean engine share of the bf16 peak of MAE ViT-B/16 and ViT-L/16 at 224 px; unet: mean of "
                    "the 64 px pixel and 256 px latent generator training steps; step overhead: seconds per engine "
                    "step of a 2-block ViT-Ti MAE at 32 px, batch 8 (all launch and Python overhead)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on any device (CPU: the test suite)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "device_check")
    parser.add_argument("--minutes", type=float, default=None, help="realdata training budget (default 2.0, smoke 0.1;"
                        " less when the deadline is near)")
    parser.add_argument("--deadline", type=float, default=470, help="seconds for all parts (8 min less a margin)")
    parser.add_argument("--only", default="", help="comma-separated parts to run (default: all)")
    args = parser.parse_args()
    minutes = args.minutes if args.minutes is not None else (0.1 if args.smoke else 2.0)
    start = time.time()
    doc: dict[str, Any] = {"benchmark": "device_check", "smoke": args.smoke, "python": sys.executable,
                           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "loadavg_1min": os.getloadavg()[0],
                           "git_commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                                        cwd=REPO).stdout.strip() or None,
                           "device": {}, "parts": {}}
    only = {x for x in args.only.split(",") if x}
    for name, cmd, limit, env in parts(sys.executable, args.smoke, args.work, minutes):
        if only and name not in only:
            continue
        left = args.deadline - (time.time() - start)
        if left < 15:
            doc["parts"][name] = {"status": "skipped", "why": f"the {args.deadline:.0f} s deadline was reached"}
            write(doc, args.out)
            continue
        if name == "realdata" and not args.smoke:  # it fills the time left: shrink its training budget to fit
            fit = max(0.05, min(minutes, (left - 90) / 60))
            cmd = [*cmd[:-1], f"{fit:.2f}"]
            limit = int(fit * 60 + 90)
        print(f"[device_check] {name} (at most {min(limit, left):.0f} s)", file=sys.stderr, flush=True)
        rec = run_part(cmd, min(limit, left), env)
        if name == "env" and rec.get("result"):
            doc["device"] = rec["result"]
        if name == "gpu_tests":
            rec["summary"] = pytest_summary(rec.get("stdout_tail", ""))
        if name.startswith("mae_"):
            rec["summary"] = mae_summary(rec, doc["device"].get("published_bf16_peak_flops"))
        doc["parts"][name] = rec
        doc["seconds"] = round(time.time() - start, 1)
        write(doc, args.out)
        print(f"[device_check] {name}: {rec['status']} in {rec['seconds']} s", file=sys.stderr, flush=True)
    doc["rates"] = rates(doc)
    doc["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    doc["seconds"] = round(time.time() - start, 1)
    doc["failed"] = sorted(k for k, v in doc["parts"].items() if v["status"] != "ok")
    write(doc, args.out)
    print(json.dumps({"out": str(args.out), "failed": doc["failed"], "seconds": doc["seconds"]}))
    sys.exit(1 if doc["failed"] else 0)


if __name__ == "__main__":
    main()
