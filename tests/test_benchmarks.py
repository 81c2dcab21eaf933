"""benchmarks/run_all.py: each benchmark's JSON, one all.json with command, status and time, docs re-rendered."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_run_all_collects_one_json_and_renders_the_doc(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run_all.py"), "--quick", "--only", "synth",
                           "--bench-dir", str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    combined = json.loads((tmp_path / "all.json").read_text())["benchmarks"]
    run = combined["synth"]["run"]
    assert run["returncode"] == 0 and run["quick"] and run["command"].startswith("python benchmarks/bench_synth.py")
    assert combined["synth"]["results"] == json.loads((tmp_path / "synth.json").read_text())["results"]
    doc = (tmp_path / "benchmarks.md").read_text()
    assert "## synth" in doc and "fundus_phantom_64" in doc
    assert json.loads(proc.stdout.splitlines()[-1])["failed"] == []


def test_docs_render_every_benchmark_as_tables_and_lines_without_json_dumps() -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from render_docs import section

    doc = {"benchmark": "x", "machine": {"cpu": "x86_64", "cores": 2, "torch": "2.x"},
           "results": [{"case": "a", "s": 0.123456789, "split": {"data": 0.5}}],
           "sweep": {"runs": [{"g": 1.5, "fd": 3.0}, {"g": 3.0, "fd": 2.0}]},
           "methods": {"pixel": {"recall": 1.0, "fpr": 0.0}, "raw": {"recall": 0.9, "fpr": 0.1},
                       "cosine": {"recall": 0.0, "fpr": 0.0}},
           "kills": [0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0], "note": "n"}
    text = section("x", doc)
    assert "```" not in text and "{" not in text
    assert "Machine: cpu x86_64, cores 2, torch 2.x." in text
    assert "| case | s | split.data |" in text and "| a | 0.1235 | 0.5 |" in text
    assert "sweep.runs:" in text and "| 3.0 | 2.0 |" in text
    assert "| pixel | 1.0 | 0.0 |" in text and "| cosine | 0.0 | 0.0 |" in text
    assert "- kills: 10 values, min 0.5, median 5, max 9" in text and "- note: n" in text


def test_generator_benchmark_records_no_machine_paths(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_generator import repo_relative

    rec = {"card": str(REPO / "configs" / "cards" / "x.yaml"), "stages": [{"source": str(tmp_path / "p" / "d.yaml")}],
           "other": "/elsewhere/y.yaml", "n": 3}
    assert repo_relative(rec, tmp_path) == {"card": "configs/cards/x.yaml", "stages": [{"source": "<work>/p/d.yaml"}],
                                            "other": "/elsewhere/y.yaml", "n": 3}


def test_generator_benchmark_reuses_a_finished_run_with_its_measured_minutes(tmp_path: Path) -> None:
    """A finished run in the work folder is not retrained: its recorded training seconds are returned."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_generator import trained

    (tmp_path / "COMPLETE.json").write_text("{}")
    (tmp_path / "train_seconds.json").write_text('{"seconds": 1164.6}')
    assert trained({"not": "a config: training would fail"}, tmp_path) == 1164.6


def test_pipeline_benchmark_reads_the_pytest_summary_line() -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_pipeline import pytest_summary

    out = "....\n=========== 509 passed, 2 skipped, 3 warnings in 349.21s (0:05:49) ===========\n"
    assert pytest_summary(out) == {"passed": 509, "skipped": 2, "warnings": 3, "seconds": 349.21}
    assert pytest_summary("=== 1 failed, 4 passed in 2.50s ===") == {"failed": 1, "passed": 4, "seconds": 2.5}
    assert pytest_summary("no tests ran") is None


def test_resume_benchmark_compares_everything_but_what_two_uninterrupted_runs_disagree_on(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_resume import Reference, contents, described, volatile_fields

    def output(name: str, created: str, times: list[float], losses: list[float], extra: str = "") -> Path:
        out = tmp_path / name
        out.mkdir()
        (out / "config.yaml").write_text(f"git_commit: {name}\ncreated: {created}\nout: {out}\n")
        (out / "metrics.jsonl").write_text(extra + "".join(json.dumps({"time": t, "loss": v}) + "\n"
                                                           for t, v in zip(times, losses, strict=True)))
        (out / "w.bin").write_bytes(b"\x00\x01")
        return out

    first = output("a", "10:00", [1.0, 2.0], [0.5, 0.25])
    volatile = volatile_fields(contents(first), contents(output("b", "11:00", [3.0, 4.0], [0.5, 0.25])))
    assert described(volatile) == ["config.yaml: created", "metrics.jsonl: *.time"]  # the path and commit masked
    reference = Reference(contents(first), volatile)
    resumed = '{"event": "resume", "global_step": 1}\n'  # what a resumed run logs by design
    assert reference.mismatch(output("c", "12:00", [5.0, 6.0], [0.5, 0.25], extra=resumed)) == []
    assert reference.mismatch(output("d", "12:00", [5.0, 6.0], [0.5, 0.3])) == ["metrics.jsonl"]
    twice = '{"time": 0.5, "loss": 0.5}\n'  # a killed attempt's record kept beside the new ones
    assert reference.mismatch(output("e", "12:00", [5.0, 6.0], [0.5, 0.25], extra=twice)) == ["metrics.jsonl"]
    (output("f", "12:00", [5.0, 6.0], [0.5, 0.25]) / "w.bin").write_bytes(b"\x00\x02")
    assert reference.mismatch(tmp_path / "f") == ["w.bin"]


def test_generator_benchmark_quick_writes_every_key(tmp_path: Path) -> None:
    out = tmp_path / "generator.json"
    argv = [sys.executable, str(REPO / "benchmarks" / "bench_generator.py"), "--quick", "--draws", "2", "--out",
            str(out), "--work", str(tmp_path / "work")]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    for key in ("fd_ratio", "precision_rel", "coverage_rel", "label_agreement_rel", "near_copies", "train_minutes",
                "engine_over_bare", "sampling_images_per_s", "goals_met", "load_avg"):
        assert key in doc, key
    assert doc["quick"] and doc["goals_met"] is False  # a smoke run never claims the targets
    assert doc["goals_met"] == (not doc["missed"] and all(doc["checks"].values()) and not doc["quick"])
    best = doc["quality"]["best"]
    assert doc["fd_ratio"] == best["fd_ratio"] > 0 and doc["engine_over_bare"] > 0
    draws = [r for r in doc["quality"]["guidance_sweep"] if r["guidance_scale"] == best["guidance_scale"]]
    assert [r["draw"] for r in draws] == [0, 1] and best["draws"] == 2  # the headline figure is the draws' mean
    fd = [[r[side]["FD"] for r in draws] for side in ("synthetic", "real_pair")]
    assert best["fd_ratio"] == pytest.approx(sum(fd[0]) / sum(fd[1]), abs=1e-3)
    assert len(doc["quality"]["real_pairs"]) == 2


def test_generator_benchmark_summarises_draws_per_guidance_scale() -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_generator import by_guidance

    def row(w: float, fd_syn: float, fd_real: float, copies: int = 0) -> dict[str, Any]:
        pair = {"precision": 0.9, "coverage": 0.6}
        return {"guidance_scale": w, "fd_ratio": round(fd_syn / fd_real, 4), "label_agreement_rel": 1.0,
                "near_copies": copies, "synthetic": {"FD": fd_syn, "precision": 0.9, "coverage": 0.3},
                "real_pair": {"FD": fd_real, **pair}}

    four, five = by_guidance([row(4.0, 0.6, 0.2), row(4.0, 0.6, 1.0, copies=1), row(5.0, 1.2, 0.2)])
    assert four["fd_ratio"] == 1.0 and four["fd_ratio_mean_of_draws"] == 1.8  # 1.2 / 1.2, not (3.0 + 0.6) / 2
    assert four["fd_ratio_sd"] == pytest.approx(1.6971, abs=1e-4) and four["fd_ratio_range"] == [0.6, 3.0]
    assert four["coverage_rel"] == 0.5 and four["precision_rel"] == 1.0
    assert four["near_copies"] == 1 and four["draws"] == 2
    assert five["fd_ratio_sd"] is None and five["fd_ratio"] == 6.0 == five["fd_ratio_mean_of_draws"]


def _synthfm_imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every `from synthfm... import name` in a script, at any depth (function-local too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "synthfm":
            found += [(node.module, alias.name) for alias in node.names]
    return found


def test_every_script_imports_names_that_exist() -> None:
    """A module move in src/ must carry the benchmark and docs scripts with it (they run outside the suite)."""
    scripts = sorted([*(REPO / "benchmarks").glob("*.py"), *(REPO / "docs").glob("*.py")])
    missing = []
    for script in scripts:
        for module, name in _synthfm_imports(script):
            mod = importlib.import_module(module)
            if name != "*" and not hasattr(mod, name):
                try:
                    importlib.import_module(f"{module}.{name}")
                except ModuleNotFoundError:
                    missing.append(f"{script.relative_to(REPO)}: from {module} import {name}")
    assert not missing, "\n".join(missing)
