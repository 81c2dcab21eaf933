"""Every readout of a linear probe run's frozen features: a linear probe per pooling and a k-NN per pooling.

A linear probe without augmentation computes its encoder's features once (trainer.cache_features keeps every
pooling the encoder offers). Here the same probe recipe (BatchNorm1d(affine=False) + Linear, same epochs, lr
schedule, seed and best-val-AUROC epoch) is trained on each other pooling, and a DINO k-NN (evaluate/knn.py)
with the run's training subset as memory bank is scored on the validation and test splits of each pooling.
The configured head's own metrics are the `linear:<its pooling>` entry, so nothing is trained twice.

The result, stored in the run's summary under `probes`, maps `<readout>:<pool>` (readout `linear` or `knn`) to
{split: {metric: value}}; `synthfm.evaluate.probes` turns it into the experiment's `probes` table and picks the
pooling on validation data.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, TensorDataset

from synthfm.adapt.config import AdaptConfig
from synthfm.data.card import read_card
from synthfm.evaluate.knn import knn_scores
from synthfm.evaluate.metrics import task_auroc, task_metrics
from synthfm.evaluate.predictions import STAGE
from synthfm.evaluate.probes import PROBES, probe_rows
from synthfm.evaluate.results import INTERNAL
from synthfm.locks import acquire, release
from synthfm.models.pooling import POOLS, pooled_dim, resolve_pool
from synthfm.runs import MARKER_FILE, read_header, read_run_config
from synthfm.train.classifier import build_head, lrd_param_groups
from synthfm.train.classifier_config import ClassifierConfig
from synthfm.train.trainer import ClassifierTrainer, epoch_seed, is_better

Metrics = dict[str, dict[str, float]]
RUN_KEYS = ("fraction", "seed", "repeat", "fold")  # a run's place in the experiment, from its summary


def probe_key(readout: str, pool: str) -> str:
    """The summary key of one readout on one pooling, e.g. 'linear:mean', 'knn:cls'."""
    return f"{readout}:{pool}"


def _splits(trainer: ClassifierTrainer) -> list[str]:
    """Validation split first, then the test splits."""
    return list(dict.fromkeys([trainer.cfg.val_split, *trainer.cfg.test_splits]))


def _pooled_sets(trainer: ClassifierTrainer, sets: dict[str, Dataset], pool: str) -> dict[str, TensorDataset]:
    """The cached (features of `pool`, targets, rows) of every split."""
    return {s: TensorDataset(trainer.pooled[s][pool], *sets[s].tensors[1:]) for s in sets}


def fit_linear(trainer: ClassifierTrainer, sets: dict[str, TensorDataset], dim: int) -> Metrics:
    """Train the run's probe recipe on other features; the best-val-AUROC epoch's metrics on every split."""
    cfg, val = trainer.cfg, trainer.cfg.val_split
    torch.manual_seed(trainer.seed)
    head = build_head(dim, trainer.task.num_outputs, probe=True).to(trainer.acc.device)
    optimizer = torch.optim.AdamW(lrd_param_groups(head, cfg.weight_decay, 1.0, trainer.depth), lr=0.0,
                                  betas=cfg.betas)
    kept = trainer.net, trainer.optimizer
    trainer.net, trainer.optimizer = head, optimizer  # a cached-feature head, stepped without Accelerate
    try:
        best, best_state = None, None
        for epoch in range(cfg.epochs):
            torch.manual_seed(epoch_seed(trainer.seed, epoch))
            trainer.train_epoch(sets["train"], epoch)
            auroc = task_auroc(trainer.task.type, *trainer.predict(sets[val])[1:])
            if is_better(auroc, best):
                best, best_state = auroc, copy.deepcopy(trainer.net.state_dict())
        trainer.net.load_state_dict(best_state)
        return {s: task_metrics(trainer.task.type, *trainer.predict(sets[s])[1:]) for s in _splits(trainer)}
    finally:
        trainer.net, trainer.optimizer = kept


def knn_metrics(trainer: ClassifierTrainer, sets: dict[str, TensorDataset]) -> Metrics:
    """k-NN scores of the validation and test splits against the training subset, and their metrics."""
    cfg, task = trainer.cfg.probes, trainer.task
    bank, bank_y = sets["train"].tensors[:2]
    out = {}
    for split in _splits(trainer):
        query, y = sets[split].tensors[:2]
        p = knn_scores(bank, bank_y, query, task.type, len(task.classes), cfg.knn_k, cfg.knn_temperature)
        out[split] = task_metrics(task.type, y.numpy(), p)
    return out


def run_probes(trainer: ClassifierTrainer, sets: dict[str, Dataset], metrics: Metrics) -> dict[str, Metrics]:
    """Linear probes on the other poolings and k-NN on every pooling; `metrics` are the configured head's."""
    cfg, encoder = trainer.cfg.probes, trainer.model.encoder
    own = trainer.model.pool or resolve_pool(encoder, None)
    out: dict[str, Metrics] = {probe_key("linear", own): metrics}
    for pool in trainer.pooled["train"]:
        pooled = _pooled_sets(trainer, sets, pool)
        if cfg.pools and pool != own:
            out[probe_key("linear", pool)] = fit_linear(trainer, pooled, pooled_dim(encoder, pool))
        if cfg.knn:
            out[probe_key("knn", pool)] = knn_metrics(trainer, pooled)
    return out


def wants_probes(cfg: ClassifierConfig) -> bool:
    """Whether a run scores the extra probes: a linear probe on cached features with pools or k-NN on."""
    return cfg.policy == "linear_probe" and not cfg.augments and (cfg.probes.pools or cfg.probes.knn)


def probe_heads(cfg: ClassifierConfig) -> int:
    """Linear heads a run trains (for the planner): the configured one, plus one per other pooling of a ViT."""
    return 1 + (len(POOLS) - 1 if wants_probes(cfg) and cfg.probes.pools else 0)


def probe_summary(trainer: ClassifierTrainer, sets: dict[str, Dataset], metrics: Metrics) -> dict[str, Any]:
    """The `probes` entry of a cached linear probe run's summary (empty when probes are off)."""
    return {"probes": run_probes(trainer, sets, metrics)} if wants_probes(trainer.cfg) else {}


def backfill_probes(run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """A run finished before probes existed gets them (one feature pass, the same recipe); its head is kept."""
    from synthfm.adapt.trainer import Trainer

    if read_header(run_dir).get("stage") != STAGE or "metrics" not in summary:
        return summary
    cfg = read_run_config(run_dir, AdaptConfig, STAGE)
    if not wants_probes(cfg):
        return summary
    lock = acquire(run_dir)
    try:
        trainer = Trainer(cfg, run_dir)
        summary = {**summary, **probe_summary(trainer, trainer.datasets(), summary["metrics"])}
        trainer.run.complete(**summary)  # the marker again, same config hash, now with the probes
    finally:
        release(lock)
    return summary


def missing_probes(cfg: AdaptConfig, out_dir: str | Path) -> bool:
    """Whether a finished experiment that should have probe tables lacks them (it predates them)."""
    return wants_probes(cfg) and not (Path(out_dir) / f"{PROBES}.parquet").is_file()


def collect_probes(cfg: AdaptConfig, out_dir: str | Path) -> list[dict[str, Any]]:
    """Tidy probe rows of every finished run under an experiment directory; a run that finished before probes
    existed is backfilled (backfill_probes), one with probes off adds none."""
    meta = {"experiment": Path(out_dir).name, "dataset": read_card(cfg.card)[0].name, "task": cfg.task,
            "policy": cfg.policy, "encoder": cfg.encoder}
    rows = []
    for marker in sorted(Path(out_dir).rglob(MARKER_FILE)):
        summary = json.loads(marker.read_text()).get("summary", {})
        if marker.parent == Path(out_dir):
            continue
        if "probes" not in summary:
            backfill_probes(marker.parent, summary)
            summary = json.loads(marker.read_text()).get("summary", {})  # as written, so rows keep one order
            if "probes" not in summary:
                continue
        run = {k: summary[k] for k in RUN_KEYS if k in summary}
        rows += probe_rows(summary["probes"], **meta, **run, eval_set=INTERNAL)
    return rows
