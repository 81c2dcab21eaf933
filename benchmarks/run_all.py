"""Every benchmark in one command: one JSON, then docs/benchmarks.md regenerated from it.

Usage: python benchmarks/run_all.py                  (full sizes; about 1 h 45 min on the 2-core CPU machine)
       python benchmarks/run_all.py --only mae loader
       python benchmarks/run_all.py --quick --bench-dir /tmp/bench   (small sizes: a smoke run, not for the docs)

Each benchmark runs in its own process, one after another (they time themselves, so they must not share the
CPU). Its JSON goes to BENCH_DIR/<name>.json, and BENCH_DIR/all.json collects every document with the
command, exit status and wall time of each run; `render_docs.py` writes docs/benchmarks.md from all.json.
A failing benchmark is recorded with its exit status and the tail of its stderr, and the others still run;
the exit status of this script is non-zero when any failed. Benchmarks not selected keep their last result.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCH_DIR = HERE.parent / "docs" / "bench"
ALL = "all.json"
DOCS_MD = HERE.parent / "docs" / "benchmarks.md"


@dataclass(frozen=True)
class Bench:
    """One benchmark script: its arguments at full and at quick size; `out` when it writes its own file."""

    script: str
    args: tuple[str, ...] = ()
    quick: tuple[str, ...] | None = ()  # None: no small size; --quick skips it
    out: bool = False  # the script takes --out FILE instead of printing its JSON


BENCHES: dict[str, Bench] = {
    "loader": Bench("bench_loader.py", ("--n", "256"), quick=("--n", "64", "--sizes", "64", "--workers", "0",
                                                            "--pretrain-sizes", "32")),
    "synth": Bench("bench_synth.py", quick=("--seconds", "0.2", "--stream-n", "128")),
    "mae": Bench("bench_mae.py", ("--threads", "1"), quick=("--steps", "1", "--rounds", "1", "--cases", "64px_p8",
                                                           "--batch-64", "2")),
    "dino": Bench("bench_dino.py", ("--threads", "1"), quick=("--steps", "1", "--rounds", "1", "--cases", "64px_p8",
                                                             "--batch-64", "2")),
    "probe_gain": Bench("bench_probe_gain.py", ("--seeds", "0,1,2", "--n", "3000", "--steps", "1000", "--balanced",
                                                "--save-encoder", "runs/bench/probe_gain_mae"),
                        ("--n", "120", "--steps", "4"), out=True),
    "sampling": Bench("bench_sampling.py", quick=None),
    "generator": Bench("bench_generator.py", ("--recipe", "edm", "--steps", "550"), quick=("--quick",), out=True),
    "generator_step": Bench("bench_generator.py", ("--recipe", "edm", "--only", "step"),
                            quick=("--quick", "--only", "step"), out=True),
    "vessels_chase": Bench("eval_vessels.py", quick=("--steps", "4", "--phantoms", "4"), out=True),
    "quality": Bench("bench_quality.py", ("--fd-encoder", "runs/bench/probe_gain_mae"), quick=("--quick",)),
    "pipeline": Bench("bench_pipeline.py", quick=None, out=True),
}


def command(name: str, quick: bool, bench_dir: Path) -> list[str]:
    """The argv of one benchmark run."""
    b = BENCHES[name]
    argv = [sys.executable, str(HERE / b.script), *((b.quick or ()) if quick else b.args)]
    return [*argv, "--out", str(bench_dir / f"{name}.json")] if b.out else argv


def shown(argv: list[str]) -> str:
    """A command as a user would type it from the repository root."""
    return " ".join(["python", *(str(Path(a).relative_to(HERE.parent)) if a.startswith(str(HERE.parent)) else a
                                 for a in argv[1:])])


def run_one(name: str, quick: bool, bench_dir: Path) -> dict:
    """Run one benchmark; its JSON document plus command, exit status and wall time."""
    argv = command(name, quick, bench_dir)
    print(f"-> {name}: {shown(argv)}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=HERE.parent)
    run = {"command": shown(argv), "returncode": proc.returncode, "wall_s": round(time.perf_counter() - t0, 1),
           "quick": quick}
    if proc.returncode != 0:
        print(f"   {name} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}", file=sys.stderr)
        return {"run": {**run, "stderr_tail": proc.stderr[-2000:]}}
    path = bench_dir / f"{name}.json"
    if not BENCHES[name].out:
        path.write_text(proc.stdout)
    print(f"   {name} finished in {run['wall_s']} s", file=sys.stderr, flush=True)
    return {**json.loads(path.read_text()), "run": run}


def main() -> int:
    """Run the selected benchmarks, write all.json, regenerate docs/benchmarks.md."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=sorted(BENCHES), help="run only these (others keep their result)")
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--bench-dir", type=Path, default=BENCH_DIR, help="where the JSON files go")
    ap.add_argument("--no-docs", action="store_true", help="do not regenerate docs/benchmarks.md")
    args = ap.parse_args()
    args.bench_dir.mkdir(parents=True, exist_ok=True)
    combined = args.bench_dir / ALL
    doc = json.loads(combined.read_text()) if combined.is_file() else {"benchmarks": {}}
    for name in args.only or list(BENCHES):
        if args.quick and BENCHES[name].quick is None:
            print(f"-> {name}: no quick size, skipped", file=sys.stderr)
            continue
        doc["benchmarks"][name] = run_one(name, args.quick, args.bench_dir)
        combined.write_text(json.dumps(doc, indent=1))  # after each, so an interrupted suite keeps what ran
    if not args.no_docs:
        sys.path.insert(0, str(HERE))
        from render_docs import main as render

        render(args.bench_dir, DOCS_MD if args.bench_dir.resolve() == BENCH_DIR else args.bench_dir / "benchmarks.md")
    failed = [n for n, d in doc["benchmarks"].items() if d["run"]["returncode"] != 0]
    print(json.dumps({"bench_dir": str(args.bench_dir), "failed": failed,
                      "wall_s": {n: d["run"]["wall_s"] for n, d in doc["benchmarks"].items()}}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
