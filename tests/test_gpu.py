"""Correctness on a CUDA device (marker `gpu`): bf16 autocast steps of MAE, DINOv2 and the diffusion generator;
resume after kill -9 bit-identical on one device; the sampler gives the same bytes for the same call.

Without CUDA these tests skip, unless SYNTHFM_TEST_DEVICE=cpu asks for their CPU variant (what
`benchmarks/device_check.sh --smoke` runs). `pytest -m gpu` selects them; the device check runs them on the card.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from synthfm.pretrain.config import pretrain_config
from synthfm.pretrain.engine import Engine, checkpoint_dirs, pretrain
from synthfm.synth.writer import PhantomConfig, render_phantom

pytestmark = pytest.mark.gpu

# The resumed run must make the same kernel choices as the clean one: deterministic algorithms, fixed cuBLAS
# workspace (scatter-add in the MAE gather's backward is otherwise non-deterministic on CUDA).
DETERMINISTIC = ("import sys, torch; torch.use_deterministic_algorithms(True); "
                 "from synthfm.cli import main; main(['pretrain', 'run', sys.argv[1], '-o', sys.argv[2]])")


@pytest.fixture(scope="module")
def device() -> str:
    """'cuda' when there is one; 'cpu' under SYNTHFM_TEST_DEVICE=cpu; otherwise skip."""
    if torch.cuda.is_available():
        return "cuda"
    if os.environ.get("SYNTHFM_TEST_DEVICE") == "cpu":
        return "cpu"
    pytest.skip("needs CUDA (SYNTHFM_TEST_DEVICE=cpu runs the CPU variant, as device_check.sh --smoke does)")


@pytest.fixture(autouse=True)
def _fresh_accelerator() -> Any:
    """Each run picks its own mixed precision: Accelerate's process-wide state is reset around every test."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


@pytest.fixture(scope="module")
def card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 fundus phantoms at 16 px (DR grade labels)."""
    return render_phantom(tmp_path_factory.mktemp("card"), PhantomConfig(n=32, size=16, seed=0))


def mae(cache: Path, steps: int, **kw: Any) -> dict[str, Any]:
    """A two-block ViT-Ti MAE at 32 px on the RaSD stream, batch 8."""
    return {"recipe": "mae_vit_tiny_demo", "image_size": 32, "backbone_overrides": {"depth": 2}, "batch_size": 8,
            "mae": {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}, "log_every": 1,
            "checkpoint_every": 2, "optim": {"lr": 1e-3, "warmup_steps": 1}, "cache_dir": str(cache),
            "stages": [{"name": "a", "sources": [{"source": "rasd", "n": 32}], "steps": steps}], **kw}


def losses(run: Path) -> list[float]:
    """Logged losses of a run."""
    import json

    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def bf16_run(cfg: dict[str, Any], out: Path, device: str) -> list[float]:
    """Train under bf16 autocast; the engine sits on `device`, weights stay float32 and the losses are finite."""
    config = pretrain_config({**cfg, "mixed_precision": "bf16", "log_every": 1})
    engine = Engine(config, out)
    assert engine.acc.device.type == device
    assert all(p.dtype == torch.float32 for p in engine.unwrapped().parameters())
    engine.fit()
    found = losses(out)
    assert found and all(math.isfinite(x) for x in found), found
    return found


def test_bf16_mae_step_is_close_to_fp32(device: str, tmp_path: Path) -> None:
    cfg = mae(tmp_path / "cache", 2)
    low = bf16_run(cfg, tmp_path / "bf16", device)
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    pretrain(pretrain_config({**cfg, "log_every": 1}), tmp_path / "fp32")
    assert low[0] == pytest.approx(losses(tmp_path / "fp32")[0], rel=0.05)  # same batch and masks, bf16 rounding


def test_bf16_dinov2_step(device: str, tmp_path: Path) -> None:
    bf16_run({"recipe": "dinov2_vit_tiny_demo", "image_size": 32, "backbone_overrides": {"depth": 2},
              "batch_size": 4, "dinov2": {"local_size": 16, "prototypes": 64, "hidden_dim": 64},
              "cache_dir": str(tmp_path / "cache"), "checkpoint_every": 10,
              "stages": [{"name": "a", "sources": [{"source": "rasd", "n": 16}], "steps": 2}]},
             tmp_path / "run", device)


def test_bf16_diffusion_step(device: str, card: Path, tmp_path: Path) -> None:
    bf16_run({"objective": "diffusion", "image_size": 16, "batch_size": 8, "checkpoint_every": 10,
              "diffusion": {"conditions": ["dr_grade"], "unet": {"block_out_channels": [16, 32],
                                                                "attention": [False, True], "layers_per_block": 1,
                                                                "norm_num_groups": 8}},
              "optim": {"lr": 1e-3, "weight_decay": 0.0},
              "stages": [{"name": "a", "sources": [{"source": str(card)}], "steps": 2}]}, tmp_path / "run", device)


def engine_process(cfg: Path, out: Path, device: str) -> subprocess.Popen:
    """The engine in its own process with deterministic algorithms (CPU variant: CUDA hidden)."""
    env = {**os.environ, "SYNTHFM_PROGRESS": "0", "HF_HUB_OFFLINE": "1", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return subprocess.Popen([sys.executable, "-c", DETERMINISTIC, str(cfg), str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_resume_after_kill_minus_nine_is_bit_identical(device: str, tmp_path: Path) -> None:
    data = mae(tmp_path / "cache", 8)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(data))
    clean = engine_process(tmp_path / "cfg.yaml", tmp_path / "clean", device)
    assert clean.wait(timeout=300) == 0, clean.stderr.read().decode()[-2000:]
    killed = engine_process(tmp_path / "cfg.yaml", tmp_path / "killed", device)
    first = tmp_path / "killed" / "checkpoints" / "step_00000002"
    deadline = time.time() + 240
    while not first.is_dir() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL, killed.stderr.read().decode()[-2000:]
    assert not (tmp_path / "killed" / "COMPLETE.json").exists()
    resumed = engine_process(tmp_path / "cfg.yaml", tmp_path / "killed", device)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()[-2000:]
    a, b = (load_file(checkpoint_dirs(tmp_path / r)[-1] / "model.safetensors") for r in ("clean", "killed"))
    assert sorted(a) == sorted(b)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_sampler_same_call_same_bytes(device: str, card: Path, tmp_path: Path) -> None:
    from synthfm.synth.diffusion.config import SamplerConfig
    from synthfm.synth.diffusion.generator import load_generator, to_uint8
    from synthfm.synth.diffusion.sampling import sample

    cfg = pretrain_config({"objective": "diffusion", "image_size": 8, "batch_size": 8, "checkpoint_every": 10,
                           "diffusion": {"conditions": ["dr_grade"], "unet": {"block_out_channels": [16, 32],
                                         "attention": [False, False], "layers_per_block": 1, "norm_num_groups": 8}},
                           "optim": {"lr": 1e-3, "weight_decay": 0.0},
                           "stages": [{"name": "a", "sources": [{"source": str(card)}], "steps": 2}]})
    pretrain(cfg, tmp_path / "run")
    gen = load_generator(tmp_path / "run" / "generator").to(torch.device(device))
    cond = torch.ones(4, len(gen.schema.fields), dtype=torch.long, device=device)
    sampler = SamplerConfig(name="dpmpp", steps=5, guidance_scale=2.0)
    first, second = (to_uint8(sample(gen, cond, [1, 2, 3, 4], sampler)) for _ in range(2))
    assert first.tobytes() == second.tobytes()
    assert first.shape[0] == 4 and first.std() > 0
