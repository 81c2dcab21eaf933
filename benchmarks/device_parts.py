"""The measured parts of `benchmarks/device_check.sh`, one per call, each printing one JSON document.

    python benchmarks/device_parts.py env|mae|generator|realdata [--smoke] [--work DIR] [--minutes M] [--backbone B]

env        torch / CUDA / card, the card's published bf16 peak, a measured bf16 matmul FLOP/s.
mae        MAE step throughput (ViT-B/16 or ViT-L/16 at 224 px, the paper's 8 x 512 decoder, bf16): the engine vs a
           plain eager bf16-autocast loop, images/s and share of the card's bf16 peak (ViT-Ti at 32 px: the
           per-step overhead).
generator  diffusion generator training images/s at 64 px (pixel UNet) and 256 px (latent UNet + VAE encode),
           sampling images/s with DPM-Solver++ at 20 evaluations and guidance 2, and GPU-days per million images
           beside RETFound-DE's ~81 (7 s per image on an RTX 3090).
realdata   a time-boxed real-data run at 64 px: a generator trained on RetinaMNIST's training split, a generated
           set, a ViT-S/8 MAE on generated + real images, then linear probes of it and of random init.
--smoke shrinks every size so the part runs in seconds on a CPU (numbers then mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("SYNTHFM_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
RETFOUND_DE_GPU_DAYS_PER_1M = 81  # ~7 s per image on one RTX 3090 (bench_sampling.py's source)
# Published dense bf16 peaks (no sparsity); matched against torch.cuda.get_device_name().
PEAKS_BF16 = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12), ("L40S", 362e12),
              ("V100", 125e12))


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], steps: int, warmup: int = 2) -> float:
    """Seconds per call after warm-up."""
    for _ in range(warmup):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return (time.perf_counter() - t0) / steps


def published_peak(name: str) -> float | None:
    """The card's published dense bf16 FLOP/s, or None for an unknown card (or a CPU)."""
    return next((peak for key, peak in PEAKS_BF16 if key.lower() in name.lower()), None)


def device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({platform.machine()})"


def autocast() -> Any:
    """bf16 autocast on CUDA; plain fp32 on a CPU (most have no native bf16)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if torch.cuda.is_available() else torch.autocast(
        "cpu", enabled=False)


# ---- env ------------------------------------------------------------------------------------------------------

def part_env(args: argparse.Namespace) -> dict[str, Any]:
    dev = device()
    n = 256 if args.smoke else 8192
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
    matmul = 2 * n**3 / timed(lambda: a @ b, 3 if args.smoke else 20)
    out = {"name": device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cuda_available": torch.cuda.is_available(), "python": platform.python_version(),
           "cpu_count": os.cpu_count(), "published_bf16_peak_flops": published_peak(device_name()),
           f"matmul_{'bf16' if dtype == torch.bfloat16 else 'fp32'}_{n}_flops_per_s": matmul}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out.update({"memory_bytes": props.total_memory, "capability": f"{props.major}.{props.minor}",
                    "bf16_supported": torch.cuda.is_bf16_supported(), "multiprocessors": props.multi_processor_count})
    return out


# ---- mae ------------------------------------------------------------------------------------------------------

MAE_SIZES = {"vit_tiny_p8_64": (32, 8), "vit_base_p16_224": (224, 256), "vit_large_p16_224": (224, 128)}


def part_mae(args: argparse.Namespace) -> dict[str, Any]:
    """The engine's MAE step vs a plain eager loop of the same model and batch, both bf16 autocast on CUDA.

    The decoder is the MAE paper's (8 blocks, 512 wide, 16 heads; 1 x 32 for the tiny per-step-overhead case);
    rounds alternate engine and eager, and each keeps its best round.
    """
    import tempfile

    from synthfm.pretrain.config import pretrain_config
    from synthfm.pretrain.engine import Engine
    from synthfm.pretrain.mae import build_mae

    tiny = args.backbone == "vit_tiny_p8_64" or args.smoke
    backbone = "vit_tiny_p8_64" if args.smoke else args.backbone
    size, batch = (32, 4) if args.smoke else MAE_SIZES[backbone]
    cuda = torch.cuda.is_available()
    cfg = pretrain_config({
        "recipe": "mae_vit_tiny_demo", "backbone": backbone, "image_size": size, "batch_size": batch,
        "backbone_overrides": {"depth": 2} if tiny else {}, "mixed_precision": "bf16" if cuda else "no",
        "mae": {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2} if tiny else
        {"decoder_dim": 512, "decoder_depth": 8, "decoder_heads": 16},
        "optim": {"lr": 1e-4}, "stages": [{"name": "bench", "sources": [{"source": "rasd"}], "steps": 1}]})
    steps, warmup, rounds = (1, 0, 1) if args.smoke else (10, 3, 2)
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(cfg, tmp)
        dev = engine.acc.device
        imgs = torch.randn(batch, cfg.in_chans, size, size, device=dev)
        engine.set_lr(1e-4)
        torch.manual_seed(cfg.seed)
        model = build_mae(cfg).model.to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05, fused=cuda)

        def eager() -> None:
            with autocast():
                loss = model(imgs)[0]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        engine_s, eager_s = [], []
        for _ in range(rounds):
            engine_s.append(timed(lambda: engine.train_step([{"image": imgs}]), steps, warmup))
            eager_s.append(timed(eager, steps, warmup))
    counter = FlopCounterMode(display=False)
    with counter:
        model(imgs)[0].backward()
    flops, peak = counter.get_total_flops(), published_peak(device_name())
    t_engine, t_eager = min(engine_s), min(eager_s)
    return {"backbone": backbone, "image_size": size, "batch": batch, "mixed_precision": cfg.mixed_precision,
            "decoder": f"{cfg.mae.decoder_depth} x {cfg.mae.decoder_dim}", "engine_images_per_s": batch / t_engine,
            "eager_images_per_s": batch / t_eager, "engine_over_eager": t_eager / t_engine,
            "flops_per_step": flops, "seconds_per_step": t_engine,
            "engine_fraction_of_bf16_peak": flops / t_engine / peak if peak else None,
            "eager_fraction_of_bf16_peak": flops / t_eager / peak if peak else None,
            "rounds_engine_s": [round(t, 4) for t in engine_s], "rounds_eager_s": [round(t, 4) for t in eager_s]}


# ---- generator ------------------------------------------------------------------------------------------------

def _unet(size: int, chans: int, smoke: bool) -> torch.nn.Module:
    from synthfm.synth.diffusion.config import UNetConfig
    from synthfm.synth.diffusion.model import ConditionalUNet, unet_kwargs

    cfg = UNetConfig(block_out_channels=(16, 32), attention=(False, True), norm_num_groups=8) if smoke \
        else UNetConfig()  # the default: (64, 128, 256, 256), attention at level 3, 2 layers per block
    return ConditionalUNet(unet_kwargs(cfg, size, chans), [5]).to(device())


def _vae(smoke: bool) -> torch.nn.Module:
    """An SD-shaped AutoencoderKL (8x down, 4 latent channels), random weights: cost, not quality."""
    from diffusers import AutoencoderKL

    blocks = (32, 32) if smoke else (128, 256, 512, 512)
    return AutoencoderKL(block_out_channels=blocks, down_block_types=("DownEncoderBlock2D",) * len(blocks),
                         up_block_types=("UpDecoderBlock2D",) * len(blocks), latent_channels=4, layers_per_block=2,
                         norm_num_groups=32).to(device()).eval()


def _train_rate(model: torch.nn.Module, x: torch.Tensor, steps: int,
                encode: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, Any]:
    """images/s of an epsilon-prediction step (AdamW, bf16 autocast on CUDA), its FLOPs and share of peak."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=1000)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=torch.cuda.is_available())
    cond = torch.ones(x.shape[0], 1, dtype=torch.long, device=x.device)

    def step() -> None:
        with torch.no_grad(), autocast():
            z = encode(x) if encode is not None else x
        noise = torch.randn_like(z)
        t = torch.randint(0, 1000, (z.shape[0],), device=z.device)
        with autocast():
            loss = torch.nn.functional.mse_loss(model(sched.add_noise(z, noise, t), t, cond).float(), noise.float())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    s = timed(step, steps)
    flops = counter.get_total_flops()
    peak = published_peak(device_name())
    return {"batch": x.shape[0], "images_per_s": x.shape[0] / s, "flops_per_step": flops,
            "fraction_of_peak": flops / s / peak if peak else None,
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1)}


def _sample_rate(gen: Any, batch: int, evaluations: int) -> dict[str, Any]:
    """images/s of DPM-Solver++ at `evaluations` steps, guidance 2 (both halves in one call), decode included."""
    from synthfm.synth.diffusion.config import SamplerConfig
    from synthfm.synth.diffusion.sampling import sample

    cond = torch.ones(batch, len(gen.schema.fields), dtype=torch.long, device=device())
    sampler = SamplerConfig(name="dpmpp", steps=evaluations, guidance_scale=2.0)
    with autocast():
        s = timed(lambda: sample(gen, cond, list(range(batch)), sampler), 1 if batch <= 4 else 2, warmup=1)
    ips = batch / s
    return {"batch": batch, "evaluations": evaluations, "guidance": 2.0, "images_per_s": ips,
            "gpu_days_per_1m_images": 1e6 / ips / 86400, "retfound_de_gpu_days_per_1m": RETFOUND_DE_GPU_DAYS_PER_1M}


def part_generator(args: argparse.Namespace) -> dict[str, Any]:
    from synthfm.synth.diffusion.conditions import CondField, ConditionSchema
    from synthfm.synth.diffusion.generator import Generator

    smoke, dev = args.smoke, device()
    pix, lat = (16, 32) if smoke else (64, 256)
    batch, steps = (4, 2) if smoke else (64, 10)
    out: dict[str, Any] = {"sizes": {"pixel": pix, "latent_image": lat}}
    unet = _unet(pix, 3, smoke)
    out["train_pixel"] = _train_rate(unet, torch.randn(batch, 3, pix, pix, device=dev), steps)
    vae = _vae(smoke)
    latent_unet = _unet(lat // 8, 4, smoke)
    out["train_latent"] = _train_rate(latent_unet, torch.randn(batch, 3, lat, lat, device=dev), steps,
                                      encode=lambda x: vae.encode(x).latent_dist.sample() * 0.18215)
    schema = ConditionSchema([CondField("dr_grade", "task", tuple("01234"))])
    sched = {"num_train_timesteps": 1000}
    pixel = Generator("pixel", unet.eval(), sched, schema, pix, 3, "fundus")
    latent = Generator("latent", latent_unet.eval(), sched, schema, lat, 3, "fundus", vae=vae)
    evals = 3 if smoke else 20
    out["sample_pixel"] = _sample_rate(pixel, 4 if smoke else 256, evals)
    out["sample_latent"] = _sample_rate(latent, 2 if smoke else 32, evals)
    return out


# ---- realdata -------------------------------------------------------------------------------------------------

def _engine(cfg: dict[str, Any], out: Path, seconds: float) -> dict[str, Any]:
    """Train through the engine in its own process for at most `seconds`, then kill -9 and export the latest
    checkpoint (the engine resumes and exports exactly from its checkpoints). A run that ends first (--smoke: a
    few steps) exports as usual."""
    from synthfm.pretrain.engine import checkpoint_dirs, export_encoder

    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(cfg))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "synthfm", "pretrain", "run", str(path), "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        grace = time.perf_counter() + seconds / 2  # slower than expected: wait a little for a first checkpoint
        while not checkpoint_dirs(out) and proc.poll() is None and time.perf_counter() < grace:
            time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    wall = time.perf_counter() - t0
    found = checkpoint_dirs(out)
    if not found:
        raise RuntimeError(f"no checkpoint after {wall:.0f} s: {proc.stderr.read().decode()[-1500:]}")
    state = json.loads((found[-1] / "state.json").read_text())
    exported = export_encoder(out, out / "export")
    return {"seconds": round(wall, 1), "steps": state["global_step"], "export": str(exported),
            "finished": proc.returncode == 0}


def _real_card(work: Path, smoke: bool) -> tuple[str, str]:
    """RetinaMNIST's card when its data are here ($SYNTHFM_DATA, ../shared/data or runs/data), else a phantom."""
    from synthfm.data.manifest import load_card
    from synthfm.synth.writer import PhantomConfig, render_phantom

    card = REPO / "configs" / "cards" / "retinamnist.yaml"
    for root in (os.environ.get("SYNTHFM_DATA"), REPO.parent / "shared" / "data", REPO / "runs" / "data"):
        if root and (Path(root) / "retinamnist" / "retinamnist.npz").is_file():
            os.environ["SYNTHFM_DATA"] = str(Path(root).resolve())
            load_card(card)
            return str(card), f"RetinaMNIST from {root}"
    path = render_phantom(work / "phantom", PhantomConfig(n=120 if smoke else 1600, size=64, seed=0))
    return str(path), "fundus phantom: RetinaMNIST not found (set SYNTHFM_DATA or carry runs/data/retinamnist)"


def part_realdata(args: argparse.Namespace) -> dict[str, Any]:
    from synthfm.adapt.config import AdaptConfig
    from synthfm.adapt.experiment import run_experiment
    from synthfm.synth.diffusion.config import GenerateConfig
    from synthfm.synth.diffusion.generate import generate

    smoke, work = args.smoke, Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    budget = 600 if smoke else args.minutes * 60  # --smoke: a few steps, not a time box
    steps = 4 if smoke else 10**6
    size = 16 if smoke else 64
    bf16 = "bf16" if torch.cuda.is_available() else "no"
    card, data = _real_card(work, smoke)
    out: dict[str, Any] = {"data": data, "image_size": size, "minutes": args.minutes}
    unet = {"block_out_channels": [16, 32], "attention": [False, True], "norm_num_groups": 8} if smoke else \
        {}  # the default UNet: (64, 128, 256, 256), attention at level 3
    gen_cfg = {"objective": "diffusion", "image_size": size, "batch_size": 8 if smoke else 128,
               "mixed_precision": bf16, "checkpoint_every": 2 if smoke else 100, "log_every": 50,
               "diffusion": {"conditions": ["dr_grade"], "unet": unet, "ema_decay": 0.999},
               "optim": {"lr": 2e-4 if not smoke else 1e-3, "warmup_steps": 100 if not smoke else 1,
                         "weight_decay": 0.0},
               "stages": [{"name": "main", "steps": steps, "sources": [{"source": card, "split": "train"}]}]}
    out["generator"] = _engine(gen_cfg, work / "generator", 0.35 * budget)
    t0 = time.perf_counter()
    n = 64 if smoke else 2160
    gen_out = work / "synthetic"
    generate(GenerateConfig(generator=out["generator"]["export"], n=n, batch_size=32 if smoke else 540,
                            shard_size=n, encoding="raw", sampler={"name": "dpmpp", "steps": 3 if smoke else 20},
                            target={"card": card, "split": "train"},
                            dtype="bfloat16" if torch.cuda.is_available() else "float32"), gen_out)
    out["generate"] = {"images": n, "seconds": round(time.perf_counter() - t0, 1)}
    mae_cfg = {"recipe": "mae_vit_tiny_demo", "backbone": "vit_small_p16_224", "image_size": size,
               "backbone_overrides": {"img_size": size, "patch_size": 8, **({"depth": 2} if smoke else {})},
               "mae": {"decoder_dim": 256, "decoder_depth": 4, "decoder_heads": 8}, "batch_size": 8 if smoke else 256,
               "mixed_precision": bf16, "checkpoint_every": 2 if smoke else 100, "log_every": 50,
               "optim": {"base_lr": 1.5e-4, "warmup_steps": 1 if smoke else 200},
               "stages": [{"name": "main", "steps": steps,
                           "sources": [{"source": str(gen_out / "dataset.yaml")}, {"source": card, "split": "train"}]}]}
    out["mae"] = _engine(mae_cfg, work / "mae", 0.4 * budget)
    out["mae"]["images_seen"] = out["mae"]["steps"] * mae_cfg["batch_size"]
    probe = {"card": card, "task": "dr_grade", "policy": "linear_probe", "image_size": size,
             "epochs": 2 if smoke else 30, "warmup_epochs": 0 if smoke else 3, "lr": 5e-3, "seeds": [0],
             "label_fractions": [1.0], "mixed_precision": bf16}
    out["probe"] = {}
    for name, encoder, extra in (("mae", out["mae"]["export"], {}),
                                 ("random_init", "random:vit_small_p16_224",
                                  {"backbone_overrides": mae_cfg["backbone_overrides"]})):
        t0 = time.perf_counter()
        res = run_experiment(AdaptConfig(**probe, encoder=encoder, **extra), work / f"probe_{name}")
        test = res[(res["split"] == "test")]
        out["probe"][name] = {**{m: float(test[test["metric"] == m]["value"].mean()) for m in ("auroc", "accuracy")},
                              "seconds": round(time.perf_counter() - t0, 1)}
    return out


PARTS = {"env": part_env, "mae": part_mae, "generator": part_generator, "realdata": part_realdata}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=sorted(PARTS))
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--work", default="runs/device_check")
    parser.add_argument("--minutes", type=float, default=2.0, help="realdata: wall-clock budget of its training")
    parser.add_argument("--backbone", default="vit_base_p16_224", choices=sorted(MAE_SIZES), help="mae: encoder")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(json.dumps(PARTS[args.part](args), indent=1, default=str))


if __name__ == "__main__":
    main()
