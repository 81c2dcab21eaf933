"""benchmarks/device_check.sh: the --smoke run passes on CPU with every part recorded; parts are time-boxed, a
failure is recorded without losing the others, and the rates `synthfm plan` reads are computed by hand here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from device_check import mae_summary, rates, run_part  # noqa: E402


def test_smoke_passes_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "device.json"
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env.update({"OMP_NUM_THREADS": "1", "SYNTHFM_PROGRESS": "0", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""})
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "device_check.sh"), "--smoke", "--out", str(out),
                           "--work", str(tmp_path / "work")], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["smoke"] and doc["failed"] == [], {k: v for k, v in doc["parts"].items() if v["status"] != "ok"}
    assert list(doc["parts"]) == ["env", "gpu_tests", "mae_tiny", "generator", "realdata"]
    assert doc["device"]["cuda_available"] is False and doc["device"]["name"].startswith("cpu")
    assert doc["parts"]["gpu_tests"]["summary"]["passed"] == 5  # the CPU variant of every test marked gpu
    gen = doc["parts"]["generator"]["result"]
    assert all(gen[k]["images_per_s"] > 0 for k in ("train_pixel", "train_latent", "sample_pixel", "sample_latent"))
    real = doc["parts"]["realdata"]["result"]
    assert real["generator"]["steps"] >= 2 and real["mae"]["steps"] >= 2 and real["generate"]["images"] == 64
    assert all(0 <= real["probe"][k]["auroc"] <= 1 for k in ("mae", "random_init"))
    assert (out.with_suffix(".log")).read_text().count("[device_check]") >= 10


def test_a_part_past_its_time_box_is_killed_with_its_children(tmp_path: Path) -> None:
    marker = tmp_path / "child_alive"
    (tmp_path / "child.py").write_text(f"import time\ntime.sleep(3)\nopen({str(marker)!r}, 'w')\n")
    (tmp_path / "part.py").write_text(f"import subprocess, sys, time\n"
                                      f"subprocess.Popen([sys.executable, {str(tmp_path / 'child.py')!r}])\n"
                                      f"print('{{\"started\": 1}}', flush=True)\ntime.sleep(60)\n")
    rec = run_part([sys.executable, str(tmp_path / "part.py")], 1.5, {})
    assert rec["status"] == "timeout" and rec["seconds"] < 10 and '"started"' in rec["stdout_tail"]
    time.sleep(4)
    assert not marker.exists()  # the grandchild went with the part's process group


def test_a_failed_part_keeps_its_error_and_json() -> None:
    rec = run_part([sys.executable, "-c", "print('{\"a\": 1}'); raise SystemExit('boom')"], 30, {})
    assert rec["status"] == "failed" and rec["returncode"] == 1 and rec["result"] == {"a": 1}
    assert "boom" in rec["stderr_tail"]
    ok = run_part([sys.executable, "-c", "import os; print('{\"x\": \"' + os.environ['PART_ENV'] + '\"}')"], 30,
                  {"PART_ENV": "y"})
    assert ok == {"status": "ok", "returncode": 0, "seconds": ok["seconds"], "result": {"x": "y"}}


def test_mae_summary_and_rates_by_hand() -> None:
    """ViT-L: 128 images per step, 1.28e14 FLOPs per step (1e12 per image); engine 200 img/s = 2e14 FLOP/s,
    0.2 of a 1e15 peak, 200/106 of one V100 in the MAE paper; eager bf16 160 img/s -> engine 1.25x."""
    bench = {"backbone": "vit_large_p16_224", "batch": 128, "flops_per_step": 1.28e14, "engine_images_per_s": 200.0,
             "eager_images_per_s": 160.0}
    large = mae_summary({"result": bench}, 1e15)
    assert large["engine_fraction_of_bf16_peak"] == pytest.approx(0.2)
    assert large["engine_over_eager_bf16"] == pytest.approx(1.25)
    assert large["over_one_v100"] == pytest.approx(200 / 106) and large["seconds_per_step"] == pytest.approx(0.64)
    base = mae_summary({"result": {**bench, "backbone": "vit_base_p16_224", "engine_images_per_s": 400.0}}, 1e15)
    tiny = mae_summary({"result": {**bench, "backbone": "vit_tiny_p8_64", "batch": 8, "flops_per_step": 8e9,
                                   "engine_images_per_s": 400.0}}, 1e15)
    doc = {"parts": {"mae_vit_l16": {"summary": large}, "mae_vit_b16": {"summary": base},
                     "mae_tiny": {"summary": tiny},
                     "generator": {"result": {"train_pixel": {"fraction_of_peak": 0.1},
                                              "train_latent": {"fraction_of_peak": 0.3}}}}}
    got = rates(doc)
    assert got["efficiency"] == {"vit": pytest.approx(0.3), "unet": pytest.approx(0.2)}  # (0.2 + 0.4) / 2
    assert got["step_overhead_s"] == pytest.approx(8 / 400)
    assert mae_summary({"status": "failed"}, 1e15) is None
    assert rates({"parts": {}})["efficiency"] == {"vit": None, "unet": None}
