"""Training the conditional generator through the engine: conditioning learned, guidance, export, kill -9 resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sklearn.linear_model import LogisticRegression

from synthfm.data.manifest import load_card
from synthfm.data.readers import open_dataset
from synthfm.errors import SynthfmError
from synthfm.io import umask_mode
from synthfm.models.checkpoint import load_state
from synthfm.pretrain.config import pretrain_config
from synthfm.pretrain.engine import checkpoint_dirs, pretrain
from synthfm.runs import RunDir
from synthfm.synth.diffusion.config import GenerateConfig, SamplerConfig
from synthfm.synth.diffusion.generate import plan_conditions
from synthfm.synth.diffusion.generator import content_hash, load_generator, to_uint8
from synthfm.synth.diffusion.sampling import sample


def pooled(images: np.ndarray) -> np.ndarray:
    """Classifier features: 4 x 4 average-pooled colour (any input size)."""
    t = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    return torch.nn.functional.adaptive_avg_pool2d(t, 4).reshape(len(images), -1).numpy()


def card_images(card: Path) -> np.ndarray:
    """Every image of a folder card as uint8 (N, H, W, C)."""
    ds = open_dataset(load_card(card))
    return np.stack([ds[i]["image"].permute(1, 2, 0).numpy() for i in range(len(ds))])


def test_conditioning_is_learned_and_guidance_strengthens_it(trained: Path, phantoms: dict[str, Path]) -> None:
    """A classifier trained on held-out phantoms recovers the requested cataract label from generated images:
    at chance without conditions (guidance 0), far above chance at guidance 1; the probability it gives the
    requested class rises with the guidance scale 0 -> 1 -> 3."""
    held = [card_images(phantoms["held0"]), card_images(phantoms["held1"])]
    clf = LogisticRegression(C=0.1, max_iter=2000).fit(pooled(np.concatenate(held)), np.repeat([0, 1], 32))
    gen = load_generator(trained / "generator")
    wanted = np.repeat([0, 1], 32)
    cond = torch.from_numpy(wanted[:, None] + 1)  # value index k + 1 (0 = not given)
    rates, probs = [], []
    for w in (0.0, 1.0, 3.0):
        images = to_uint8(sample(gen, cond, list(range(64)), SamplerConfig(name="ddim", steps=20, guidance_scale=w)))
        rates.append(float((clf.predict(pooled(images)) == wanted).mean()))
        probs.append(float(clf.predict_proba(pooled(images))[np.arange(64), wanted].mean()))
    assert rates[0] < 0.7, rates  # unconditional: a binomial(64, 0.5) draw
    assert rates[1] >= 0.85 and rates[2] >= 0.85, rates  # P(>= 55 of 64 by chance) < 1e-8
    assert probs[0] < probs[1] < probs[2], probs


def test_export_is_diffusers_safetensors_with_hash(trained: Path) -> None:
    """The generator is save_pretrained output (safetensors + config.json) of the EMA weights, with a content hash
    that a changed file breaks."""
    gen_dir = trained / "generator"
    info = json.loads((gen_dir / "generator.json").read_text())
    assert (gen_dir / "model" / "diffusion_pytorch_model.safetensors").is_file()
    assert all(f.stat().st_mode & 0o777 == umask_mode() for f in gen_dir.rglob("*") if f.is_file())  # not 0600
    assert json.loads((gen_dir / "model" / "config.json").read_text())["condition_sizes"] == [2]
    assert info["hash"] == content_hash(gen_dir) and info["kind"] == "pixel" and info["global_step"] == 160
    assert info["training"]["joint"] == [[64, 1], [64, 2]]  # 64 'no' + 64 'yes' rows
    ckpt = load_state(checkpoint_dirs(trained)[-1] / "model.safetensors")
    exported = load_generator(gen_dir).model.state_dict()
    assert all(torch.equal(ckpt[f"parts.ema.model.{k}"], v) for k, v in exported.items())
    assert not torch.equal(ckpt["parts.ema.model.condition.mlp.0.weight"],
                           ckpt["parts.generator.condition.mlp.0.weight"])  # EMA differs from the raw weights
    assert int(ckpt["parts.ema.steps"]) == 160
    records = RunDir(trained, "pretrain", pretrain_config(yaml.safe_load((trained / "config.yaml").read_text())[
        "config"])).metrics()
    assert records[0]["loss"] > 2 * records[-1]["loss"]
    assert 0.0 < np.mean([r["uncond_fraction"] for r in records]) < 0.25  # cond_dropout 0.1


def test_tampered_generator_is_refused(trained: Path, tmp_path: Path) -> None:
    """Changing one byte of the weights makes loading fail with a clear error."""
    import shutil

    copy = tmp_path / "generator"
    shutil.copytree(trained / "generator", copy)
    weights = copy / "model" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(SynthfmError, match="do not match its recorded hash"):
        load_generator(copy)


def test_kill_minus_nine_training_resumes_identically(phantoms: dict[str, Path], diffusion_config,
                                                       tmp_path: Path) -> None:
    """SIGKILL a diffusion run after its first checkpoint, resume: weights and EMA equal an uninterrupted run's;
    the generator trained on cataract-free images only refuses to make cataract."""
    data = diffusion_config([phantoms["train0"]], 12, checkpoint_every=4, batch_size=8,
                            diffusion={"conditions": ["cataract", "sex"], "unet": {
                                "block_out_channels": [8, 16], "attention": [False, False], "layers_per_block": 1,
                                "norm_num_groups": 4}})
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(data))
    env = {**os.environ, "SYNTHFM_PROGRESS": "0", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "synthfm", "synth", "train", str(tmp_path / "cfg.yaml"),
                             "-o", str(tmp_path / "killed")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    pretrain(pretrain_config(data), tmp_path / "clean")
    first = tmp_path / "killed" / "checkpoints" / "step_00000004"
    deadline = time.time() + 240
    while not first.is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert not (tmp_path / "killed" / "generator").exists()
    pretrain(pretrain_config(data), tmp_path / "killed")
    a, b = (load_state(checkpoint_dirs(tmp_path / r)[-1] / "model.safetensors") for r in ("clean", "killed"))
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.startswith("parts.ema.") for k in a)
    events = [r.get("event") for r in RunDir(tmp_path / "killed", "pretrain", pretrain_config(data)).metrics()]
    assert "resume" in events
    gen = load_generator(tmp_path / "killed" / "generator")
    with pytest.raises(SynthfmError, match=r"never trained on: cataract='yes'"):
        plan_conditions(GenerateConfig(generator=".", condition={"cataract": "yes"}), gen)
