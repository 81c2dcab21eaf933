"""The diffusion objective's loss variants: min-SNR weights, EDM noise levels and preconditioned training."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import DDPMScheduler

from synthfm.errors import SynthfmError
from synthfm.pretrain.config import pretrain_config
from synthfm.pretrain.diffusion import build_diffusion, edm_sigmas, min_snr_weight
from synthfm.pretrain.engine import pretrain
from synthfm.synth.diffusion.config import SamplerConfig
from synthfm.synth.diffusion.generator import load_generator
from synthfm.synth.diffusion.model import sampling_scheduler
from synthfm.synth.diffusion.sampling import sample


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models on a shared 2-core machine: torch on one thread, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_min_snr_weights_by_hand() -> None:
    sched = DDPMScheduler(num_train_timesteps=4, beta_schedule="linear", beta_start=0.1, beta_end=0.4)
    # alphas 0.9, 0.8, 0.7, 0.6 -> abar 0.9, 0.72, 0.504, 0.3024; SNR = abar / (1 - abar)
    snr = [9.0, 0.72 / 0.28, 0.504 / 0.496, 0.3024 / 0.6976]
    t = torch.arange(4)
    w = min_snr_weight(sched, t, 5.0)
    assert torch.allclose(w, torch.tensor([5 / 9, 1, 1, 1.0]), atol=1e-6)
    v = DDPMScheduler.from_config(sched.config, prediction_type="v_prediction")
    assert torch.allclose(min_snr_weight(v, t, 5.0), torch.tensor([min(s, 5) / (s + 1) for s in snr]), atol=1e-6)


def test_edm_sigmas_are_log_normal() -> None:
    level = torch.tensor([0.5, 0.841344746, 0.158655254])  # Phi(0), Phi(1), Phi(-1)
    assert torch.allclose(edm_sigmas(level, -1.2, 1.2), torch.tensor([math.exp(-1.2), 1.0, math.exp(-2.4)]),
                          rtol=1e-5)


def test_edm_generator_trains_exports_and_samples(phantoms: dict[str, Path], diffusion_config: Callable[..., Any],
                                                  tmp_path: Path) -> None:
    """EDM formulation: the export records EDM's schedule, DPM-Solver++ samples with the EDM scheduler in range."""
    cfg = diffusion_config([phantoms["train0"], phantoms["train1"]], 6)
    cfg["diffusion"] = {**cfg["diffusion"], "formulation": "edm", "prediction_type": "epsilon"}
    pretrain(pretrain_config(cfg), tmp_path / "run")
    gen = load_generator(tmp_path / "run" / "generator")
    assert gen.scheduler_config["sigma_data"] == 0.5  # EDM's schedule, not DDPM's
    sampler = SamplerConfig(name="dpmpp", steps=5, guidance_scale=2.0)
    assert type(sampling_scheduler(gen.scheduler_config, sampler)).__name__ == "EDMDPMSolverMultistepScheduler"
    images = sample(gen, torch.tensor([[1], [2]]), [0, 1], sampler)
    assert images.shape == (2, 3, 8, 8) and torch.isfinite(images).all() and images.abs().max() <= 1


def test_edm_needs_a_noise_or_v_prediction(phantoms: dict[str, Path], diffusion_config: Callable[..., Any]) -> None:
    cfg = diffusion_config([phantoms["train0"]], 2)
    cfg["diffusion"] = {**cfg["diffusion"], "formulation": "edm"}  # tiny config predicts 'sample'
    with pytest.raises(SynthfmError, match="epsilon or v_prediction"):
        build_diffusion(pretrain_config(cfg))


def test_loss_of_a_sample_does_not_depend_on_its_batch(phantoms: dict[str, Path],
                                                      diffusion_config: Callable[..., Any]) -> None:
    """Per-sample draws come from the sample's seed: a sample's loss term is the same alone or in a batch."""
    cfg = diffusion_config([phantoms["train0"]], 2)
    cfg["diffusion"] = {**cfg["diffusion"], "cond_dropout": 0.5}
    torch.manual_seed(0)
    obj = build_diffusion(pretrain_config(cfg))
    obj.model.eval()
    images = torch.rand(3, 3, 8, 8) * 2 - 1
    batch = {"image": images, "cond": torch.tensor([[1], [2], [1]]), "seed": torch.tensor([11, 22, 33])}
    with torch.no_grad():
        together, _ = obj.loss(batch)
        alone = [obj.loss({k: v[i:i + 1] for k, v in batch.items()})[0] for i in range(3)]
    assert torch.allclose(together, torch.stack(alone).mean(), rtol=1e-5)
