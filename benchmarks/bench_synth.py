"""Generator throughput on one core: fundus and CXR phantoms, RaSD 2D/3D, and the RaSD stream in a DataLoader.

Prints JSON: images/s (and ms/image) for each generator, each measured for at least --seconds
(after one warm-up call) with numpy/torch/OpenMP held to one thread; the RaSD stream goes through a
torch DataLoader with 0 and 2 worker processes (one thread each). Baselines in the same run:
`png_encode_256` is `synthfm.data.images.encode_png` of a 256 px RGB phantom image (the cost the
folder writer adds per image), and `numpy_random_256` is `rng.integers` filling a 256x256x3 uint8
array (a floor: the cost of producing a 256 px image at all). Phantoms use their default priors.
Usage: python benchmarks/bench_synth.py [--seconds 3] [--stream-n 2048]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from synthfm.data.images import encode_png  # noqa: E402
from synthfm.synth.cxr import CXRPhantom  # noqa: E402
from synthfm.synth.fundus import FundusPhantom  # noqa: E402
from synthfm.synth.rasd import RaSDConfig, RaSDStream, render_rasd  # noqa: E402


def per_second(make: Callable[[int], object], seconds: float, min_calls: int = 3) -> dict[str, float]:
    """Call make(0), make(1), ... for at least `seconds` (after a warm-up call); return the rate."""
    make(10**6)
    calls, t0 = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - t0 < seconds:
        make(calls)
        calls += 1
    elapsed = time.perf_counter() - t0
    return {"images_per_s": round(calls / elapsed, 2), "ms_per_image": round(1000 * elapsed / calls, 3), "n": calls}


def stream_per_second(cfg: RaSDConfig, n: int, workers: int, batch: int = 32) -> dict[str, float]:
    """Images/s of n RaSDStream samples through a DataLoader, worker start-up included."""
    loader = DataLoader(RaSDStream(cfg, seed=0, length=n), batch_size=batch, num_workers=workers)
    t0, seen = time.perf_counter(), 0
    for item in loader:
        seen += item["image"].shape[0]
    elapsed = time.perf_counter() - t0
    return {"images_per_s": round(seen / elapsed, 2), "ms_per_image": round(1000 * elapsed / seen, 3), "n": seen}


def main() -> None:
    """Run every measurement and print one JSON document."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0, help="minimum timing window per measurement")
    ap.add_argument("--stream-n", type=int, default=2048, help="RaSD stream samples per DataLoader run")
    args = ap.parse_args()
    torch.set_num_threads(1)
    fundus, cxr = FundusPhantom(), CXRPhantom()
    rng = np.random.default_rng(0)
    rasd2d, rasd3d = RaSDConfig(size=64), RaSDConfig(size=32, dims=3)
    png_image = fundus.generate({}, 0, 256).image
    jobs: dict[str, Callable[[int], object]] = {
        **{f"fundus_phantom_{s}": (lambda i, s=s: fundus.generate({}, i, s)) for s in (64, 256, 512)},
        "cxr_phantom_256": lambda i: cxr.generate({}, i, 256),
        "rasd_2d_64": lambda i: render_rasd(rasd2d, np.random.default_rng(i)),
        "rasd_3d_32": lambda i: render_rasd(rasd3d, np.random.default_rng(i)),
        "png_encode_256": lambda i: encode_png(png_image),
        "numpy_random_256": lambda i: rng.integers(0, 256, (256, 256, 3), dtype=np.uint8),
    }
    results = {name: per_second(job, args.seconds) for name, job in jobs.items()}
    for workers in (0, 2):
        results[f"rasd_stream_2d_64_workers{workers}"] = stream_per_second(rasd2d, args.stream_n, workers)
    png_ms = results["png_encode_256"]["ms_per_image"]
    ratios = {f"{k}_vs_png_encode_256": round(v["ms_per_image"] / png_ms, 2)
              for k, v in results.items() if k.startswith(("fundus", "cxr"))}
    print(json.dumps({
        "benchmark": "synth", "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "python": platform.python_version(), "torch": torch.__version__, "threads": 1,
        "baseline": "png_encode_256: encode_png of a 256 px RGB phantom image (the folder writer's per-image cost); "
                    "numpy_random_256: rng.integers for a 256x256x3 uint8 array",
        "results": results, "time_per_image_vs_png_encode": ratios,
    }, indent=2))


if __name__ == "__main__":
    main()
