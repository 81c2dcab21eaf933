"""Regenerate docs/benchmarks.md from the JSON that the benchmark scripts wrote into docs/bench/.

Usage: python benchmarks/run_all.py          (runs every benchmark, writes docs/bench/all.json, then this)
       python benchmarks/render_docs.py      (re-render only)

A benchmark's numbers come from docs/bench/<name>.json; the command and wall time shown beside them come
from the `run` record that run_all.py keeps in docs/bench/all.json, or from COMMANDS for a file written by
hand with that command.
"""

from __future__ import annotations

import json
from pathlib import Path

from synthfm.report.markdown import markdown_table

DOCS = Path(__file__).resolve().parents[1] / "docs"
COMMANDS = {
    "loader": "python benchmarks/bench_loader.py > docs/bench/loader.json",
    "synth": "python benchmarks/bench_synth.py > docs/bench/synth.json",
    "mae": "python benchmarks/bench_mae.py --threads 1 > docs/bench/mae.json",
    "dino": "python benchmarks/bench_dino.py --threads 1 > docs/bench/dino.json",
    "probe_gain": "python benchmarks/bench_probe_gain.py --seeds 0,1,2 --n 3000 --steps 1000 --balanced "
                  "--save-encoder runs/bench/probe_gain_mae --out docs/bench/probe_gain.json",
    "sampling": "python benchmarks/bench_sampling.py > docs/bench/sampling.json",
    "generator": "SYNTHFM_BENCH_THREADS=2 python benchmarks/bench_generator.py --recipe edm --steps 2400 "
                 "--guidance 3.5,4,4.5 --sampler-steps 15 --draws 2 --out docs/bench/generator.json",
    "generator_step": "python benchmarks/bench_generator.py --recipe edm --only step "
                      "--out docs/bench/generator_step.json",
    "vessels_chase": "python benchmarks/eval_vessels.py",
    "quality": "python benchmarks/bench_quality.py --audit-only > docs/bench/quality.json (fd_ranking and the "
               "100k scale figures carried over from a full run, see carried_over)",
    "pipeline": "python benchmarks/bench_pipeline.py --out docs/bench/pipeline.json",
    "resume": "python benchmarks/bench_resume.py --trials 20 --json docs/bench/resume.json --keep",
}
NOTES = {
    "loader": "Images/s of one pass through a DataLoader (batch 64) over n images (column n): a folder of PNGs read "
              "with PIL vs WebDataset shards with raw, npy or PNG images; ratios are within one run. The ViT-tiny "
              "column is a forward+backward+AdamW step at the same size, to show the loader keeps up with training. "
              "`pretrain_data`: the pretraining data path per sample (PNG decode, torchvision crop + flip under a "
              "reseeded torch RNG) vs batched (training-size raw-shard cache, counter-based seeds, one batched "
              "crop), and at 32 px the RetinaMNIST experiment's MAE arm step with its data share.",
    "synth": "Single-thread generator throughput, with two baselines measured in the same run.",
    "mae": "The engine's MAE step with the auto settings (`mixed_precision: auto`, `compile: auto`, threads) against "
           "a plain eager fp32 loop of the same model (the MAE recipe's 8 x 512 decoder on a ViT-Ti encoder, 64 px "
           "/ patch 8 and 224 px / patch 16), both fed by the engine's data path; alternating rounds, medians; "
           "the engine's step split by phase; FLOP/s as fractions of measured fp32 and bf16 matmul peaks. "
           "Method: benchmarks/step_bench.py. On this CPU (no native bf16) auto means fp32 and eager: the step is "
           "matmul-bound. The eager loop itself already runs at 0.76 of the measured fp32 matmul peak at 64 px, so "
           "no setting can reach 1.3x eager (that would need 0.99 of peak). Measured with the engine compiled "
           "(`python benchmarks/bench_mae.py --threads 1 --cases 64px_p8 --compile true`, quiet machine, load "
           "0.7-0.9): 1.087x eager and 0.82 of peak, against 1.061x uncompiled in the run below; compiling gains "
           "2-3% here, so `compile: auto` stays eager on CPUs.",
    "dino": "The same comparison for DINOv2 (student + EMA teacher, multi-crop in the data path): the "
            "dinov2_vit_tiny_demo recipe at 64 px, the DINOv2 defaults (8 local crops of 96 px, 65536 prototypes) "
            "on a ViT-Ti at 224 px.",
    "probe_gain": "Linear probe of phantom DR grade on a tiny MAE-pretrained encoder vs the same encoder at random "
                  "init (balanced accuracy and AUROC; CLS, mean-pooled and both features), per seed; the MAE is "
                  "pretrained on the train split of a grade-balanced 64 px phantom card, and `seeds_won` counts "
                  "the seeds where it beat random init. `pixels16_baseline` below is a logistic regression on 16x16 "
                  "pixels: the bar a useful encoder should also clear.",
    "sampling": "Fréchet distance to held-out phantom images against model evaluations for DDPM / DDIM / "
                "DPM-Solver++, cost per image on CPU, and peak memory against N.",
    "generator": "The diffusion generator trained on RetinaMNIST's training split at 32 px through the engine, "
                 "scored relative to the real pair (every held-out real image vs the training split) in a domain "
                 "space fine-tuned on the card, at each guidance scale of the sweep and each draw of sampler seeds "
                 "and conditions (rows), then per scale over the draws; the top-level keys are the best scale's. "
                 "Targets and the ablation: docs/generator.md.",
    "generator_phantom": "The same quality run on the fundus phantom at 64 px (the phantom card's train split as the "
                         "'real' set, phantom-vs-phantom as the real pair); docs/generator.md.",
    "generator_ablation": "One row per generator recipe and guidance scale (bench_generator.py --only quality), "
                          "relative to the real pair in the domain space; see docs/generator.md.",
    "generator_step": "Engine diffusion training step against a bare diffusers loop (same ConditionalUNet, batch "
                      "and precision, EMA in both), alternating rounds, medians; and the engine's data loading + "
                      "per-sample seeding + condition handling as a share of its step.",
    "vessels_chase": "Vessel segmentation on CHASE_DB1 against the first observer (see docs/results.md).",
    "quality": "Planted-copy recall and false positives of the memorisation audit at default settings, on every "
               "real set of ../shared/data (`planted_copies_real`: exact, mirrored, cropped, JPEG-70 and "
               "brightened copies of training images among held-out real images and phantoms; goal recall >= 99% "
               "and <= 1% false positives) and on phantoms; FD ranking of phantom sets "
               "(three draws each of a same-distribution, a colour-shifted and a lesion-free set against a DR "
               "grade 3-4 reference) in a random-init ViT and in the probe_gain MAE encoder; peak RSS of FD and "
               "the nearest-neighbour audit at 100k.",
    "pipeline": "Wall time of the README's commands in a fresh clone of the committed HEAD: install, the CI run "
                "(`bash .ci/run`, with the test count and pytest's own time), `make demo` from cold (with "
                "seconds per job) and again with every job reused. A clean-clone `make demo` costs install + demo.",
    "resume": "Kill -9 at a random moment of each long command's work, then the same command again in the same "
              "folder. Each trial waits until the command has begun writing its output folder (imports take most "
              "of a smoke run's wall time), then kills it at a point drawn from one of `trials` equal slices of "
              "the reference's working time (`work_s`); every third trial then waits for an atomic write in flight "
              "(a hidden `.tmp` file) and kills it there (`killed_during_write` counts the kills that caught one). "
              "`identical` counts trials whose finished output matches an uninterrupted run in the same folder: "
              "JSON / JSONL / YAML / CSV / parquet field by field, other files byte for byte, leaving out only "
              "what differs between two uninterrupted runs (listed under `volatile`: timestamps, signatures over "
              "them), a `git_commit` field and the `event: resume` record a resumed run logs; "
              "`with_stray_files` counts finished outputs holding a hidden `.tmp` file or a lock. `load_1m` is the "
              "1-minute load average at the command's start and end (the machine was shared). Smoke sizes; "
              "`trials` per command is 20 for the full run, 3 with `--quick`.",
}


def section(name: str, doc: dict, run: dict | None = None) -> str:
    """One benchmark's section: what it measures, the command, machine, and its numbers as tables and lines."""
    res = doc.get("results")
    rows = res if isinstance(res, list) else [{"case": k, **v} for k, v in (res or {}).items()]
    cmd = (f"`{doc['command']}`" if isinstance(doc.get("command"), str)  # the JSON says what wrote it
           else f"`{run['command']}` via `python benchmarks/run_all.py` ({run['wall_s']} s)" if run
           else f"`{COMMANDS.get(name, '')}`")
    head = f"## {name}\n\n{NOTES.get(name, '')}\n\nCommand: {cmd}  \nMachine: {machine_line(doc)}.\n\n"
    extra = {k: v for k, v in doc.items() if k not in ("results", "machine", "torch", "benchmark", "run", "command")}
    return head + readable(rows, extra)


def machine_line(doc: dict) -> str:
    """'cpu x86_64, cores 2, torch 2.x' from a benchmark's machine record (a string or a mapping)."""
    m = doc.get("machine", "?")
    torch = doc.get("torch") or (m.get("torch") if isinstance(m, dict) else None)
    if isinstance(m, dict):
        m = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in m.items() if k != "torch")
    return f"{m}, torch {torch}" if torch else str(m)


def _cell(v: object) -> object:
    """A table cell or fact value: short lists joined, long ones summarised."""
    if isinstance(v, float):
        return float(f"{v:.4g}") if abs(v) < 1e4 else round(v, 1)
    if not isinstance(v, list):
        return v
    v = [", ".join(f"{k}={x}" for k, x in _flat(e).items()) if isinstance(e, dict) else _cell(e) for e in v]
    if len(v) <= 8 or not all(isinstance(x, (int, float)) for x in v):
        shown = v if len(v) <= 12 else [*v[:12], f"... ({len(v)} in all)"]
        return " / ".join(map(str, shown)) if shown else "-"
    q = sorted(v)
    return f"{len(v)} values, min {q[0]:g}, median {q[len(q) // 2]:g}, max {q[-1]:g}"


def _flat(row: dict, prefix: str = "") -> dict:
    """Nested mappings become `key.sub` entries (any depth), lists cells."""
    out: dict = {}
    for k, v in row.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        elif not isinstance(v, dict):
            out[f"{prefix}{k}"] = _cell(v)
    return out


def _records(v: object) -> bool:
    """A non-empty list of mappings (rendered as a table)."""
    return isinstance(v, list) and bool(v) and all(isinstance(r, dict) for r in v)


def _tables(extra: dict, prefix: str = "") -> list[str]:
    """Lists of records at any depth, and top-level mappings of records, as titled tables (removed from
    `extra`, so the facts that follow do not repeat them)."""
    parts = []
    for k, v in list(extra.items()):
        title = f"{prefix}{k}"
        if _records(v):
            parts.append(f"{title}:\n\n" + markdown_table([_flat(r) for r in extra.pop(k)]))
        elif (not prefix and isinstance(v, dict) and len(v) > 1
              and all(isinstance(r, dict) and r for r in v.values())):
            inner = extra.pop(k)
            for kk, r in inner.items():
                parts += _tables(r, f"{title}.{kk}.")
            parts.append(f"{title}:\n\n" + markdown_table([{"": kk, **_flat(r)} for kk, r in inner.items()]))
        elif isinstance(v, dict):
            parts += _tables(v, f"{title}.")
    for group in _sibling_records(extra):
        rows = [{"": k, **_flat(extra.pop(k))} for k in group]
        parts.append(f"{prefix.rstrip('.') or 'results'}:\n\n" + markdown_table(rows))
    return parts


def _sibling_records(d: dict, least: int = 3) -> list[list[str]]:
    """Keys of `d` whose values are flat mappings sharing at least half their fields, in groups of >= `least`
    (e.g. one record per method: they read better as a table's rows)."""
    groups: list[list[str]] = []
    for k, v in d.items():
        if not (isinstance(v, dict) and v and not any(isinstance(x, dict) for x in v.values())):
            continue
        for g in groups:
            first = set(d[g[0]])
            if len(first & set(v)) * 2 >= max(len(first), len(v)):
                g.append(k)
                break
        else:
            groups.append([k])
    return [g for g in groups if len(g) >= least]


def readable(rows: list[dict], extra: dict) -> str:
    """Goals met or missed (with the amount), the result rows, other tables, then the scalar facts."""
    extra = json.loads(json.dumps(extra))  # a deep copy: tables are popped out of it
    parts = []
    goals = extra.pop("goals", None)
    if goals:
        parts.append("Goals for this machine's case (" + str(extra.get("case", "?")) + "):\n\n" + markdown_table(
            [{"goal": k, "target": g["goal"], "measured": g["measured"], "met": g["met"],
              "missed by": g.get("missed_by", "")} for k, g in goals.items()]))
    if rows:
        parts.append(markdown_table([_flat(r) for r in rows]))
    parts += _tables(extra)
    parts.append("\n".join(f"- {k}: {v}" for k, v in _flat(extra).items()))
    parts.append(bf16_note(extra))
    return "\n\n".join(p for p in parts if p) + "\n"


def bf16_note(doc: dict) -> str:
    """Why fraction_of_bf16_peak exceeds 1 on a machine without native bf16 (its bf16 'peak' is emulation)."""
    peaks = doc.get("matmul_peak_gflop_s") or {}
    if doc.get("native_bf16") is not False or not peaks.get("bf16"):
        return ""
    return (f"This machine has no native bf16, so its measured bf16 matmul 'peak' ({peaks['bf16']} GFLOP/s) is "
            f"software emulation, {peaks['fp32'] / peaks['bf16']:.0f}x below fp32 ({peaks['fp32']} GFLOP/s). The "
            "steps run in fp32 (auto never picks bf16 here), so their FLOP/s exceed that emulated 'peak' and "
            "`fraction_of_bf16_peak` is above 1: it is recorded, but only `fraction_of_fp32_peak` is a goal in "
            "this case.")


def runs(combined: Path) -> dict[str, dict]:
    """The successful full-size run records of run_all.py, by benchmark name."""
    if not combined.is_file():
        return {}
    found = json.loads(combined.read_text())["benchmarks"].items()
    return {n: d["run"] for n, d in found if d["run"]["returncode"] == 0 and not d["run"].get("quick")}


def main(bench_dir: Path = DOCS / "bench", out: Path = DOCS / "benchmarks.md") -> None:
    """Write docs/benchmarks.md (or `out`) from the JSON files in `bench_dir`."""
    combined = bench_dir / "all.json"
    recorded = runs(combined)
    parts = ["# Benchmarks\n",
             "Generated by `python benchmarks/run_all.py` (or `render_docs.py` alone) from `docs/bench/*.json`; "
             "each section names the "
             "command that produced its JSON. Figures were taken on the 2-core CPU development machine; a "
             "section that records its 1-minute load average ran with the benchmark alone when that load is "
             "about 1 (the benchmark's own thread), beside other jobs when it is higher, where absolute numbers "
             "are noisy. Ratios compare configurations measured in the same run, rounds alternated.\n"]
    if not (bench_dir / "device.json").is_file():
        parts.append("No GPU figure exists yet: every number on this page comes from a CPU, and no CUDA code path "
                     "of synthfm has run. `bash benchmarks/device_check.sh` is the prepared check for one H100/H200 "
                     "(about 7 minutes; it writes `docs/bench/device.json`); until it has run, `synthfm plan "
                     "--device h100|a100` labels its GPU estimates as assumed.\n")
    for path in sorted(bench_dir.glob("*.json")):
        if path.name != combined.name:
            parts.append(section(path.stem, json.loads(path.read_text()), recorded.get(path.stem)))
    notes = DOCS / "bench" / "notes.md"
    parts.append(notes.read_text() if notes.is_file() else "")
    out.write_text("\n".join(parts))


if __name__ == "__main__":
    main()
