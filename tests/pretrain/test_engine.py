"""Tests of the pretraining engine: schedule, data plan, RNG state, curriculum, checkpoints and kill -9 resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from synthfm.errors import SynthfmError
from synthfm.models.checkpoint import from_pretrained, load_state
from synthfm.pretrain.config import pretrain_config
from synthfm.pretrain.engine import (
    Engine,
    checkpoint_dirs,
    export_encoder,
    pretrain,
)
from synthfm.runs import RunDir
from synthfm.train.optim import lr_at

RASD = {"source": "rasd", "n": 48}


@pytest.fixture(scope="session")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Phantom renders shared by the tests of this session."""
    return tmp_path_factory.mktemp("sources")


def tiny(cache: Path, stages: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    """A two-block ViT-Ti MAE at 32 px, batch 8: a few hundredths of a second per step on a CPU."""
    cfg = {"recipe": "mae_vit_tiny_demo", "image_size": 32, "backbone_overrides": {"depth": 2}, "batch_size": 8,
           "mae": {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}, "log_every": 2,
           "checkpoint_every": 4, "optim": {"lr": 1e-3, "warmup_steps": 2}, "stages": stages,
           "cache_dir": str(cache)}
    return {**cfg, **kw}


def two_stages(steps: int = 6) -> list[dict[str, Any]]:
    """Synthetic (RaSD) then a phantom/RaSD mixture."""
    return [{"name": "rasd", "sources": [RASD], "steps": steps},
            {"name": "mix", "sources": [{"source": "phantom", "n": 16}, {**RASD, "weight": 0.5}], "steps": steps}]


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    """The full model (encoder + decoder) of a run's last checkpoint."""
    return load_state(checkpoint_dirs(run)[-1] / "model.safetensors")


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Two state dicts hold bit-identical tensors."""
    assert sorted(a) == sorted(b)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_config_errors_name_the_key() -> None:
    """steps and epochs together, an unknown key, and duplicate stage names are clear errors."""
    with pytest.raises(SynthfmError, match="exactly one of 'steps' or 'epochs'"):
        pretrain_config({"stages": [{"name": "a", "sources": [RASD], "steps": 2, "epochs": 1}]})
    with pytest.raises(SynthfmError, match=r"unknown key 'optim\.lr_peak'"):
        pretrain_config({"optim": {"lr_peak": 1}, "stages": [{"name": "a", "sources": [RASD], "steps": 2}]})
    with pytest.raises(SynthfmError, match="unique"):
        pretrain_config({"stages": [{"name": "a", "sources": [RASD], "steps": 2}] * 2})


def test_mae_loss_decreases_on_phantom(cache: Path, tmp_path: Path) -> None:
    """40 steps on 32 phantom fundus images cut the masked normalised-pixel loss by more than a quarter."""
    cfg = pretrain_config(tiny(cache, [{"name": "p", "sources": [{"source": "phantom", "n": 32}], "steps": 40}],
                               log_every=4))
    summary = pretrain(cfg, tmp_path / "run")
    losses = [r["loss"] for r in RunDir(tmp_path / "run", "pretrain", cfg).metrics()]
    assert len(losses) == 10
    assert np.mean(losses[-3:]) < 0.75 * losses[0], losses
    assert summary["final_loss"] == losses[-1] and summary["global_steps"] == 40


def test_two_stage_curriculum(cache: Path, tmp_path: Path) -> None:
    """Metrics cover both stages in order, each stage exports its encoder, the optimiser state carries over."""
    cfg = pretrain_config(tiny(cache, two_stages(6), checkpoint_every=100))
    pretrain(cfg, tmp_path)
    records = RunDir(tmp_path, "pretrain", cfg).metrics()
    assert [(r["stage"], r["step"], r["global_step"]) for r in records] == [
        ("rasd", 2, 2), ("rasd", 4, 4), ("rasd", 6, 6), ("mix", 2, 8), ("mix", 4, 10), ("mix", 6, 12)]
    assert records[2]["lr"] == pytest.approx(lr_at(5, 6, 2, 1e-3)) == pytest.approx(1.464e-4, rel=1e-3)
    assert records[3]["lr"] == pytest.approx(1e-3)  # stage 2 has its own warm-up and cosine: back at the peak
    first, last = (from_pretrained(tmp_path / "stages" / s / "encoder") for s in ("rasd", "mix"))
    assert not torch.equal(first.cls_token, last.cls_token)
    assert torch.equal(last.cls_token, from_pretrained(tmp_path / "encoder").cls_token)
    opt = torch.load(checkpoint_dirs(tmp_path)[-1] / "optimizer.pt", weights_only=True)
    assert int(next(iter(opt["state"].values()))["step"]) == 12  # AdamW moments continued across stages
    assert pretrain(cfg, tmp_path)["global_steps"] == 12  # a finished run is a no-op
    assert len(RunDir(tmp_path, "pretrain", cfg).metrics()) == 6


def test_checkpoints_are_pruned_and_atomic(cache: Path, tmp_path: Path) -> None:
    """Only keep_checkpoints complete directories remain; no temporary ones; export matches the encoder."""
    cfg = pretrain_config(tiny(cache, [{"name": "a", "sources": [RASD], "steps": 10}], checkpoint_every=3,
                               keep_checkpoints=2))
    pretrain(cfg, tmp_path)
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step_00000009", "step_00000010"]
    assert not list((tmp_path / "checkpoints").glob(".*"))
    exported = from_pretrained(export_encoder(tmp_path, tmp_path / "exported"))
    assert_same(exported.state_dict(), from_pretrained(tmp_path / "encoder").state_dict())


def test_kill_minus_nine_resume_gives_identical_weights(cache: Path, tmp_path: Path) -> None:
    """SIGKILL a run right after its first checkpoint, resume it: final weights equal an uninterrupted run's."""
    data = tiny(cache, two_stages(10))
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(data))
    pretrain(pretrain_config(data), tmp_path / "clean")  # also renders the phantom into the shared cache
    env = {**os.environ, "SYNTHFM_PROGRESS": "0", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "synthfm", "pretrain", "run", str(tmp_path / "cfg.yaml"),
                             "-o", str(tmp_path / "killed")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = tmp_path / "killed" / "checkpoints" / "step_00000004"
    deadline = time.time() + 60
    while not first.is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert not (tmp_path / "killed" / "COMPLETE.json").exists()
    killed_at = [p.name for p in checkpoint_dirs(tmp_path / "killed")]
    assert killed_at and killed_at[-1] < "step_00000020", killed_at
    pretrain(pretrain_config(data), tmp_path / "killed")
    assert_same(final_weights(tmp_path / "clean"), final_weights(tmp_path / "killed"))
    cfg = pretrain_config(data)
    clean = [(r["global_step"], r["loss"]) for r in RunDir(tmp_path / "clean", "pretrain", cfg).metrics()]
    resumed = [(r["global_step"], r["loss"]) for r in RunDir(tmp_path / "killed", "pretrain", cfg).metrics()
               if "loss" in r]
    assert resumed == clean


def test_resume_refuses_a_different_process_count(cache: Path, tmp_path: Path) -> None:
    """A checkpoint written by 2 processes is not resumed by 1 (the data order would change)."""
    cfg = pretrain_config(tiny(cache, [{"name": "a", "sources": [RASD], "steps": 4}]))
    engine = Engine(cfg, tmp_path)
    engine.run.open()
    ckpt = engine.save_checkpoint()
    state = json.loads((ckpt / "state.json").read_text())
    (ckpt / "state.json").write_text(json.dumps({**state, "processes": 2}))
    with pytest.raises(SynthfmError, match="2 processes"):
        Engine(cfg, tmp_path).restore()


def test_accelerate_launch_two_processes_matches_single_process(cache: Path, tmp_path: Path) -> None:
    """Accelerate's launcher with 2 CPU processes (gloo DDP), 2 x 4 images per step, ends where one process with 8
    images per step ends: same samples, same per-sample augmentation and MAE masks, gradients averaged.

    accelerate 1.15 runs `accelerate launch --cpu --num_processes 2` as ONE process unless it is given an MPI
    hostfile (`--mpirun_hostfile`, Intel MPI/oneCCL); its torchrun-based launcher is `--multi_gpu`, which on CPU
    (ACCELERATE_USE_CPU=1, or no GPU) gives gloo DDP. Only the float32 summation order of the gradients differs,
    so after 6 AdamW steps at lr 1e-3: logged losses within 1e-5 relative, mean |weight difference| < 1e-7, and
    the largest < 1e-4, a tenth of one step's update (Adam's normalisation can turn rounding in a near-zero
    gradient into a visible difference for a few of the 1M weights).
    """
    stage = [{"name": "a", "sources": [RASD], "steps": 6}]
    data = tiny(cache, stage, batch_size=4, checkpoint_every=3)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(data))
    env = {**os.environ, "SYNTHFM_PROGRESS": "0", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "ACCELERATE_USE_CPU": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           "-m", "synthfm", "pretrain", "run", str(tmp_path / "cfg.yaml"), "-o", str(tmp_path / "ddp")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr[-3000:]
    single_cfg = pretrain_config(tiny(cache, stage, batch_size=8, checkpoint_every=3))
    pretrain(single_cfg, tmp_path / "single")
    ddp = RunDir(tmp_path / "ddp", "pretrain", pretrain_config(data)).metrics()
    single = RunDir(tmp_path / "single", "pretrain", single_cfg).metrics()
    assert [r["epoch"] for r in ddp] == [pytest.approx(x) for x in (1 / 3, 2 / 3, 1.0)]  # 2 x 4 of 48 per step
    assert [r["loss"] for r in ddp] == [pytest.approx(r["loss"], rel=1e-5) for r in single]
    a, b = final_weights(tmp_path / "ddp"), final_weights(tmp_path / "single")
    assert sorted(a) == sorted(b)
    diff = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    mid = load_state(checkpoint_dirs(tmp_path / "single")[0] / "model.safetensors")  # after step 3
    moved = torch.cat([(b[k] - mid[k]).abs().flatten() for k in b])
    assert diff.mean() < 1e-7 and diff.max() < 1e-4, (diff.mean(), diff.max())
    assert moved.mean() > 1e-4  # the weights did train: steps 4-6 moved them 1000x more than the difference
    assert sorted(p.name for p in checkpoint_dirs(tmp_path / "ddp")[-1].glob("rng_*")) == ["rng_0.pt", "rng_1.pt"]
    assert len(done.stdout.strip().splitlines()) == 1  # one summary, from rank 0


def test_compiled_engine_matches_eager(cache: Path, tmp_path: Path) -> None:
    """`compile: true` (torch.compile in place) trains the same model: same checkpoint keys, losses within
    float32 reordering of the eager run's, and the config hash of runs without the key is unchanged."""
    stage = [{"name": "a", "sources": [RASD], "steps": 4}]
    eager_cfg, compiled_cfg = (pretrain_config(tiny(cache, stage, **kw)) for kw in ({}, {"compile": True}))
    assert "compile" not in eager_cfg.model_dump() and compiled_cfg.model_dump()["compile"] is True
    pretrain(eager_cfg, tmp_path / "eager")
    engine = Engine(compiled_cfg, tmp_path / "compiled")
    assert engine.unwrapped()._compiled_call_impl is not None  # nn.Module.compile() took effect
    engine.fit()
    eager = RunDir(tmp_path / "eager", "pretrain", eager_cfg).metrics()
    compiled = RunDir(tmp_path / "compiled", "pretrain", compiled_cfg).metrics()
    assert [r["loss"] for r in compiled] == [pytest.approx(r["loss"], rel=1e-4) for r in eager]
    a, b = final_weights(tmp_path / "eager"), final_weights(tmp_path / "compiled")
    assert sorted(a) == sorted(b)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


def test_run_records_the_machine_choices(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A default config resolves `auto` to fp32 on a CPU without native bf16, records it in config.yaml, and
    machine.json says what ran: threads from SYNTHFM_THREADS, no compile for a 2-step run."""
    import synthfm.hardware as hardware

    monkeypatch.setattr(hardware, "native_bf16", lambda device_type=None: False)
    monkeypatch.setenv("SYNTHFM_THREADS", "1")
    monkeypatch.setattr(hardware, "_threads_set", None)
    cfg = pretrain_config(tiny(cache, [{"name": "a", "sources": [RASD], "steps": 2}]))
    pretrain(cfg, tmp_path)
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["config"]["mixed_precision"] == "no"
    machine = json.loads((tmp_path / "machine.json").read_text())
    assert machine["threads"] == 1 and machine["mixed_precision"] == {"config": "no", "used": "no"}
    assert machine["compile"] == {"config": "auto", "used": False} and machine["native_bf16"] is False


def test_explicit_bf16_without_native_support_warns(cache: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`mixed_precision: bf16` on a device without native bf16 warns with the measured slowdown."""
    import synthfm.hardware as hardware

    monkeypatch.setattr(hardware, "native_bf16", lambda device_type=None: False)
    monkeypatch.setattr(hardware, "bf16_slowdown", lambda device=None: 21.0)
    cfg = pretrain_config(tiny(cache, [{"name": "a", "sources": [RASD], "steps": 1}], mixed_precision="bf16"))
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)  # Accelerate keeps one precision per process
    try:
        with pytest.warns(UserWarning, match=r"21\.0x the time of fp32"):
            assert Engine(cfg, tmp_path).acc.mixed_precision == "bf16"
    finally:
        AcceleratorState._reset_state(True)


def test_planned_steps_count_epoch_stages(cache: Path, tmp_path: Path) -> None:
    """`compile: auto` looks at the whole curriculum: 3 steps + 2 epochs of 48 RaSD samples at batch 8 = 15."""
    cfg = pretrain_config(tiny(cache, [{"name": "a", "sources": [RASD], "steps": 3},
                                       {"name": "b", "sources": [RASD], "epochs": 2}]))
    engine = Engine(cfg, tmp_path)
    assert engine.planned_steps() == 3 + 12
    assert engine.setup_compile() is False and engine.compiled is False  # a CPU, and far below the threshold
