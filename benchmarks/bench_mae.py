"""MAE training-step throughput: our engine's step vs a plain eager PyTorch loop of the same model and batch.

Prints JSON: images/s of both, their ratio, the model FLOPs per step (torch.utils.flop_counter, forward +
backward), the achieved FLOP/s of each, and that divided by a measured dense matmul FLOP/s on the same device.
Also times plain-loop variants (fused AdamW, bf16 autocast, channels-last, torch.compile) as "variants".
Usage: python benchmarks/bench_mae.py [--backbone vit_tiny_p8_64] [--image-size 64] [--batch 32] [--steps 5]
       [--rounds 3] [--mixed-precision bf16] [--compile]
       [--variants fused_adamw,bf16_autocast,channels_last,compile,compile_bf16_fused]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from synthfm.pretrain.config import pretrain_config
from synthfm.pretrain.engine import Engine
from synthfm.pretrain.mae import build_mae

os.environ.setdefault("SYNTHFM_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def cpu_bf16() -> list[str]:
    """The native bf16 instruction sets this CPU reports (bf16 autocast is slow without them)."""
    cpuinfo = Path("/proc/cpuinfo")
    flags = set(cpuinfo.read_text().split()) if cpuinfo.is_file() else set()
    return sorted(flags & {"avx512_bf16", "amx_bf16"})


def sync(device: torch.device) -> None:
    """Wait for queued device work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[], None], steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per call of `step`, after `warmup` untimed calls."""
    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - t0) / steps


def matmul_flops(device: torch.device, dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    """Measured FLOP/s of an n x n matrix product."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / timed(lambda: a @ b, reps, 2, device)


def step_flops(model: torch.nn.Module, imgs: torch.Tensor) -> int:
    """FLOPs of one forward + backward of the MAE loss."""
    with FlopCounterMode(display=False) as counter:
        model(imgs)[0].backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


# Speed-up candidates for a plain loop of the same model: name -> options of `variant_step`.
VARIANTS: dict[str, dict[str, bool]] = {
    "fused_adamw": {"fused": True},
    "bf16_autocast": {"bf16": True},
    "channels_last": {"channels_last": True},
    "compile": {"compile": True},
    "compile_bf16_fused": {"compile": True, "bf16": True, "fused": True},
}


def variant_step(cfg: object, imgs: torch.Tensor, fused: bool = False, bf16: bool = False,
                 channels_last: bool = False, compile: bool = False) -> Callable[[], None]:
    """A plain training step of a fresh MAE with the given speed-up options."""
    torch.manual_seed(0)
    model = build_mae(cfg).model.to(imgs.device)
    if channels_last:
        model, imgs = model.to(memory_format=torch.channels_last), imgs.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05, fused=fused)
    forward = torch.compile(model) if compile else model

    def step() -> None:
        """Forward (autocast if bf16), backward, step, zero."""
        with torch.autocast(imgs.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = forward(imgs)[0]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def run_variants(names: list[str], cfg: object, imgs: torch.Tensor, args: argparse.Namespace,
                 t_eager: float) -> dict[str, dict[str, float]]:
    """images/s of each variant and its speed over the plain eager loop (compile warms up 2 extra steps)."""
    out = {}
    for name in names:
        opts = VARIANTS[name]
        t = timed(variant_step(cfg, imgs, **opts), args.steps, args.warmup + 2 * opts.get("compile", False),
                  imgs.device)
        out[name] = {"images_per_s": args.batch / t, "over_eager": t_eager / t}
    return out


def config(args: argparse.Namespace) -> dict:
    """A single-stage MAE config for the chosen backbone and batch (data is not used: batches are fixed)."""
    return {"recipe": "mae_vit_tiny_demo", "backbone": args.backbone, "image_size": args.image_size,
            "batch_size": args.batch, "mixed_precision": args.mixed_precision, "compile": args.compile,
            "mae": {"decoder_dim": args.decoder_dim, "decoder_depth": args.decoder_depth, "decoder_heads": 4},
            "optim": {"lr": 1e-4}, "stages": [{"name": "bench", "sources": [{"source": "rasd"}], "steps": 1}]}


def main() -> None:
    """Run both loops and print the JSON report."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="vit_tiny_p8_64")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--decoder-dim", type=int, default=128)
    p.add_argument("--decoder-depth", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3, help="alternating engine / eager rounds; the best of each")
    p.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    p.add_argument("--compile", action="store_true", help="the engine compiles its step (config key compile)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated VARIANTS to time ('' for none)")
    args = p.parse_args()
    load_start = round(os.getloadavg()[0], 2)  # other jobs on the machine: ratios above ~1 core are noise
    cfg = pretrain_config(config(args))
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(cfg, tmp)
        device = engine.acc.device
        imgs = torch.randn(args.batch, cfg.in_chans, args.image_size, args.image_size, device=device)
        engine.set_lr(1e-4)
        torch.manual_seed(cfg.seed)
        model = build_mae(cfg).model.to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)

        def eager_step() -> None:
            """Plain loop: forward, backward, step, zero."""
            model(imgs)[0].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        # Alternate the two loops for --rounds rounds and keep each one's best round, so that neither gains
        # from running second (allocator and clock warm-up) or loses to a burst of other work on the machine.
        engine_s, eager_s = [], []
        for r in range(args.rounds):
            warmup = args.warmup + 2 * args.compile * (r == 0)  # compiling takes the first steps
            engine_s.append(timed(lambda: engine.train_step([{"image": imgs}]), args.steps, warmup, device))
            eager_s.append(timed(eager_step, args.steps, args.warmup, device))
        t_engine, t_eager = min(engine_s), min(eager_s)

    flops = step_flops(model, imgs)
    peak = matmul_flops(device, torch.float32)
    report = {
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "cpu": platform.processor() or platform.machine(), "cpu_native_bf16": cpu_bf16(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__, "load_average_1m_start_end": [load_start, round(os.getloadavg()[0], 2)],
        "backbone": args.backbone, "image_size": args.image_size, "batch": args.batch,
        "mixed_precision": args.mixed_precision, "compile": args.compile,
        "engine_images_per_s": args.batch / t_engine, "eager_images_per_s": args.batch / t_eager,
        "engine_over_eager": t_eager / t_engine, "rounds": args.rounds,
        "engine_images_per_s_rounds": [round(args.batch / t, 1) for t in engine_s],
        "eager_images_per_s_rounds": [round(args.batch / t, 1) for t in eager_s],
        "flops_per_step": flops, "matmul_fp32_flops_per_s": peak,
        "engine_flops_per_s": flops / t_engine, "eager_flops_per_s": flops / t_eager,
        "engine_fraction_of_matmul": flops / t_engine / peak, "eager_fraction_of_matmul": flops / t_eager / peak,
        "variants": run_variants([v for v in args.variants.split(",") if v], cfg, imgs, args, t_eager),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
