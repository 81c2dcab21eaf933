"""Loader throughput: WebDataset shard stream vs a folder of PNGs read with PIL, in one run.

Prints JSON: images/s for each (size, workers, path), the shard/folder ratio, and a ViT-tiny
training step's images/s at the same size for the "can the loader feed training" comparison.
Usage: python benchmarks/bench_loader.py [--n 512] [--sizes 64 224] [--workers 0 2]
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


def main() -> None:
    """Run every configuration and print one JSON document."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    results = []
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
    print(json.dumps({"benchmark": "loader", "machine": f"{platform.machine()} {os.cpu_count()} cores",
                      "torch": torch.__version__, "results": results}, indent=2))


if __name__ == "__main__":
    main()
