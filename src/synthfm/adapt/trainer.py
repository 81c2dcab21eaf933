"""One adaptation trainer with two freezing policies: fine-tuning and linear probing.

Fine-tuning trains every parameter with RETFound's layer-wise lr decay (lr scale `decay ** (depth + 1 - layer)`,
layer 0 = patch embedding and tokens, layer i = block i-1, depth+1 = final norm and head), stochastic depth
on the timm ViT blocks and label smoothing. The linear probe freezes the encoder in eval mode and trains MAE's
probe head, BatchNorm1d(affine=False) + Linear; without augmentation (its default) the encoder's features
are computed once per run and cached in the run directory. Warm-up + cosine per optimiser step (`lr_at`),
AdamW, Accelerate for device and mixed precision (one process). After every epoch the model is validated, the
best-val-AUROC weights are saved atomically and a checkpoint is written under a temporary name and renamed;
the global RNG is reseeded from (seed, epoch) at each epoch start, so a killed run resumes to the same result.
Non-ViT encoders (the `pixels` and `random:resnet18` baselines, `models/baselines.py`) skip the ViT-only parts
(layer decay, position-embedding resizing, per-block drop path). `class_balance` (adapt/balance.py) weights the
loss or the sampling by class; `patience` stops after that many epochs without a better validation AUROC.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from timm.layers import DropPath
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from synthfm import hardware
from synthfm.adapt.balance import balanced_sampler, class_weights, integer_labels, weighted_loss
from synthfm.adapt.config import AdaptConfig
from synthfm.adapt.cv import fold_datasets
from synthfm.adapt.external import ExternalSet, resolve_externals
from synthfm.adapt.probes import probe_summary
from synthfm.data.manifest import CardData, load_card
from synthfm.data.readers import open_dataset
from synthfm.data.splits import label_fractions
from synthfm.data.tensor_loader import TensorLoader, loader_order
from synthfm.errors import SynthfmError
from synthfm.evaluate.fairness import row_metadata
from synthfm.evaluate.metrics import task_metrics
from synthfm.evaluate.predictions import EXTERNAL_DIR, STAGE, prediction_frame
from synthfm.io import atomic_path, atomic_write_json, atomic_write_text
from synthfm.models.backbones import backbone_spec, image_size
from synthfm.models.baselines import PIXELS, is_vit, pixel_encoder
from synthfm.models.checkpoint import load_state, save_pretrained, save_state
from synthfm.models.encoders import random_backbone, resolve_encoder
from synthfm.models.pooling import all_pools, available_pools, pool_features, pooled_dim, resolve_pool
from synthfm.runs import METRICS_FILE, RunDir
from synthfm.train.optim import lr_at, param_groups
from synthfm.train.state import torch_load

CHECKPOINTS = "checkpoints"
BEST_FILE = "best.safetensors"
FEATURES_FILE = "features.safetensors"
ENCODER_DIR = "encoder"
EMBED_PREFIXES = ("cls_token", "pos_embed", "patch_embed", "reg_token", "mask_token", "dist_token")
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


# ---- model ----------------------------------------------------------------------------------------------
def load_encoder(cfg: AdaptConfig, in_chans: int) -> nn.Module:
    """The encoder named by cfg.encoder: 'random:<backbone>', a save_pretrained dir, a checkpoint file, or 'pixels'.

    The encoder takes the card's `in_chans` (backbone_overrides.in_chans may repeat it); a saved encoder or file
    with other channels (an RGB RETFound / DINOv2 on a grey card) has its patch embedding adapted on load.
    A random CNN to be fine-tuned gets cfg.drop_path as timm's own `drop_path_rate` (ViTs get it from the trainer).
    """
    overrides = dict(cfg.backbone_overrides)
    chans = overrides.pop("in_chans", in_chans)
    if chans != in_chans:
        raise SynthfmError(f"backbone_overrides.in_chans is {chans} but card {cfg.card} has {in_chans} channel(s)",
                           f"set backbone_overrides.in_chans to {in_chans} or drop it (the encoder takes the card's "
                           "channels; a pretrained encoder with other channels is adapted on load)")
    if cfg.encoder == PIXELS:
        return pixel_encoder(in_chans, cfg.image_size, cfg.policy)
    name = random_backbone(cfg.encoder)
    if name is not None and backbone_spec(name).family != "vit" and cfg.policy == "finetune" and cfg.drop_path > 0:
        overrides.setdefault("drop_path_rate", cfg.drop_path)
    return resolve_encoder(cfg.encoder, in_chans, cfg.backbone, overrides)


def fit_image_size(encoder: nn.Module, size: int, name: str) -> None:
    """A ViT built for another input size takes `size` (position embeddings resampled, as timm does).

    Other encoders need nothing: a CNN pools over any size and the pixels encoder is built at `size`.
    """
    if not is_vit(encoder):
        return
    embed = encoder.patch_embed
    if int(embed.img_size[0]) == size:
        return
    patch = int(embed.patch_size[0])
    if size % patch:
        raise SynthfmError(f"image_size {size} is not a multiple of encoder {name}'s patch size {patch} "
                           f"(it was built for {embed.img_size[0]} px)",
                           f"set image_size to a multiple of {patch}, e.g. {max(patch, size // patch * patch)}, "
                           f"or leave it out to use {embed.img_size[0]}")
    encoder.set_input_size(img_size=size)
    saved = getattr(encoder, "synthfm_backbone", None)  # what save_pretrained records: rebuilt at this size
    if saved is not None:
        encoder.synthfm_backbone = {**saved, "overrides": {**saved.get("overrides", {}), "img_size": size}}


def set_drop_path(encoder: nn.Module, rate: float) -> None:
    """Stochastic depth on a timm ViT, rising linearly from 0 (first block) to `rate` (last), as timm does."""
    blocks = encoder.blocks
    for i, blk in enumerate(blocks):
        r = rate * i / max(len(blocks) - 1, 1)
        for name in ("drop_path1", "drop_path2"):
            if hasattr(blk, name):
                setattr(blk, name, DropPath(r) if r > 0 else nn.Identity())


def input_size(encoder: nn.Module, cfg: AdaptConfig) -> int:
    """The image size the encoder reads: cfg.image_size, else a ViT's own; a CNN has none of its own."""
    return image_size(encoder, cfg.image_size, cfg.encoder)


def vit_only_notes(cfg: AdaptConfig, encoder: nn.Module) -> list[str]:
    """What of the ViT fine-tuning recipe a non-ViT encoder does without (said in the run's summary)."""
    if cfg.policy != "finetune" or is_vit(encoder):
        return []
    notes = []
    if cfg.layer_decay != 1:
        notes.append(f"layer_decay {cfg.layer_decay:g} not applied: {cfg.encoder} is not a ViT (no blocks), so "
                     "every parameter takes the full learning rate")
    if cfg.drop_path > 0 and random_backbone(cfg.encoder) is None:
        notes.append(f"drop_path {cfg.drop_path:g} not applied: timm sets a CNN's stochastic depth when it is "
                     "built, and a saved encoder keeps what it was built with")
    return notes


def build_head(dim: int, outputs: int, probe: bool) -> nn.Module:
    """Linear head (trunc-normal init: std 2e-5 fine-tune as RETFound, 0.01 probe as MAE); probe adds BN."""
    linear = nn.Linear(dim, outputs)
    nn.init.trunc_normal_(linear.weight, std=0.01 if probe else 2e-5)
    nn.init.zeros_(linear.bias)
    return nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), linear) if probe else linear


class Classifier(nn.Module):
    """Encoder + pooling + head; a frozen encoder has no gradients and stays in eval mode."""

    def __init__(self, encoder: nn.Module, head: nn.Module, frozen: bool, pool: str | None = None) -> None:
        super().__init__()
        self.encoder, self.head, self.frozen, self.pool = encoder, head, frozen, pool
        if frozen:
            encoder.requires_grad_(False)

    def train(self, mode: bool = True) -> Classifier:
        """Set training mode, keeping a frozen encoder in eval mode."""
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            feats = pool_features(self.encoder, x, self.pool)
        return self.head(feats)


def make_classifier(encoder: nn.Module, cfg: AdaptConfig, outputs: int) -> Classifier:
    """The classifier of a config: cfg.pool checked against the encoder, the head sized for that pooling."""
    probe = cfg.policy == "linear_probe"
    pool = None if cfg.pool is None else resolve_pool(encoder, cfg.pool, cfg.encoder)
    return Classifier(encoder, build_head(pooled_dim(encoder, pool), outputs, probe), probe, pool)


def layer_id(name: str, depth: int) -> int:
    """RETFound/BEiT layer index of an encoder parameter name (0 embeddings, i+1 block i, depth+1 the rest)."""
    name = name.removeprefix("encoder.")
    if name.startswith(EMBED_PREFIXES):
        return 0
    m = re.match(r"blocks\.(\d+)\.", name)
    return int(m.group(1)) + 1 if m else depth + 1


def lrd_param_groups(net: nn.Module, weight_decay: float, layer_decay: float, depth: int) -> list[dict[str, Any]]:
    """The engine's decay / no-decay groups split by layer, each with lr_scale = layer_decay ** (depth+1-layer)."""
    names = {id(p): n for n, p in net.named_parameters()}
    groups: dict[tuple[int, float], dict[str, Any]] = {}
    for base in param_groups(net, weight_decay):
        for p in base["params"]:
            lid = layer_id(names[id(p)], depth)
            group = groups.setdefault((lid, base["weight_decay"]), {
                "params": [], "weight_decay": base["weight_decay"], "layer": lid,
                "lr_scale": layer_decay ** (depth + 1 - lid)})
            group["params"].append(p)
    return [groups[k] for k in sorted(groups)]


# ---- loss and scores ------------------------------------------------------------------------------------
def task_loss(task_type: str, logits: torch.Tensor, y: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Label-smoothed BCE (binary, multilabel: targets pulled towards 0.5) or cross-entropy (multi-class)."""
    logits = logits.float()
    if task_type in ("binary", "multilabel"):
        target = y.float().reshape(logits.shape) * (1 - smoothing) + 0.5 * smoothing
        return F.binary_cross_entropy_with_logits(logits, target)
    return F.cross_entropy(logits, y.long(), label_smoothing=smoothing)


def task_scores(task_type: str, logits: torch.Tensor) -> torch.Tensor:
    """P(positive) (N,) for binary, label probabilities (N, K) for multilabel, softmax (N, K) otherwise."""
    logits = logits.float()
    if task_type == "binary":
        return torch.sigmoid(logits).reshape(-1)
    return torch.sigmoid(logits) if task_type == "multilabel" else logits.softmax(-1)


# ---- data -----------------------------------------------------------------------------------------------
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


class Trainer:
    """Adapts one encoder to one card task for one (label fraction, seed), in its own run directory."""

    def __init__(self, cfg: AdaptConfig, out_dir: str | Path, data: CardData | None = None) -> None:
        """`data`: the card already loaded by the experiment (else it is read and checked here)."""
        if len(cfg.seeds) != 1 or len(cfg.label_fractions) != 1:
            raise SynthfmError("a Trainer runs one seed and one label fraction", "use cfg.single(fraction, seed)")
        self.cfg, self.seed, self.fraction = cfg, cfg.seeds[0], cfg.label_fractions[0]
        self.run = RunDir(out_dir, STAGE, cfg)
        self.data = data if data is not None else load_card(cfg.card)
        self.task = self.data.card.task(cfg.task)
        self.externals = resolve_externals(cfg, self.data)
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
        if self.cfg.cv is not None:  # small-data mode: the rows come from the run's (repeat, fold)
            sets = fold_datasets(self.data, self.task, self.cfg.cv, self.fraction, self.cfg.subset_seed, self.size,
                                 self.cfg.augments, self.cfg.val_split, self.cfg.test_splits[0])
            return self.cache_features(sets) if self.cached else sets
        pos = train_positions(self.data, self.task.name, self.fraction, self.cfg.subset_seed)
        self.balance_on(self.data.labels[self.task.name][self.data.indices("train")[pos]])
        sets: dict[str, Dataset] = {
            "train": Subset(open_dataset(self.data, "train", size=self.size, train=self.cfg.augments), pos.tolist())}
        for split in dict.fromkeys([self.cfg.val_split, *self.cfg.test_splits]):
            sets[split] = open_dataset(self.data, split, size=self.size)
        return self.cache_features(sets) if self.cached else sets

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
        start, best = self.restore()
        for epoch in range(start, self.cfg.epochs):
            if patience_spent(self.cfg.patience, epoch, best):
                self.run.log(event="early_stop", epoch=epoch, best_epoch=best["best_epoch"])
                break
            torch.manual_seed(epoch_seed(self.seed, epoch))
            logs = self.train_epoch(sets["train"], epoch)
            val = task_metrics(self.task.type, *self.predict(sets[self.cfg.val_split])[1:])
            self.run.log(epoch=epoch, **logs, **{f"val_{k}": v for k, v in val.items()})
            if is_better(val["auroc"], best["best_val_auroc"]):
                best = {"best_epoch": epoch, "best_val_auroc": val["auroc"]}
                save_state(self.acc.unwrap_model(self.net).state_dict(), self.run.path / BEST_FILE)
            self.save_checkpoint(epoch, best)
        summary = {**best, "fraction": self.fraction, "seed": self.seed, "train_images": len(sets["train"]),
                   "metrics": self.evaluate_best(sets)}
        if self.notes:
            summary["notes"] = self.notes
        if self.cfg.cv is not None:  # the run's place in the cross-validation
            summary.update(zip(("repeat", "fold"), self.cfg.cv.run, strict=True))
        if self.cfg.export_encoder:
            summary["encoder"] = str(self.export_encoder(best["best_epoch"]))
        if self.externals:
            summary["external"] = {e.name: self.evaluate_external(e) for e in self.externals}
        summary.update(probe_summary(self, sets, summary["metrics"]))
        self.run.complete(**summary)
        shutil.rmtree(self.run.path / CHECKPOINTS, ignore_errors=True)
        return summary

    def evaluate_best(self, sets: dict[str, Dataset]) -> dict[str, dict[str, float]]:
        """Load the best weights; write predictions and metrics for the validation and test splits."""
        self.acc.unwrap_model(self.net).load_state_dict(load_state(self.run.path / BEST_FILE))
        out = {}
        for split in dict.fromkeys([self.cfg.val_split, *self.cfg.test_splits]):
            index, y, p = self.predict(sets[split])
            out[split] = self.save_predictions(self.run.path / f"predictions_{split}.parquet", index, y, p, self.data)
        atomic_write_json(self.run.path / "metrics.json", out)
        return out

    def export_encoder(self, best_epoch: int | None) -> Path:
        """Save the best epoch's encoder (loaded by evaluate_best) as a save_pretrained dir in the run."""
        return save_pretrained(self.model.encoder, self.run.path / ENCODER_DIR, adapted_on=str(self.cfg.card),
                               task=self.task.name, label_fraction=self.fraction, seed=self.seed,
                               best_epoch=best_epoch)

    def evaluate_external(self, ext: ExternalSet) -> dict[str, dict[str, float]]:
        """Predictions and metrics of the best weights on an external card (labels mapped onto this task)."""
        ds = open_dataset(ext.data, ext.split, size=self.size)
        index, _, p = self.predict(ds, net=self.model, labels=False)
        split = ext.split or "all"
        path = self.run.path / EXTERNAL_DIR / ext.name / f"predictions_{split}.parquet"
        return {split: self.save_predictions(path, index, ext.targets(index), p, ext.data)}

    def save_predictions(self, path: Path, index: np.ndarray, y: np.ndarray, p: np.ndarray,
                         data: CardData) -> dict[str, float]:
        """Write per-image predictions with the card's metadata columns; return their metrics."""
        frame = prediction_frame(index, y, p, self.task)
        frame = pd.concat([frame, row_metadata(data, index)], axis=1)
        with atomic_path(path, ".parquet") as tmp:
            frame.to_parquet(tmp, index=False)
        return task_metrics(self.task.type, y, p)


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


def adapt_one(cfg: AdaptConfig, out_dir: str | Path, data: CardData | None = None) -> dict[str, Any]:
    """Run (or resume, or skip if finished) one (label fraction, seed) adaptation in `out_dir` (`data`: the loaded
    card, passed down by an experiment so that it is read and checked once, not once per run)."""
    return Trainer(cfg, out_dir, data).fit()
