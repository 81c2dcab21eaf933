"""The one-command demo on embedded phantom data: every stage that exists so far, cached and resumable.

Until the YAML pipeline runner lands, this is what `make demo` runs: render fundus and chest X-ray
phantoms into dataset cards, validate them, prepare the fundus set as WebDataset shards, and stream
it through the loader. Each step is a run directory, so a second run reuses everything.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from synthfm.data.inspect import inspect_card
from synthfm.data.manifest import load_card
from synthfm.data.prepare import prepare_card
from synthfm.data.preprocess import PrepareConfig
from synthfm.data.readers import open_dataset
from synthfm.io import atomic_write_json
from synthfm.synth.writer import PhantomConfig, render_phantom

PENDING_STAGES = ("quality", "pretrain", "adapt", "evaluate", "analyze", "report")


def _stream_rate(card: Path, size: int) -> dict[str, float]:
    """Images/s of one pass over a card through the training loader."""
    ds = open_dataset(load_card(card), "train", size=size, train=True)
    t0, n = time.perf_counter(), 0
    for batch in DataLoader(ds, batch_size=32):
        n += batch["image"].shape[0]
    return {"images": n, "images_per_s": round(n / (time.perf_counter() - t0), 1)}


def run_demo(out: str | Path, n: int = 240, size: int = 128) -> dict[str, Any]:
    """Run the demo into `out`; return (and write) its summary."""
    out = Path(out)
    t0 = time.perf_counter()
    fundus = render_phantom(out / "synth_fundus", PhantomConfig(n=n, size=size, seed=0))
    cxr = render_phantom(out / "synth_cxr", PhantomConfig(generator="cxr_phantom", n=max(n // 6, 12), size=size))
    shards = prepare_card(fundus, out / "data_fundus_shards",
                          PrepareConfig(size=size // 2, format="shards", encoding="raw", shard_size=64))
    reports = {name: inspect_card(card, sample=50) for name, card in
               (("fundus_phantom", fundus), ("cxr_phantom", cxr), ("fundus_shards", shards))}
    summary = {
        "cards": {"fundus_phantom": str(fundus), "cxr_phantom": str(cxr), "fundus_shards": str(shards)},
        "counts": {k: {"rows": r.rows, "splits": r.splits, "errors": len(r.errors)} for k, r in reports.items()},
        "labels": reports["fundus_phantom"].labels,
        "loader": _stream_rate(shards, size // 2),
        "pending_stages": list(PENDING_STAGES),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    atomic_write_json(out / "demo_summary.json", summary)
    return summary
