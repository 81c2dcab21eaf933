"""The one-command demo on embedded phantom data: every stage that exists so far, cached and resumable.

Until the YAML pipeline runner lands, this is what `make demo` runs: render fundus and chest X-ray
phantoms into dataset cards, validate them, prepare the fundus set as WebDataset shards and stream it
through the loader, pretrain a tiny MAE on the phantom training split, then linear-probe DR grade with
that encoder and with a random-init one over seeds, and compare them with a paired t-test. Each step is
a run directory, so a second run reuses everything.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
from torch.utils.data import DataLoader

from synthfm.adapt.config import AdaptConfig
from synthfm.adapt.experiment import run_experiment
from synthfm.data.inspect import inspect_card
from synthfm.data.manifest import load_card
from synthfm.data.prepare import prepare_card
from synthfm.data.preprocess import PrepareConfig
from synthfm.data.readers import open_dataset
from synthfm.evaluate.results import compare
from synthfm.io import atomic_write_json
from synthfm.pretrain.config import pretrain_config
from synthfm.pretrain.engine import pretrain
from synthfm.synth.writer import PhantomConfig, render_phantom

PENDING_STAGES = ("quality", "analyze", "report", "pipeline runner")
BACKBONE = "vit_tiny_p8_64"


def _stream_rate(card: Path, size: int) -> dict[str, float]:
    """Images/s of one pass over a card through the training loader."""
    ds = open_dataset(load_card(card), "train", size=size, train=True)
    t0, n = time.perf_counter(), 0
    for batch in DataLoader(ds, batch_size=32):
        n += batch["image"].shape[0]
    return {"images": n, "images_per_s": round(n / (time.perf_counter() - t0), 1)}


def _pretrain(card: Path, out: Path, steps: int) -> Path:
    """A tiny MAE on the card's training split; returns the exported encoder folder."""
    cfg = pretrain_config({"recipe": "mae_vit_tiny_demo", "batch_size": 32, "log_every": 5,
                           "checkpoint_every": max(steps // 2, 1),
                           "stages": [{"name": "synthetic", "steps": steps,
                                       "sources": [{"source": str(card), "split": "train"}]}]}, "demo")
    pretrain(cfg, out)
    return out / "encoder"


def _probe(card: Path, encoder: str, out: Path, seeds: list[int]) -> pd.DataFrame:
    """Linear-probe DR grade over seeds; return the tidy results."""
    cfg = AdaptConfig(card=str(card), task="dr_grade", encoder=encoder, policy="linear_probe", image_size=64,
                      epochs=20, warmup_epochs=2, lr=5e-3, seeds=seeds)
    return run_experiment(cfg, out)


def verdict(table: pd.DataFrame) -> str:
    """One plain sentence on whether pretraining beat random init (paired t-test, Holm)."""
    row = table.iloc[0]
    better = row["mean_diff"] > 0 and bool(row["significant"])
    worse = row["mean_diff"] < 0 and bool(row["significant"])
    word = "helped" if better else "hurt" if worse else "did not make a significant difference"
    return (f"On phantom DR grade, MAE pretraining {word}: linear-probe test AUROC {row['mean_a']:.3f} vs "
            f"{row['mean_b']:.3f} for random init over {int(row['n'])} seeds (paired t-test p={row['p']:.3g}, "
            f"Holm p={row['p_holm']:.3g}).")


def run_demo(out: str | Path, n: int = 240, size: int = 128, steps: int = 60,
             seeds: tuple[int, ...] = (0, 1, 2)) -> dict[str, Any]:
    """Run the demo into `out`; return (and write) its summary."""
    out = Path(out)
    t0 = time.perf_counter()
    fundus = render_phantom(out / "synth_fundus", PhantomConfig(n=n, size=size, seed=0))
    cxr = render_phantom(out / "synth_cxr", PhantomConfig(generator="cxr_phantom", n=max(n // 6, 12), size=size))
    shards = prepare_card(fundus, out / "data_fundus_shards",
                          PrepareConfig(size=size // 2, format="shards", encoding="raw", shard_size=64))
    reports = {name: inspect_card(card, sample=50) for name, card in
               (("fundus_phantom", fundus), ("cxr_phantom", cxr), ("fundus_shards", shards))}
    encoder = _pretrain(fundus, out / "pretrain_mae", steps)
    probes = {name: _probe(fundus, enc, out / f"adapt_{name}", list(seeds))
              for name, enc in (("mae", str(encoder)), ("random", f"random:{BACKBONE}"))}
    table = compare(probes["mae"], probes["random"], metric="auroc", split="test")
    summary = {
        "verdict": verdict(table),
        "comparison": table.to_dict("records"),
        "cards": {"fundus_phantom": str(fundus), "cxr_phantom": str(cxr), "fundus_shards": str(shards)},
        "counts": {k: {"rows": r.rows, "splits": r.splits, "errors": len(r.errors)} for k, r in reports.items()},
        "labels": reports["fundus_phantom"].labels,
        "loader": _stream_rate(shards, size // 2),
        "pending_stages": list(PENDING_STAGES),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    atomic_write_json(out / "demo_summary.json", summary)
    return summary
