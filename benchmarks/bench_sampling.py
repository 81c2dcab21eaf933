"""Sampling cost of the conditional diffusion generator: fidelity vs model evaluations, cost per image, memory vs N.

1. Fidelity vs evaluations: a small cataract-conditional generator is trained through the engine on 16 px fundus
   phantoms (run at 8 px so it converges on a CPU in minutes); 192 images per sampler are compared with 192
   held-out phantoms by Frechet distance (torchmetrics FID machinery) in a fixed feature space: 4x4-pooled colour
   plus a seeded random conv net. DDPM 1000 steps is the reference; DDIM and DPM-Solver++ at 10/20/50 steps.
   Guidance 1 (one evaluation per step); the real-vs-real distance of two phantom sets is the noise floor.
2. Cost per image on this CPU: the default 64 px pixel UNet and a 256 px latent UNet (SD-like VAE, 32x32x4
   latents) with DPM-Solver++ 20 steps and guidance 2 (both halves batched). The 256 px figure is extrapolated
   from one measured guided evaluation x 20 plus one measured VAE decode. Extrapolated to 1M images next to
   RETFound-DE's ~7 s/image on an RTX 3090 (~81 GPU-days per 1M).
3. Peak memory vs N: `generate` in a fresh process for N = 64, 256, 1024 (shards of 64), max RSS.

Usage: nice python benchmarks/bench_sampling.py > docs/bench/sampling.json
"""

from __future__ import annotations

import os

os.environ.setdefault("SYNTHFM_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from synthfm.data.manifest import load_card
from synthfm.data.readers import open_dataset
from synthfm.pretrain.config import pretrain_config
from synthfm.pretrain.engine import pretrain
from synthfm.synth.diffusion.config import SamplerConfig, UNetConfig
from synthfm.synth.diffusion.generator import Generator, load_generator, to_uint8
from synthfm.synth.diffusion.model import ConditionalUNet, unet_kwargs
from synthfm.synth.diffusion.sampling import sample
from synthfm.synth.writer import PhantomConfig, render_phantom

N_FD = 192
SIZE = 8
RETFOUND_DE_S_PER_IMAGE = 7.0  # RTX 3090, 000 (RETFound-DE): ~81 GPU-days per 1M images


class FixedFeatures(nn.Module):
    """A fixed feature space: 4x4-pooled colour (48) and a seeded random two-layer conv net (64)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1234)
        self.conv1, self.conv2 = nn.Conv2d(3, 32, 3, padding=1), nn.Conv2d(32, 64, 3, stride=2, padding=1)
        for conv in (self.conv1, self.conv2):
            conv.weight.data = torch.randn(conv.weight.shape, generator=g) / conv.weight[0].numel() ** 0.5
            conv.bias.data.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> (B, 112) float64."""
        x = x.float() / 127.5 - 1
        pooled = nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)
        deep = torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean(dim=(2, 3))
        return torch.cat([pooled, deep], dim=1).double()


def frechet(real: np.ndarray, fake: np.ndarray) -> float:
    """Frechet distance between two uint8 (N, H, W, 3) sets in the fixed feature space."""
    fid = FrechetInceptionDistance(feature=FixedFeatures(), input_img_size=(3, SIZE, SIZE))
    fid.update(torch.from_numpy(real).permute(0, 3, 1, 2), real=True)
    fid.update(torch.from_numpy(fake).permute(0, 3, 1, 2), real=False)
    return float(fid.compute())


def card_images(card: Path, size: int) -> np.ndarray:
    """A card's images resized to `size`, uint8 (N, H, W, 3)."""
    ds = open_dataset(load_card(card))
    x = torch.stack([ds[i]["image"] for i in range(len(ds))]).float()
    x = nn.functional.interpolate(x, size=(size, size), mode="bicubic", antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def train_generator(root: Path) -> tuple[Path, dict[str, Path]]:
    """Render phantoms (train 2 x 128, held-out 2 x 96, reference 2 x 96) and train the generator."""
    cards = {f"{name}{c}": render_phantom(root / f"{name}{c}", PhantomConfig(n=n, size=16, seed=seed + c,
                                                                             condition={"cataract": c}))
             for name, n, seed in (("train", 128, 0), ("held", 96, 10), ("ref", 96, 20)) for c in (0, 1)}
    cfg = {"objective": "diffusion", "image_size": SIZE, "batch_size": 32, "log_every": 50, "checkpoint_every": 10000,
           "diffusion": {"conditions": ["cataract"], "ema_decay": 0.999, "prediction_type": "sample",
                         "unet": {"block_out_channels": [16, 32], "attention": [False, False],
                                  "layers_per_block": 1, "norm_num_groups": 8}},
           "optim": {"lr": 2e-3, "warmup_steps": 10, "weight_decay": 0.0},
           "stages": [{"name": "main", "sources": [{"source": str(cards["train0"])},
                                                    {"source": str(cards["train1"])}], "steps": 300}]}
    pretrain(pretrain_config(cfg), root / "run")
    return root / "run" / "generator", cards


def fidelity(gen: Generator, cards: dict[str, Path]) -> tuple[list[dict], dict]:
    """FD to held-out phantoms per sampler and step count."""
    real = np.concatenate([card_images(cards["held0"], SIZE), card_images(cards["held1"], SIZE)])
    ref = np.concatenate([card_images(cards["ref0"], SIZE), card_images(cards["ref1"], SIZE)])
    cond = torch.from_numpy(np.repeat([1, 2], N_FD // 2)[:, None])
    rows = []
    for name, steps in [("ddpm", 1000), ("ddpm", 50), *[(s, k) for s in ("ddim", "dpmpp") for k in (10, 20, 50)]]:
        start = time.perf_counter()
        images = to_uint8(sample(gen, cond, list(range(N_FD)), SamplerConfig(name=name, steps=steps,
                                                                            guidance_scale=1.0)))
        rows.append({"case": f"{name} {steps}", "sampler": name, "evaluations": steps,
                     "fd": round(frechet(real, images), 4), "seconds": round(time.perf_counter() - start, 2)})
    reference = rows[0]["fd"]
    for r in rows:
        r["fd_vs_ddpm1000"] = round(r["fd"] / reference, 3)
    within = [r for r in rows if r["evaluations"] <= 20 and r["fd"] <= 1.1 * reference]
    goal = {"real_vs_real_fd": round(frechet(real, ref), 4), "ddpm1000_fd": reference,
            "goal": "FD within 10% of DDPM-1000 with <= 20 evaluations",
            "met_by": [r["case"] for r in within], "goal_met": bool(within)}
    return rows, goal


def seconds_per_image(gen: Generator, batch: int, evaluations: int, guidance: float) -> float:
    """Wall seconds per image of `evaluations` guided denoiser calls plus the decode, for one batch."""
    x = torch.randn(batch, *gen.latent_shape)
    cond = torch.ones(batch, len(gen.schema.fields), dtype=torch.long)
    from synthfm.synth.diffusion.sampling import guided

    with torch.no_grad():
        guided(gen, x, torch.tensor(500), cond, guidance)  # warm-up
        start = time.perf_counter()
        guided(gen, x, torch.tensor(500), cond, guidance)
        step = time.perf_counter() - start
        start = time.perf_counter()
        gen.decode(x)
        decode = time.perf_counter() - start
    return (evaluations * step + decode) / batch


def cost() -> list[dict]:
    """Seconds per image at 64 px (pixel UNet) and 256 px (latent UNet + VAE), DPM-Solver++ 20, guidance 2."""
    from diffusers import AutoencoderKL

    from synthfm.synth.diffusion.conditions import CondField, ConditionSchema

    schema = ConditionSchema([CondField("dr_grade", "task", tuple("01234"))])
    unet = UNetConfig()
    sched = {"num_train_timesteps": 1000}
    rows = []
    pixel = Generator("pixel", ConditionalUNet(unet_kwargs(unet, 64, 3), [5]).eval(), sched, schema, 64, 3, "fundus")
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2).eval()
    latent = Generator("latent", nn.Identity(), sched, schema, 256, 3, "fundus", vae=vae)
    latent.model = ConditionalUNet(unet_kwargs(unet, 32, 4), [5]).eval()
    for label, gen, batch in (("64 px pixel UNet", pixel, 8), ("256 px latent UNet + VAE", latent, 2)):
        s = seconds_per_image(gen, batch, 20, 2.0)
        params = sum(p.numel() for p in gen.model.parameters()) / 1e6
        rows.append({"case": label, "params_m": round(params, 1), "batch": batch, "evaluations": 20,
                     "s_per_image": round(s, 3), "images_per_s": round(1 / s, 2),
                     "cpu_core_days_per_1m": round(s * 1e6 / 86400 * torch.get_num_threads(), 1),
                     "vs_retfound_de_3090": round(s / RETFOUND_DE_S_PER_IMAGE, 3)})
    return rows


def peak_memory(generator: Path, root: Path) -> list[dict]:
    """Max RSS of `generate` in a fresh process for growing N (shards of 64, DDIM 10 steps)."""
    rows = []
    for n in (64, 256, 1024):
        cfg = root / f"gen{n}.yaml"
        cfg.write_text(yaml.safe_dump({"generator": str(generator), "n": n, "shard_size": 64, "batch_size": 64,
                                       "sampler": {"name": "ddim", "steps": 10}}))
        code = ("import resource, sys; from synthfm.synth.diffusion.generate import main; main(sys.argv[1:]); "
                "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
        start = time.perf_counter()
        env = {**os.environ, "SYNTHFM_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
        out = subprocess.run([sys.executable, "-c", code, str(cfg), str(root / f"out{n}")], capture_output=True,
                             text=True, check=True, env=env)
        rows.append({"case": f"N={n}", "images": n, "peak_rss_mb": round(int(out.stdout.split()[-1]) / 1024, 1),
                     "seconds": round(time.perf_counter() - start, 1)})
    return rows


def main() -> None:
    """Run the three measurements and print one JSON document."""
    torch.manual_seed(0)
    torch.set_num_threads(1)  # a shared 2-core machine: one thread per process avoids oversubscription
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        generator, cards = train_generator(root)
        train_s = time.perf_counter() - start
        rows, goal = fidelity(load_generator(generator), cards)
        memory = peak_memory(generator, root)
    print(json.dumps({"benchmark": "sampling", "machine": f"{platform.machine()} {os.cpu_count()} cores",
                      "torch": torch.__version__, "results": rows, **goal, "train_seconds": round(train_s, 1),
                      "cost_per_image_cpu": cost(), "peak_memory_vs_n": memory,
                      "self_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                      "gpu": "no GPU in this session: fp16/bf16 batch sweep not measured"}, indent=1))


if __name__ == "__main__":
    main()
