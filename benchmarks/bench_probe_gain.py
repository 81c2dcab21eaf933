"""Linear-probe gain of a short MAE pretraining over a random-init encoder, on a phantom fundus card (DR grade).

Renders (or reuses) a phantom fundus card, pretrains the tiny MAE recipe (vit_tiny_p8_64) on its train split
for `--steps` optimiser steps, then extracts frozen features (CLS token and mean of the patch tokens, eval
transform) for the train and test splits and fits a standardised logistic regression (balanced class weights)
on DR grade. The random-init encoder is the pretraining's own starting point (same seed). A logistic
regression on 16x16 pixels is reported as a reference. Prints JSON with balanced accuracies and timings.
It is a benchmark, not a test: the pretraining alone needs about a minute on 2 CPU cores.
Usage: python benchmarks/bench_probe_gain.py [--n 1000] [--steps 60] [--batch 32] [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from synthfm.data.manifest import load_card
from synthfm.data.readers import open_dataset
from synthfm.pretrain.config import PretrainConfig, pretrain_config
from synthfm.pretrain.engine import Engine
from synthfm.pretrain.mae import build_encoder
from synthfm.synth.writer import PhantomConfig, render_phantom

os.environ.setdefault("SYNTHFM_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
TASK = "dr_grade"


def config(card: Path, args: argparse.Namespace) -> PretrainConfig:
    """The tiny MAE recipe on the card's train split for a fixed number of steps."""
    return pretrain_config({"recipe": "mae_vit_tiny_demo", "batch_size": args.batch, "seed": args.seed,
                            "checkpoint_every": 10_000, "log_every": 10,
                            "stages": [{"name": "main", "sources": [{"source": str(card), "split": "train"}],
                                        "steps": args.steps}]})


@torch.no_grad()
def features(encoder: nn.Module, card: Path, split: str, size: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Frozen CLS / mean-patch features and 16x16-pixel baseline features of a split, with its DR grades."""
    data = load_card(card)
    ds = open_dataset(data, split, size=size, train=False)
    imgs = torch.stack([ds[i]["image"] for i in range(len(ds))])
    encoder.eval()
    tokens = torch.cat([encoder.forward_features(b) for b in imgs.split(128)])
    prefix = encoder.num_prefix_tokens
    feats = {"cls": tokens[:, 0].numpy(), "mean": tokens[:, prefix:].mean(1).numpy(),
             "pixels16": F.adaptive_avg_pool2d(imgs, 16).flatten(1).numpy()}
    return feats, data.labels[TASK][ds.rows]


def probe(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], seed: int) -> float:
    """Balanced accuracy on test of a standardised, class-balanced logistic regression fitted on train."""
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, class_weight="balanced",
                                                             random_state=seed))
    clf.fit(*train)
    return float(balanced_accuracy_score(test[1], clf.predict(test[0])))


def evaluate(encoder: nn.Module, card: Path, size: int, seed: int) -> dict[str, float]:
    """Probe balanced accuracy per feature kind."""
    (tr, ytr), (te, yte) = (features(encoder, card, s, size) for s in ("train", "test"))
    return {k: probe((tr[k], ytr), (te[k], yte), seed) for k in tr}


def main() -> None:
    """Pretrain, probe both encoders, print the JSON report."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000, help="phantom images (70/10/20 train/val/test)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "synthfm_probe_cache"))
    args = p.parse_args()
    t0 = time.perf_counter()
    card = render_phantom(Path(args.cache) / f"fundus_n{args.n}_s64_seed{args.seed}",
                          PhantomConfig(n=args.n, size=64, seed=args.seed))
    t_render = time.perf_counter() - t0
    cfg = config(card, args)
    torch.manual_seed(cfg.seed)  # the Engine's initial weights
    random_init = build_encoder(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(cfg, tmp)
        t1 = time.perf_counter()
        summary = engine.fit()
        t_pretrain = time.perf_counter() - t1
        pretrained = engine.objective.encoder()
        losses = [round(r["loss"], 4) for r in engine.run.metrics() if "loss" in r]
    size = cfg.image_size or 64
    scores = {"random_init": evaluate(random_init, card, size, args.seed),
              "mae": evaluate(pretrained, card, size, args.seed)}
    labels = load_card(card).labels[TASK]
    report = {"task": TASK, "n_images": args.n, "class_counts": np.bincount(labels).tolist(),
              "steps": args.steps, "batch": args.batch, "threads": torch.get_num_threads(),
              "render_s": round(t_render, 1), "pretrain_s": round(t_pretrain, 1), "mae_losses": losses,
              "final_loss": summary["final_loss"], "balanced_accuracy": scores,
              "gain": {k: scores["mae"][k] - scores["random_init"][k] for k in ("cls", "mean")}}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
