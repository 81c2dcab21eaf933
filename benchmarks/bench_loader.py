"""Loader throughput: WebDataset shard stream vs a folder of PNGs read with PIL, and the pretraining data path.

Prints JSON: images/s for each (size, workers, path), the shard/folder ratio, and a ViT-tiny
training step's images/s at the same size for the "can the loader feed training" comparison.
`pretrain_data` compares, at 32, 64 and 224 px (workers 0, batch 64), the pretraining data path before and after
batching: per-sample (PNG decode, seeded torchvision crop + flip under a reseeded torch RNG, one SeedSequence per
sample) vs batched (training-size raw-shard cache, counter-based seeds, one grid_sample crop per batch);
`seeding_per_batch_of_64` the seeding and MAE mask noise of a batch, per sample vs counter-based per batch.
At 32 px it also times the RetinaMNIST experiment's MAE arm step (configs/experiments/retinamnist.yaml)
and the data share of that step.
Usage: python benchmarks/bench_loader.py [--n 512] [--sizes 64 224] [--workers 0 2] [--pretrain-sizes 32 64 224]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from PIL import Image
from scipy import ndimage
from torch.utils.data import DataLoader

from synthfm.data.manifest import load_card
from synthfm.data.prepare import prepare_card
from synthfm.data.preprocess import PrepareConfig
from synthfm.data.readers import open_dataset
from synthfm.pretrain.config import SourceConfig, pretrain_config
from synthfm.pretrain.data import open_source
from synthfm.pretrain.engine import Engine
from synthfm.train.mixture import MixtureDataset, MixturePlan, PlanBatchSampler, collate, sample_seed, sample_seeds
from synthfm.train.rng import counter_uniform

os.environ.setdefault("SYNTHFM_PROGRESS", "0")


def make_folder_card(root: Path, n: int, size: int) -> Path:
    """A folder card of n smooth random RGB PNGs (compressible like photographs)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        noise = rng.normal(size=(size, size, 3))
        img = ndimage.gaussian_filter(noise, sigma=(size / 32, size / 32, 0))
        img = ((img - img.min()) / (np.ptp(img) + 1e-9) * 255).astype(np.uint8)
        p = f"img/{i:05d}.png"
        (root / "img").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / p)
        rows.append({"path": p, "y": i % 5, "split": "train"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    card = {"name": f"bench{size}", "modality": "fundus",
            "tasks": [{"name": "y", "type": "multiclass", "classes": list("abcde")}]}
    (root / "dataset.yaml").write_text(yaml.safe_dump(card))
    return root


def images_per_s(ds, workers: int, batch: int = 64, repeats: int = 2) -> float:
    """Images/s of iterating a DataLoader over the dataset (best of `repeats` passes)."""
    best = 0.0
    for _ in range(repeats):
        loader = DataLoader(ds, batch_size=batch, num_workers=workers, persistent_workers=False)
        t0, n = time.perf_counter(), 0
        for b in loader:
            n += b["image"].shape[0]
        best = max(best, n / (time.perf_counter() - t0))
    return best


def vit_tiny_step_images_per_s(size: int, batch: int = 64, steps: int = 3) -> float:
    """Images/s of a ViT-tiny forward+backward+AdamW step at `size` px on this machine."""
    import timm

    patch = 8 if size <= 64 else 16
    model = timm.create_model("vit_tiny_patch16_224", img_size=size, patch_size=patch, num_classes=5)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 5, (batch,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return batch * steps / (time.perf_counter() - t0)


def data_path_images_per_s(card: Path, size: int, batched: bool, cache: Path, batch: int = 64,
                            batches: int = 4) -> float:
    """Images/s of the pretraining data path over a card (first pass excluded: it fills the cache)."""
    src = open_source(SourceConfig(source=str(card)), size, 3, None if batched else (0.2, 1.0), cache)
    ds = MixtureDataset([src], seed=0, scale=(0.2, 1.0) if batched else None)
    plan = MixturePlan([len(src)], [1.0], 0)
    loader = DataLoader(ds, batch_sampler=PlanBatchSampler(plan, batch, 0, batches), collate_fn=collate)
    next(iter(loader))
    t0 = time.perf_counter()
    n = sum(b["image"].shape[0] for b in loader)
    return n / (time.perf_counter() - t0)


def seeding_ms(batch: int = 64, patches: int = 196, repeats: int = 20) -> dict[str, float]:
    """Milliseconds per batch of 64 to seed samples and draw MAE mask noise (64 x 196): before (a SeedSequence
    and a reseeded torch RNG per sample; a torch.Generator per sample) vs after (counter-based, per batch)."""
    seeds = torch.arange(batch) * 7919
    keys = [(0, i, 0) for i in range(batch)]

    def reseed_per_sample() -> None:
        for k in keys:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed(0, k))

    def noise_per_sample() -> torch.Tensor:
        return torch.stack([torch.rand(patches, generator=torch.Generator().manual_seed(int(s))) for s in seeds])

    cases = {"reseed_per_sample_ms": reseed_per_sample, "seeds_per_batch_ms": lambda: sample_seeds(0, keys),
             "mask_noise_generator_per_sample_ms": noise_per_sample,
             "mask_noise_counter_based_ms": lambda: counter_uniform(seeds, patches)}
    out = {}
    for name, fn in cases.items():
        fn()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        out[name] = round((time.perf_counter() - t0) / repeats * 1e3, 3)
    return out


def retinamnist_arm_step_img_s(card: Path, tmp: Path, steps: int = 6) -> dict[str, float]:
    """The RetinaMNIST experiment's MAE arm (ViT-Ti/8 at 32 px cut to 4 blocks, 2 x 128 decoder, batch 64) on a
    32 px card: images/s of whole engine steps and the data share of the step."""
    arm = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs/experiments/retinamnist.yaml").read_text())
    data = {k: v for k, v in arm["pretrain"]["on_phantom"].items() if k != "stages"}
    cfg = pretrain_config({**data, "cache_dir": str(tmp / "cache"),
                           "stages": [{"name": "s", "sources": [{"source": str(card)}], "steps": 1000}]})
    engine = Engine(cfg, tmp / "arm")
    engine.run.open()
    sp = engine.stage_plan(0)
    batches = engine.batches(sp, 0)
    engine.train_step([next(batches)])
    engine.phase_seconds = {}
    t0 = time.perf_counter()
    for _ in range(steps):
        with engine.phase("data"):
            b = next(batches)
        engine.train_step([b])
    seconds = time.perf_counter() - t0
    return {"arm_step_img_s": round(steps * cfg.batch_size / seconds, 1),
            "arm_data_fraction": round(engine.phase_seconds["data"] / seconds, 3)}


def main() -> None:
    """Run every configuration and print one JSON document."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--pretrain-sizes", type=int, nargs="*", default=[32, 64, 224])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_start = round(os.getloadavg()[0], 2)
    results, pretrain = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            folder = make_folder_card(Path(tmp) / f"f{size}", args.n, size)
            shards = {enc: prepare_card(folder, Path(tmp) / f"s{size}{enc}",
                                        PrepareConfig(size=size, fov_crop=False, format="shards", encoding=enc,
                                                      shard_size=128))
                      for enc in ("raw", "npy", "png")}
            cards = {"folder_png": load_card(folder)} | {f"shards_{e}": load_card(c) for e, c in shards.items()}
            step = vit_tiny_step_images_per_s(size)
            for workers in args.workers:
                row = {"size": size, "workers": workers, "n": args.n}
                for name, data in cards.items():
                    row[f"{name}_img_s"] = round(images_per_s(open_dataset(data), workers), 1)
                for enc in ("raw", "npy", "png"):
                    row[f"shards_{enc}_vs_folder"] = round(row[f"shards_{enc}_img_s"] / row["folder_png_img_s"], 2)
                row["vit_tiny_step_img_s"] = round(step, 1)
                row["shards_raw_vs_vit_tiny_step"] = round(row["shards_raw_img_s"] / step, 2)
                results.append(row)
        for size in args.pretrain_sizes:
            folder = make_folder_card(Path(tmp) / f"p{size}", min(args.n, 256), size)
            old = data_path_images_per_s(folder, size, False, Path(tmp) / "cache")
            new = data_path_images_per_s(folder, size, True, Path(tmp) / "cache")
            row = {"size": size, "per_sample_img_s": round(old, 1), "batched_img_s": round(new, 1),
                   "batched_over_per_sample": round(new / old, 2)}
            if size == 32:
                row |= retinamnist_arm_step_img_s(folder, Path(tmp) / "arm")
            pretrain.append(row)
    print(json.dumps({"benchmark": "loader", "machine": f"{platform.machine()} {os.cpu_count()} cores",
                      "torch": torch.__version__, "threads": args.threads,
                      "load_average_1m_start_end": [load_start, round(os.getloadavg()[0], 2)],
                      "seeding_per_batch_of_64": seeding_ms(), "pretrain_data": pretrain, "results": results},
                     indent=2))


if __name__ == "__main__":
    main()
