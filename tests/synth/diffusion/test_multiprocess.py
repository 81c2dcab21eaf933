"""Generator training and sharded generation under `accelerate launch` with two CPU processes (gloo), as
docs/scaling.md runs them on N GPUs: the same results as one process.

accelerate's torchrun launcher is `--multi_gpu`; with ACCELERATE_USE_CPU=1 (or no GPU) it gives gloo DDP on CPU
(see tests/pretrain/test_engine.py for why `--cpu --num_processes 2` is not it).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from synthfm.pretrain.config import pretrain_config
from synthfm.pretrain.engine import checkpoint_dirs, pretrain
from synthfm.runs import RunDir


def launch(command: str, config: Path, out: Path) -> subprocess.CompletedProcess:
    """`accelerate launch --multi_gpu --num_processes 2 -m synthfm synth COMMAND CONFIG -o OUT` on CPU (gloo)."""
    env = {**os.environ, "SYNTHFM_PROGRESS": "0", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "ACCELERATE_USE_CPU": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           "-m", "synthfm", "synth", command, str(config), "-o", str(out)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_two_process_generator_training_matches_one_process(phantoms: dict[str, Path], diffusion_config,
                                                            tmp_path: Path) -> None:
    """2 processes x 4 images per step end where 1 process x 8 ends: each sample's noise, timestep and condition
    dropout come from its own seed, DDP averages the gradients; only float32 summation order differs."""
    cards = [phantoms["train0"], phantoms["train1"]]
    data = diffusion_config(cards, 6, batch_size=4, log_every=2, checkpoint_every=3)
    (tmp_path / "gen.yaml").write_text(yaml.safe_dump(data))
    done = launch("train", tmp_path / "gen.yaml", tmp_path / "ddp")
    assert done.returncode == 0, done.stderr[-3000:]
    single_cfg = pretrain_config(diffusion_config(cards, 6, batch_size=8, log_every=2, checkpoint_every=3))
    pretrain(single_cfg, tmp_path / "single")
    ddp = RunDir(tmp_path / "ddp", "pretrain", pretrain_config(data)).metrics()
    single = RunDir(tmp_path / "single", "pretrain", single_cfg).metrics()
    assert [r["global_step"] for r in ddp] == [r["global_step"] for r in single] == [2, 4, 6]
    assert [r["loss"] for r in ddp] == [pytest.approx(r["loss"], rel=1e-4) for r in single]
    a, b = (load_file(checkpoint_dirs(tmp_path / r)[-1] / "model.safetensors") for r in ("ddp", "single"))
    assert sorted(a) == sorted(b)
    diff = torch.cat([(a[k].float() - b[k].float()).abs().flatten() for k in a])
    assert diff.mean() < 1e-6 and diff.max() < 1e-3, (diff.mean(), diff.max())
    assert (tmp_path / "ddp" / "generator" / "generator.json").is_file()  # rank 0 exported the generator
    assert len(done.stdout.strip().splitlines()) == 1  # one summary, from rank 0


def test_two_process_sharded_generation_matches_one_process(trained: Path, tmp_path: Path) -> None:
    """Each process writes the shards k % 2 == rank; the card equals a single process's byte for byte."""
    from synthfm.synth.diffusion.config import GenerateConfig
    from synthfm.synth.diffusion.generate import generate

    cfg = {"generator": str(trained / "generator"), "n": 16, "seed": 3, "shard_size": 4, "batch_size": 4,
           "sampler": {"name": "dpmpp", "steps": 5, "guidance_scale": 2.0}}
    (tmp_path / "gen.yaml").write_text(yaml.safe_dump(cfg))
    done = launch("generate", tmp_path / "gen.yaml", tmp_path / "ddp")
    assert done.returncode == 0, done.stderr[-3000:]
    generate(GenerateConfig(**cfg), tmp_path / "single")
    shards = {r: {p.name: p.read_bytes() for p in sorted((tmp_path / r / "shards").glob("*.tar"))}
              for r in ("ddp", "single")}
    assert sorted(shards["ddp"]) == [f"train-{i:06d}.tar" for i in range(4)]
    assert shards["ddp"] == shards["single"]
    manifests = [(tmp_path / r / "manifest.parquet").read_bytes() for r in ("ddp", "single")]
    assert manifests[0] == manifests[1]
    assert (tmp_path / "ddp" / "dataset.yaml").is_file()
