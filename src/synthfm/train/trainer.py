"""One classifier trainer with two freezing policies, fine-tuning and linear probing (train/classifier.py).

Without augmentation (its default) a linear probe's frozen-encoder features are computed once per run and cached
in the run directory. Warm-up + cosine per optimiser step (`lr_at`), AdamW, Accelerate for device and mixed
precision (one process). After every epoch the model is validated, the best-val-AUROC weights are saved
atomically and a checkpoint is written under a temporary name and renamed; the global RNG is reseeded from
(seed, epoch) at each epoch start, so a killed run resumes to the same result. `class_balance` (train/balance.py)
weights the loss or the sampling by class; `patience` stops after that many epochs without a better validation
AUROC.

The trainer sits below the stages: what it writes and how it scores come from the results contract it is given
(`Scoring`; the adaptation stage's is `synthfm.evaluate.predictions.SCORING`). The adaptation stage extends it
with cross-validation folds, external test cards and extra probes (`synthfm.adapt.trainer`); the gate's label
verifier and domain encoder use it as it is.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from synthfm import hardware
from synthfm.data.card import TaskSpec
from synthfm.data.manifest import CardData, load_card
from synthfm.data.readers import open_dataset
from synthfm.data.splits import label_fractions
from synthfm.data.tensor_loader import TensorLoader, loader_order
from synthfm.errors import SynthfmError
from synthfm.io import atomic_write_json, atomic_write_text
from synthfm.models.baselines import is_vit
from synthfm.models.checkpoint import load_state, save_pretrained, save_state
from synthfm.models.pooling import all_pools, available_pools, pool_features, resolve_pool
from synthfm.runs import METRICS_FILE, RunDir
from synthfm.train.balance import balanced_sampler, class_weights, integer_labels, weighted_loss
from synthfm.train.classifier import (
    Classifier,
    fit_image_size,
    input_size,
    load_encoder,
    lrd_param_groups,
    make_classifier,
    set_drop_path,
    task_loss,
    task_scores,
    vit_only_notes,
)
from synthfm.train.classifier_config import ClassifierConfig
from synthfm.train.optim import lr_at
from synthfm.train.state import torch_load

CHECKPOINTS = "checkpoints"
BEST_FILE = "best.safetensors"
FEATURES_FILE = "features.safetensors"
ENCODER_DIR = "encoder"
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
Metrics = dict[str, float]


class Scoring(Protocol):
    """What the trainer needs of a results contract: its run directories' stage name, metrics, a prediction writer."""

    stage: str

    def metrics(self, task_type: str, y: np.ndarray, p: np.ndarray) -> Metrics:
        """Metrics of scores `p` against targets `y` (the validation AUROC picks the best epoch)."""
        ...

    def write(self, path: Path, index: np.ndarray, y: np.ndarray, p: np.ndarray, task: TaskSpec,
              data: CardData) -> Metrics:
        """Write one split's per-image predictions; return their metrics."""
        ...


def train_positions(data: CardData, task: str, fraction: float, seed: int) -> np.ndarray:
    """Positions within the train split of a nested, patient-level, label-stratified fraction of it."""
    rows = data.indices("train")
    if fraction >= 1:
        return np.arange(len(rows))
    lab = data.labels[task][rows]
    strata = pd.Series(["".join(map(str, np.atleast_1d(v))) for v in lab])
    patients = data.patient_ids().iloc[rows].reset_index(drop=True)
    return np.flatnonzero(label_fractions(patients, strata, [fraction], seed)[fraction])


class TaskCollate:
    """Card samples -> (images, targets of one task (zeros when task is None), manifest rows)."""

    def __init__(self, task: str | None) -> None:
        self.task = task

    def __call__(self, samples: list[dict[str, Any]]) -> Batch:
        y = (torch.stack([s["labels"][self.task] for s in samples]) if self.task is not None
             else torch.zeros(len(samples)))
        return torch.stack([s["image"] for s in samples]), y, torch.tensor([s["index"] for s in samples])


def epoch_seed(seed: int, epoch: int) -> int:
    """The RNG seed of one epoch (shuffling, augmentation, drop path): a pure function of (seed, epoch)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint32)[0])


class ClassifierTrainer:
    """Trains one encoder on one card task for one (label fraction, seed), in its own run directory."""

    def __init__(self, cfg: ClassifierConfig, out_dir: str | Path, scoring: Scoring,
                 data: CardData | None = None) -> None:
        """`scoring`: the results contract; `data`: the card already loaded by the caller (else read here)."""
        if len(cfg.seeds) != 1 or len(cfg.label_fractions) != 1:
            raise SynthfmError("a Trainer runs one seed and one label fraction", "use cfg.single(fraction, seed)")
        self.cfg, self.seed, self.fraction = cfg, cfg.seeds[0], cfg.label_fractions[0]
        self.scoring = scoring
        self.run = RunDir(out_dir, scoring.stage, cfg)
        self.data = data if data is not None else load_card(cfg.card)
        self.task = self.data.card.task(cfg.task)
        self.acc = Accelerator(mixed_precision=hardware.checked_precision(cfg.mixed_precision))
        if self.acc.num_processes > 1:
            raise SynthfmError("adaptation runs in one process", "run it without 'accelerate launch' on several GPUs")
        self.model = self._build_model()
        self.size = input_size(self.model.encoder, cfg)
        self.cached = self.probe and not cfg.augments
        self.net: nn.Module = self.model.head if self.cached else self.model
        decay = 1.0 if self.probe or not self.vit else cfg.layer_decay
        optimizer = torch.optim.AdamW(lrd_param_groups(self.net, cfg.weight_decay, decay, self.depth),
                                      lr=0.0, betas=cfg.betas)
        self.model.to(self.acc.device)
        if self.cached:  # a head on cached fp32 features: no autocast or loss scaling, so no Accelerate wrapper
            self.optimizer = optimizer
        else:
            self.net, self.optimizer = self.acc.prepare(self.net, optimizer)

    @property
    def probe(self) -> bool:
        """Whether this is a linear probe."""
        return self.cfg.policy == "linear_probe"

    def _build_model(self) -> Classifier:
        """Encoder (seeded head init; drop path when fine-tuning) and the head for the task."""
        torch.manual_seed(self.seed)
        encoder = load_encoder(self.cfg, self.data.channels)
        if self.cfg.image_size:
            fit_image_size(encoder, self.cfg.image_size, self.cfg.encoder)
        self.vit = is_vit(encoder)
        self.depth = len(encoder.blocks) if self.vit else 0
        self.notes = vit_only_notes(self.cfg, encoder)
        if not self.probe and self.vit:
            set_drop_path(encoder, self.cfg.drop_path)
        return make_classifier(encoder, self.cfg, self.task.num_outputs)

    # ---- data -------------------------------------------------------------------------------------------
    def datasets(self) -> dict[str, Dataset]:
        """Train subset, validation and test datasets (cached feature tensors for a linear probe)."""
        sets, train_rows = self.image_datasets()
        self.balance_on(self.data.labels[self.task.name][train_rows])
        return self.cache_features(sets) if self.cached else sets

    def image_datasets(self) -> tuple[dict[str, Dataset], np.ndarray]:
        """Train (label fraction of the train split), validation and test datasets; the card rows trained on."""
        pos = train_positions(self.data, self.task.name, self.fraction, self.cfg.subset_seed)
        sets: dict[str, Dataset] = {
            "train": Subset(open_dataset(self.data, "train", size=self.size, train=self.cfg.augments), pos.tolist())}
        for split in dict.fromkeys([self.cfg.val_split, *self.cfg.test_splits]):
            sets[split] = open_dataset(self.data, split, size=self.size)
        return sets, self.data.indices("train")[pos]

    def loader(self, ds: Dataset, shuffle: bool = False, epoch: int = 0,
               labels: bool = True) -> DataLoader | TensorLoader:
        """A loader over (x, y, index) batches (y zeros without `labels`); order depends only on (seed, epoch).

        Cached features (a TensorDataset) are sliced batch-wise by a TensorLoader in the same order."""
        drop = shuffle and len(ds) > self.cfg.batch_size  # no size-1 last batch for BatchNorm
        sampler = (balanced_sampler(self.train_classes, len(self.task.classes), epoch_seed(self.seed, epoch))
                   if shuffle and self.cfg.class_balance == "sampler" else None)
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        if isinstance(ds, TensorDataset):
            return TensorLoader(ds, self.cfg.batch_size, loader_order(len(ds), shuffle, sampler, generator), drop)
        return DataLoader(ds, batch_size=self.cfg.batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                          drop_last=drop, collate_fn=TaskCollate(self.task.name if labels else None),
                          num_workers=self.cfg.num_workers, generator=generator)

    def balance_on(self, train_labels: np.ndarray) -> None:
        """Class indices and balanced class weights of the training subset, when class_balance asks for them."""
        if self.cfg.class_balance == "none":
            return
        self.train_classes = integer_labels(train_labels, self.task.type)
        self.class_weight = torch.as_tensor(class_weights(self.train_classes, len(self.task.classes)))

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The task loss, weighted by the balanced class weights under class_balance 'loss'."""
        if self.cfg.class_balance == "loss":
            return weighted_loss(self.task.type, logits, y, self.cfg.label_smoothing, self.class_weight)
        return task_loss(self.task.type, logits, y, self.cfg.label_smoothing)

    @torch.no_grad()
    def cache_features(self, sets: dict[str, Dataset]) -> dict[str, Dataset]:
        """Frozen-encoder features of every split, computed once and kept in the run directory.

        Besides the head's input `<split>.x`, the same pass keeps every pooling the encoder offers as
        `<split>.pool.<name>` for the extra probes (adapt/probes.py)."""
        path = self.run.path / FEATURES_FILE
        pools = available_pools(self.model.encoder) if self.cfg.probes.pools or self.cfg.probes.knn else ()
        keys = {f"{s}.{n}" for s in sets for n in ("x", *(f"pool.{p}" for p in pools))}
        state = load_state(path) if path.is_file() else {}
        if not keys <= set(state):  # first time, or a file from before the poolings were kept
            self.model.encoder.eval()
            state = {}
            for split, ds in sets.items():
                parts = [self._features(x, y, i, pools) for x, y, i in self.loader(ds)]
                for name in parts[0]:
                    state[f"{split}.{name}"] = torch.cat([p[name] for p in parts])
            save_state(state, path)
        self.pooled = {s: {p: state[f"{s}.pool.{p}"] for p in pools} for s in sets}
        return {s: TensorDataset(*(state[f"{s}.{n}"] for n in ("x", "y", "index"))) for s in sets}

    def _features(self, x: torch.Tensor, y: torch.Tensor, i: torch.Tensor,
                  pools: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """One batch's head input `x`, targets, rows and every pooling in `pools` (one forward pass)."""
        x, encoder = x.to(self.acc.device), self.model.encoder
        pooled = all_pools(encoder, x, pools) if pools else {}
        own = self.model.pool or resolve_pool(encoder, None)
        head_in = pooled[own] if own in pooled else pool_features(encoder, x, self.model.pool)
        return {"x": head_in.float().cpu(), "y": y, "index": i, **{f"pool.{p}": v.float().cpu()
                                                                    for p, v in pooled.items()}}

    # ---- one epoch --------------------------------------------------------------------------------------
    def train_epoch(self, ds: Dataset, epoch: int) -> dict[str, float]:
        """One pass over the training set with a per-step warm-up + cosine learning rate."""
        self.net.train()
        loader = self.loader(ds, shuffle=True, epoch=epoch)
        steps = len(loader)
        total, warmup = self.cfg.epochs * steps, round(self.cfg.warmup_epochs * steps)
        losses, lr = [], 0.0
        for i, (x, y, _) in enumerate(loader):
            lr = lr_at(epoch * steps + i, total, warmup, self.cfg.lr, self.cfg.min_lr)
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            loss = self.loss(self.net(x.to(self.acc.device)), y.to(self.acc.device))
            self.step(loss)
            losses.append(loss.item())
        return {"train_loss": float(np.mean(losses)), "lr": lr}

    def step(self, loss: torch.Tensor) -> None:
        """Backward, optional gradient clipping, one optimiser step (through Accelerate unless a cached head)."""
        if self.cached:
            loss.backward()
            if self.cfg.clip_grad is not None:
                nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.clip_grad)
        else:
            self.acc.backward(loss)
            if self.cfg.clip_grad is not None:
                self.acc.clip_grad_norm_(self.net.parameters(), self.cfg.clip_grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def predict(self, ds: Dataset, net: nn.Module | None = None, labels: bool = True,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(manifest rows, targets, scores) of a dataset, by the trained net (or `net`, e.g. the whole model)."""
        net = self.net if net is None else net
        net.eval()
        idx, ys, ps = [], [], []
        for x, y, i in self.loader(ds, labels=labels):
            ps.append(task_scores(self.task.type, net(x.to(self.acc.device))).cpu().numpy())
            ys.append(y.numpy())
            idx.append(i.numpy())
        return np.concatenate(idx), np.concatenate(ys), np.concatenate(ps)

    # ---- checkpoints ------------------------------------------------------------------------------------
    def save_checkpoint(self, epoch: int, best: dict[str, Any]) -> None:
        """Weights, optimiser state and progress after `epoch`, written to a temp dir and renamed into place."""
        root = self.run.path / CHECKPOINTS
        final, tmp = root / f"epoch_{epoch:04d}", root / f".epoch_{epoch:04d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_state(self.acc.unwrap_model(self.net).state_dict(), tmp / "model.safetensors")
        torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
        atomic_write_json(tmp / "state.json", {"epoch": epoch, **best})
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in sorted(root.glob("epoch_*"))[:-1]:
            shutil.rmtree(old, ignore_errors=True)

    def restore(self) -> tuple[int, dict[str, Any]]:
        """The next epoch and best-so-far record, loading the latest checkpoint if there is one."""
        found = sorted((self.run.path / CHECKPOINTS).glob("epoch_*"))
        if not found:
            self._truncate_metrics(-1)
            return 0, {"best_epoch": None, "best_val_auroc": None}
        state = json.loads((found[-1] / "state.json").read_text())
        self.acc.unwrap_model(self.net).load_state_dict(load_state(found[-1] / "model.safetensors"))
        self.optimizer.load_state_dict(torch_load(found[-1] / "optimizer.pt"))
        self._truncate_metrics(state["epoch"])
        self.run.log(event="resume", epoch=state["epoch"] + 1)
        return state.pop("epoch") + 1, state

    def _truncate_metrics(self, last_epoch: int) -> None:
        """Drop epoch records after the last checkpointed epoch (they are logged again)."""
        kept = [r for r in self.run.metrics() if "event" not in r and r.get("epoch", -1) <= last_epoch]
        atomic_write_text(self.run.path / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in kept))

    # ---- the run ----------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train (or resume), keep the best-val-AUROC weights, evaluate them; return the run's summary."""
        if self.run.open() == "done":
            return self.run.summary()
        sets = self.datasets()
        best = self.train_epochs(sets)
        summary = self.summarise(sets, best)
        self.run.complete(**summary)
        shutil.rmtree(self.run.path / CHECKPOINTS, ignore_errors=True)
        return summary

    def train_epochs(self, sets: dict[str, Dataset]) -> dict[str, Any]:
        """The epochs not yet done (early stopping on `patience`); return the best epoch and its AUROC."""
        start, best = self.restore()
        for epoch in range(start, self.cfg.epochs):
            if patience_spent(self.cfg.patience, epoch, best):
                self.run.log(event="early_stop", epoch=epoch, best_epoch=best["best_epoch"])
                break
            torch.manual_seed(epoch_seed(self.seed, epoch))
            logs = self.train_epoch(sets["train"], epoch)
            val = self.validate(sets[self.cfg.val_split])
            self.run.log(epoch=epoch, **logs, **{f"val_{k}": v for k, v in val.items()})
            if is_better(val["auroc"], best["best_val_auroc"]):
                best = {"best_epoch": epoch, "best_val_auroc": val["auroc"]}
                save_state(self.acc.unwrap_model(self.net).state_dict(), self.run.path / BEST_FILE)
            self.save_checkpoint(epoch, best)
        return best

    def validate(self, ds: Dataset) -> Metrics:
        """Metrics of the current weights on the validation set."""
        return self.scoring.metrics(self.task.type, *self.predict(ds)[1:])

    def summarise(self, sets: dict[str, Dataset], best: dict[str, Any]) -> dict[str, Any]:
        """The run's summary: best epoch, test metrics of its weights, notes, the exported encoder."""
        summary = {**best, "fraction": self.fraction, "seed": self.seed, "train_images": len(sets["train"]),
                   "metrics": self.evaluate_best(sets)}
        if self.notes:
            summary["notes"] = self.notes
        if self.cfg.export_encoder:
            summary["encoder"] = str(self.export_encoder(best["best_epoch"]))
        return summary

    def evaluate_best(self, sets: dict[str, Dataset]) -> dict[str, Metrics]:
        """Load the best weights; write predictions and metrics for the validation and test splits."""
        self.load_best()
        out = {}
        for split in dict.fromkeys([self.cfg.val_split, *self.cfg.test_splits]):
            index, y, p = self.predict(sets[split])
            path = self.run.path / f"predictions_{split}.parquet"
            out[split] = self.scoring.write(path, index, y, p, self.task, self.data)
        atomic_write_json(self.run.path / "metrics.json", out)
        return out

    def load_best(self) -> None:
        """Load the best-validation weights into the model."""
        self.acc.unwrap_model(self.net).load_state_dict(load_state(self.run.path / BEST_FILE))

    def export_encoder(self, best_epoch: int | None) -> Path:
        """Save the best epoch's encoder (loaded by evaluate_best) as a save_pretrained dir in the run."""
        return save_pretrained(self.model.encoder, self.run.path / ENCODER_DIR, adapted_on=str(self.cfg.card),
                               task=self.task.name, label_fraction=self.fraction, seed=self.seed,
                               best_epoch=best_epoch)


def is_better(value: float, best: float | None) -> bool:
    """Whether a validation AUROC beats the best so far (the first epoch always counts; NaN never beats)."""
    if best is None:
        return True
    return not math.isnan(value) and (math.isnan(best) or value > best)


def patience_spent(patience: int | None, epoch: int, best: dict[str, Any]) -> bool:
    """Whether `patience` epochs before `epoch` passed without a better validation AUROC (early stopping).

    Read from the best epoch kept in the checkpoint, so a run killed after its stopping epoch stops on resume too.
    """
    return patience is not None and best["best_epoch"] is not None and epoch - 1 - best["best_epoch"] >= patience
