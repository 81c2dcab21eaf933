"""`synthfm plan`: steps, runs and FLOPs per job from the config, time from the family rates, memory warnings."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from synthfm.cli import main
from synthfm.plan import GPUS, GiB, estimate, mae_cost
from synthfm.pretrain.config import pretrain_config
from synthfm.synth.writer import plan_splits

REPO = Path(__file__).resolve().parents[1]
RATES = {"data.phantom": {"c": 2.0, "rate": 0.5}, "pretrain.mae": {"c": 3.0, "rate": 1e9},
         "adapt.linear_probe": {"c": 1.5, "rate": 100.0}, "adapt.finetune": {"c": 2.5, "rate": 2e9},
         "evaluate": {"c": 0.25, "rate": 1e308}, "report.html": {"c": 4.0, "rate": 1e308}}
MAE = {"recipe": "mae_vit_tiny_demo", "image_size": 32, "backbone_overrides": {"img_size": 32, "depth": 2},
       "batch_size": 8}


def pipeline(tmp_path: Path, **mae: Any) -> Path:
    """Phantoms (48 at 32 px) -> MAE for 2 epochs of the train split -> probe and fine-tune -> report."""
    probe = {"card": "${data.fundus}", "task": "dr_grade", "encoder": "${pretrain.mae}", "policy": "linear_probe",
             "image_size": 32, "epochs": 3, "batch_size": 4, "seeds": [0, 1], "label_fractions": [0.5, 1.0]}
    spec = {"name": "tiny",
            "data": {"fundus": {"phantom": {"n": 48, "size": 32, "seed": 0}}},
            "pretrain": {"mae": {**MAE, "stages": [{"name": "a", "epochs": 2,
                                                     "sources": [{"source": "${data.fundus}", "split": "train"}]}],
                                 **mae}},
            "adapt": {"probe": probe, "ft": {**probe, "policy": "finetune", "epochs": 1, "seeds": [0]}},
            "evaluate": {"cmp": {"compare": {"a": "${adapt.ft}", "b": "${adapt.probe}"}}}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture
def bench(tmp_path: Path) -> Path:
    """A docs/bench folder holding hand-written CPU rates."""
    folder = tmp_path / "bench"
    (folder / "plan").mkdir(parents=True)
    doc = {"machine": "test", "loadavg_1min": 0.0, "families": RATES}
    (folder / "plan" / "cpu_rates.json").write_text(json.dumps(doc))
    return folder


def test_steps_runs_flops_and_seconds_follow_the_config(tmp_path: Path, bench: Path) -> None:
    jobs, rates = estimate(pipeline(tmp_path), "cpu", bench)
    by = {e.job: e for e in jobs}
    assert rates.measured and list(by) == ["data.fundus", "pretrain.mae", "adapt.probe", "adapt.ft", "evaluate.cmp",
                                           "report.report"]
    train = plan_splits(48, (0.7, 0.1, 0.2), 0).count("train")
    val, test = plan_splits(48, (0.7, 0.1, 0.2), 0).count("val"), plan_splits(48, (0.7, 0.1, 0.2), 0).count("test")
    steps = math.ceil(2 * train / 8)  # 2 epochs at batch 8
    per_image = mae_cost(pretrain_config({**MAE, "stages": [{"name": "a", "steps": 1,
                                                              "sources": [{"source": "rasd"}]}]})).train
    assert by["pretrain.mae"].steps == steps
    assert by["pretrain.mae"].flops == pytest.approx(steps * 8 * per_image)
    assert by["pretrain.mae"].seconds == pytest.approx(3.0 + steps * 8 * per_image / 1e9)
    assert by["data.fundus"].seconds == pytest.approx(2.0 + 48 * 32 * 32 / 1e6 / 0.5)
    # probe: 2 seeds x 2 fractions; 3 epochs of ceil(n / 4) head steps per run and head (cls, mean, cls+mean);
    # features once per run
    probe_steps = 3 * 2 * 3 * (math.ceil(round(0.5 * train) / 4) + math.ceil(train / 4))
    assert (by["adapt.probe"].runs, by["adapt.probe"].steps) == (4, probe_steps)
    assert by["adapt.probe"].seconds == pytest.approx(4 * 1.5 + probe_steps / 100.0)
    # fine-tune: 1 seed x 2 fractions, 1 epoch: training FLOPs of the images, validation and test forwards
    ft = by["adapt.ft"]
    assert ft.runs == 2 and ft.seconds == pytest.approx(2 * 2.5 + ft.flops / 2e9)
    assert ft.flops > (round(0.5 * train) + train + 2 * (val + test)) * per_image / 10  # same encoder, more images
    assert by["evaluate.cmp"].seconds == pytest.approx(0.25) and by["report.report"].seconds == pytest.approx(4.0)
    assert all(e.fits for e in jobs)


def test_gpu_rates_are_labelled_assumed_until_device_json(tmp_path: Path, bench: Path) -> None:
    path = pipeline(tmp_path, mixed_precision="bf16")
    jobs, rates = estimate(path, "h100", bench)
    assert not rates.measured and "ASSUMED, not measured" in rates.source
    mae = next(e for e in jobs if e.job == "pretrain.mae")
    assert mae.seconds == pytest.approx(15.0 + mae.steps * 0.015 + mae.flops / (GPUS["h100"]["bf16"] * 0.30))
    (bench / "device.json").write_text(json.dumps({"device": {"name": "NVIDIA H100 80GB HBM3"},
                                                   "rates": {"efficiency": {"vit": 0.5}, "step_overhead_s": 0.01}}))
    jobs, rates = estimate(path, "h100", bench)
    mae = next(e for e in jobs if e.job == "pretrain.mae")
    assert rates.measured and "measured" in rates.source
    assert mae.seconds == pytest.approx(15.0 + mae.steps * 0.01 + mae.flops / (GPUS["h100"]["bf16"] * 0.5))
    _, a100 = estimate(path, "a100", bench)  # an H100's device.json says nothing about an A100
    assert not a100.measured


def test_a_job_that_cannot_fit_is_flagged(tmp_path: Path, bench: Path, capsys: pytest.CaptureFixture) -> None:
    """ViT-L/16 MAE at 224 px (fp16), 4096 images per micro-batch. By Korthikanti et al.'s 34 bytes per token and
    width per block: encoder 24 x 50 x 1024 x 34 + decoder 8 x 197 x 512 x 34 = 69 MB per image, 283 GB per
    batch, far over an H100's 80 GB; at batch 64 (4.4 GB + 16 bytes x 329 M parameters = 5.3 GB) it fits."""
    big = {"recipe": "mae_vit_large_paper", "batch_size": 4096, "image_size": 224, "backbone_overrides": {}}
    korthikanti = 4096 * 34 * (24 * 50 * 1024 + 8 * 197 * 512)
    jobs, _ = estimate(pipeline(tmp_path, **big), "h100", bench)
    mae = next(e for e in jobs if e.job == "pretrain.mae")
    assert not mae.fits and 0.8 * korthikanti < mae.peak_bytes < 1.3 * korthikanti + 20 * GiB
    assert all(e.fits for e in jobs if e.job != "pretrain.mae")
    jobs, _ = estimate(pipeline(tmp_path, **{**big, "batch_size": 64}), "h100", bench)
    assert all(e.fits for e in jobs)
    assert cli(["plan", str(pipeline(tmp_path, **big)), "--device", "h100"], capsys) == 0
    assert "warning: pretrain.mae: needs ~" in " ".join(capsys.readouterr().out.split())


def cli(args: list[str], capsys: pytest.CaptureFixture) -> int:
    try:
        main(args)
        return 0
    except SystemExit as e:
        return int(e.code or 0)


def test_cli_plans_the_shipped_demo_and_rejects_an_unknown_device(capsys: pytest.CaptureFixture) -> None:
    assert cli(["plan", str(REPO / "configs" / "demo.yaml"), "--json"], capsys) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["device"] == "cpu" and doc["measured"] and doc["total"]["seconds"] > 0
    assert {j["job"] for j in doc["jobs"]} >= {"pretrain.mae", "adapt.mae_probe", "report.report"}
    assert cli(["plan", str(REPO / "configs" / "demo.yaml"), "--device", "tpu"], capsys) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err


SHIPPED = sorted(p for p in [*(REPO / "configs").glob("*.yaml"), *(REPO / "configs" / "experiments").glob("*.yaml")]
                 if "report" in yaml.safe_load(p.read_text()))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_pipeline_plans_on_cpu_and_h100(path: Path, bench: Path, shared_data: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    for device in ("cpu", "h100"):
        jobs, _ = estimate(path, device, bench)
        assert jobs and all(e.flops >= 0 and math.isfinite(e.seconds) and e.seconds >= 0 for e in jobs)


def test_the_gpu_experiment_is_the_cpu_one_at_scale(bench: Path, shared_data: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Same jobs and kinds as the CPU headline; every job fits one H100; far more pretraining work per arm."""
    monkeypatch.chdir(REPO)
    cpu, _ = estimate(REPO / "configs" / "experiments" / "retinamnist.yaml", "h100", bench)
    gpu, _ = estimate(REPO / "configs" / "experiments" / "retinamnist_gpu.yaml", "h100", bench)
    assert [(e.job, e.kind) for e in gpu] == [(e.job, e.kind) for e in cpu]
    assert all(e.fits for e in gpu)
    by_cpu, by_gpu = {e.job: e for e in cpu}, {e.job: e for e in gpu}
    assert by_gpu["pretrain.on_real"].flops > 1000 * by_cpu["pretrain.on_real"].flops


def test_a_cross_validated_adaptation_plans_every_fold(tmp_path: Path, bench: Path) -> None:
    path = pipeline(tmp_path)
    spec = yaml.safe_load(path.read_text())
    spec["adapt"]["probe"]["cv"] = {"folds": 4, "repeats": 2}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    probe = {e.job: e for e in estimate(path, "cpu", bench)[0]}["adapt.probe"]
    # pool 48 rows: test 12, validation one of 3 inner folds of 36 = 12, train 24; 2 seeds x 2 fractions x 8 folds,
    # 3 heads per run (the probe on each pooling, as in the test above)
    steps = 3 * 2 * 8 * 3 * (math.ceil(12 / 4) + math.ceil(24 / 4))
    assert (probe.runs, probe.steps) == (2 * 2 * 8, steps)


def test_auto_precision_resolves_for_an_assumed_device_only_inside_the_context() -> None:
    from synthfm import hardware

    here = hardware.resolve_precision("auto")
    with hardware.assume_native_bf16(True):
        assert hardware.resolve_precision("auto") == "bf16" and hardware.resolve_precision("no") == "no"
        with hardware.assume_native_bf16(None):
            assert hardware.resolve_precision("auto") == here
    with hardware.assume_native_bf16(False):
        assert hardware.resolve_precision("auto") == "no" and hardware.resolve_precision("fp16") == "fp16"
    assert hardware.resolve_precision("auto") == here


def test_an_auto_gpu_recipe_is_rated_at_bf16_on_the_gpu(tmp_path: Path, bench: Path, shared_data: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    src = REPO / "configs" / "experiments" / "retinamnist_gpu.yaml"
    forced = tmp_path / "forced.yaml"
    forced.write_text(src.read_text().replace("mixed_precision: auto", "mixed_precision: bf16"))
    fp32 = tmp_path / "fp32.yaml"
    fp32.write_text(src.read_text().replace("mixed_precision: auto", "mixed_precision: 'no'"))
    auto, bf16, no = ({e.job: e.seconds for e in estimate(p, "h100", bench)[0]} for p in (src, forced, fp32))
    assert auto["pretrain.on_real"] == bf16["pretrain.on_real"] < no["pretrain.on_real"]
