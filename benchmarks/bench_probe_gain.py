"""Linear-probe gain of a short MAE pretraining over a random-init encoder, on a phantom fundus card (DR grade).

Renders (or reuses) a phantom fundus card, and for each seed pretrains the tiny MAE recipe (`mae_vit_tiny_demo`,
vit_tiny_p8_64, with any overrides given) on its train split for `--steps` optimiser steps, then extracts frozen
features (CLS token, mean of the patch tokens, and both concatenated; eval transform) of the train and test splits
and fits a standardised, class-balanced logistic regression on DR grade. The random-init encoder of a seed is that
seed's pretraining starting point. A logistic regression on 16x16 pixels is the reference. Prints JSON with
balanced accuracy and macro one-vs-rest AUROC per seed and feature, their means over seeds, and how many seeds the
pretrained encoder won; `--out` also writes it (docs/bench/probe_gain.json).
It is a benchmark, not a test: each seed's pretraining takes minutes on 2 CPU cores.
Usage: python benchmarks/bench_probe_gain.py [--n 1000] [--steps 60] [--batch 32] [--seeds 0,1,2] [--balanced]
       [--set mae.norm_pix_loss=false --set optim.base_lr=1e-3 ...] [--cache DIR] [--out FILE]
       [--save-encoder DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from synthfm.data.manifest import load_card
from synthfm.data.readers import open_dataset
from synthfm.models.checkpoint import save_pretrained
from synthfm.pretrain.config import PretrainConfig, deep_merge, pretrain_config
from synthfm.pretrain.engine import Engine
from synthfm.pretrain.mae import MAE_RECIPES, build_encoder
from synthfm.synth.writer import PhantomConfig, render_phantom

os.environ.setdefault("SYNTHFM_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
TASK = "dr_grade"
RECIPE = "mae_vit_tiny_demo"


def overrides(pairs: list[str]) -> dict[str, Any]:
    """`a.b=value` pairs (values parsed as YAML) as a nested mapping."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, value = pair.split("=", 1)
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out


def config(card: Path, args: argparse.Namespace, seed: int) -> PretrainConfig:
    """The tiny MAE recipe (with overrides) on the card's train split for a fixed number of steps."""
    base = {"recipe": RECIPE, "batch_size": args.batch, "seed": seed, "checkpoint_every": 10_000, "log_every": 10,
            "stages": [{"name": "main", "sources": [{"source": str(card), "split": "train"}], "steps": args.steps}]}
    return pretrain_config(deep_merge(base, overrides(args.set)))


@torch.no_grad()
def features(encoder: nn.Module, card: Path, split: str, size: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Frozen CLS / mean-patch / both features and 16x16-pixel baseline features of a split, with its DR grades."""
    data = load_card(card)
    ds = open_dataset(data, split, size=size, train=False)
    imgs = torch.stack([ds[i]["image"] for i in range(len(ds))])
    encoder.eval()
    tokens = torch.cat([encoder.forward_features(b) for b in imgs.split(128)])
    prefix = encoder.num_prefix_tokens
    cls, mean = tokens[:, 0].numpy(), tokens[:, prefix:].mean(1).numpy()
    feats = {"cls": cls, "mean": mean, "cls+mean": np.concatenate([cls, mean], 1),
             "pixels16": F.adaptive_avg_pool2d(imgs, 16).flatten(1).numpy()}
    return feats, data.labels[TASK][ds.rows]


def probe(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], seed: int) -> dict[str, float]:
    """Balanced accuracy and macro one-vs-rest AUROC on test of a standardised, class-balanced logistic regression."""
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, class_weight="balanced",
                                                             random_state=seed))
    clf.fit(*train)
    proba = clf.predict_proba(test[0])
    return {"balanced_accuracy": float(balanced_accuracy_score(test[1], clf.classes_[proba.argmax(1)])),
            "auroc": float(roc_auc_score(test[1], proba, multi_class="ovr", average="macro", labels=clf.classes_))}


def evaluate(encoder: nn.Module, card: Path, size: int, seed: int) -> dict[str, dict[str, float]]:
    """Probe scores per feature kind."""
    (tr, ytr), (te, yte) = (features(encoder, card, s, size) for s in ("train", "test"))
    return {k: probe((tr[k], ytr), (te[k], yte), seed) for k in tr}


def run_seed(card: Path, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Pretrain one seed and probe its random-init and pretrained encoders."""
    cfg = config(card, args, seed)
    torch.manual_seed(cfg.seed)  # the Engine's initial weights
    random_init = build_encoder(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(cfg, tmp)
        t0 = time.perf_counter()
        summary = engine.fit()
        seconds = time.perf_counter() - t0
        pretrained = engine.objective.encoder()
        if args.save_encoder and seed == int(args.seeds.split(",")[0]):
            save_pretrained(pretrained, args.save_encoder, source="benchmarks/bench_probe_gain.py", seed=seed,
                            steps=args.steps, card=str(card))
        losses = [round(r["loss"], 4) for r in engine.run.metrics() if "loss" in r]
    size = cfg.image_size or 64
    return {"seed": seed, "pretrain_s": round(seconds, 1), "mae_losses": losses, "final_loss": summary["final_loss"],
            "random_init": evaluate(random_init, card, size, seed), "mae": evaluate(pretrained, card, size, seed)}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over seeds and the number of seeds where MAE beat random init, per feature and metric."""
    out: dict[str, Any] = {}
    for kind in ("cls", "mean", "cls+mean"):
        for metric in ("balanced_accuracy", "auroc"):
            mae = np.array([r["mae"][kind][metric] for r in runs])
            rnd = np.array([r["random_init"][kind][metric] for r in runs])
            out[f"{kind}/{metric}"] = {"mae": round(float(mae.mean()), 4), "random_init": round(float(rnd.mean()), 4),
                                       "gain": round(float((mae - rnd).mean()), 4),
                                       "seeds_won": int((mae > rnd).sum()), "seeds": len(runs)}
    pixels = [r["random_init"]["pixels16"] for r in runs]
    out["pixels16"] = {m: round(float(np.mean([p[m] for p in pixels])), 4) for m in ("balanced_accuracy", "auroc")}
    return out


def main() -> None:
    """Pretrain per seed, probe both encoders, print (and write) the JSON report."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000, help="phantom images (70/10/20 train/val/test)")
    p.add_argument("--card-size", type=int, default=64, help="rendered phantom size")
    p.add_argument("--balanced", action="store_true", help="DR grades drawn uniformly (default: the phantom's "
                                                            "prevalence, 72%% grade 0)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seeds", default="0", help="comma-separated pretraining (and probe) seeds")
    p.add_argument("--set", action="append", default=[], help="config override KEY=VALUE (YAML value), repeatable")
    p.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "synthfm_probe_cache"))
    p.add_argument("--out", help="also write the JSON report here")
    p.add_argument("--save-encoder", help="save the first seed's pretrained encoder here (save_pretrained dir; "
                                         "bench_quality.py --fd-encoder uses it as a trained feature space)")
    args = p.parse_args()
    t0 = time.perf_counter()
    priors = {"dr_grade": [0.2] * 5} if args.balanced else {}
    card = render_phantom(Path(args.cache) / f"fundus_n{args.n}_s{args.card_size}_seed0{'_bal' if priors else ''}",
                          PhantomConfig(n=args.n, size=args.card_size, seed=0, priors=priors))
    t_render = time.perf_counter() - t0
    runs = [run_seed(card, args, int(s)) for s in args.seeds.split(",")]
    labels = load_card(card).labels[TASK]
    cfg = config(card, args, 0)
    summary = summarise(runs)
    rows = [{"features": k.split("/")[0], "metric": k.split("/")[1], **v} for k, v in summary.items() if "/" in k]
    report = {"benchmark": "probe_gain", "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
              "torch": torch.__version__, "results": rows, "task": TASK, "recipe": RECIPE,
              "recipe_values": MAE_RECIPES[RECIPE], "overrides": overrides(args.set),
              "backbone": cfg.backbone, "image_size": cfg.image_size, "mae": cfg.mae.model_dump(),
              "peak_lr": cfg.optim.lr or cfg.optim.base_lr * args.batch / 256,
              "n_images": args.n, "card_size": args.card_size,
              "dr_grade_priors": priors.get("dr_grade", "phantom default"),
              "class_counts": np.bincount(labels).tolist(),
              "steps": args.steps, "batch": args.batch, "threads": torch.get_num_threads(),
              "render_s": round(t_render, 1), "pixels16_baseline": summary["pixels16"], "runs": runs}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
