"""Label verification: a classifier trained on the real card re-checks every synthetic image's label.

The classifier is trained by the classifier trainer (`synthfm.train.trainer.ClassifierTrainer`, its own run
directory under the quality run), with its best-validation weights. It predicts each synthetic image;
agreement with the label the image was generated for is reported per class, with the confusion table.
Because the classifier errs on real images too, the share of *wrong labels* is also estimated with its
real held-out confusion matrix C (true -> predicted): for each given class g, the predicted-class
distribution q_g of its synthetic images is explained as q_g = pi_g C with pi_g a probability vector
(non-negative least squares), and 1 - pi_g[g] is the estimated mislabelled fraction. Images whose
prediction agrees (or whose P(given) reaches `min_prob`) form a filtered card, for folder and shard cards alike.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.optimize import nnls
from torch.utils.data import DataLoader

from synthfm.data.card import MANIFEST, TaskSpec, resolve_path, write_card
from synthfm.data.manifest import ID, SPLIT, CardData, write_table
from synthfm.data.readers import open_dataset
from synthfm.data.shards import shard_urls
from synthfm.errors import SynthfmError
from synthfm.evaluate.metrics import confusion
from synthfm.evaluate.predictions import SCORING, read_predictions
from synthfm.io import atomic_path
from synthfm.quality.config import LabelCheckConfig
from synthfm.train.classifier import task_scores
from synthfm.train.classifier_config import ClassifierConfig
from synthfm.train.trainer import ClassifierTrainer

ADAPT_DEFAULTS: dict[str, Any] = {"policy": "linear_probe", "epochs": 20, "warmup_epochs": 2, "batch_size": 32,
                                  "lr": 1e-2, "label_fractions": [1.0],
                                  "probes": {"pools": False, "knn": False}}  # the verifier needs its one head only


@dataclass
class LabelResult:
    """Tables of the label check and the mask of synthetic images that pass every checked task."""

    predictions: pd.DataFrame
    agreement: pd.DataFrame
    confusion: pd.DataFrame
    keep: np.ndarray
    metrics: dict[str, float] = field(default_factory=dict)
    baselines: dict[str, tuple[float, float]] = field(default_factory=dict)


def checked_tasks(real: CardData, synth: CardData, cfg: LabelCheckConfig) -> list[tuple[TaskSpec, TaskSpec]]:
    """(real task, synthetic task) pairs to check: configured, or every single-label task both cards share."""
    names = cfg.tasks or [t.name for t in real.card.tasks if t.type != "multilabel"]
    synth_names = {t.name for t in synth.card.tasks}
    pairs = []
    for name in names:
        rt = real.card.task(name)
        target = cfg.task_map.get(name, name)
        if target not in synth_names:
            if cfg.tasks:
                raise SynthfmError(f"synthetic card '{synth.card.name}' has no task '{target}' (for real '{name}')",
                                   "map it with labels.task_map: {real_task: synthetic_task}")
            continue
        st = synth.card.task(target)
        if rt.type == "multilabel" or len(rt.classes) != len(st.classes):
            raise SynthfmError(f"task '{name}' cannot be checked: real {rt.type} {rt.classes} vs synthetic "
                               f"{st.type} {st.classes}", "check single-label tasks with the same number of classes")
        pairs.append((rt, st))
    return pairs


def adapt_config(real: CardData, real_card: str, task: str, cfg: LabelCheckConfig, seed: int,
                 encoder: dict[str, Any]) -> ClassifierConfig:
    """The classifier recipe of the verifier: defaults, the space's encoder, then `labels.adapt`."""
    if not len(real.indices("val")):
        raise SynthfmError(f"real card '{real.card.name}' has no 'val' rows to pick the verifier's best epoch",
                           "split the real card (synthfm data split) or set labels.enabled: false")
    tests = ["test"] if len(real.indices("test")) else []
    return ClassifierConfig(**{**ADAPT_DEFAULTS, **encoder, "seeds": [seed], "test_splits": tests, **cfg.adapt,
                          "card": real_card, "task": task})


def train_verifier(acfg: ClassifierConfig, out: Path) -> ClassifierTrainer:
    """Fit (or reuse) the verifier and load its best-validation weights."""
    trainer = ClassifierTrainer(acfg.single(acfg.label_fractions[0], acfg.seeds[0]), out, SCORING)
    trainer.fit()
    trainer.load_best()
    trainer.model.eval()
    return trainer


def _images(samples: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and manifest rows of a batch."""
    return torch.stack([s["image"] for s in samples]), torch.tensor([s["index"] for s in samples])


@torch.no_grad()
def predict_card(trainer: ClassifierTrainer, data: CardData, task_type: str, batch_size: int) -> np.ndarray:
    """Scores of every row of a card (rows in manifest order), with the verifier's eval transform."""
    ds = open_dataset(data, None, size=trainer.size)
    scores: np.ndarray | None = None
    for x, index in DataLoader(ds, batch_size=batch_size, collate_fn=_images):
        p = task_scores(task_type, trainer.model(x.to(trainer.acc.device))).cpu().numpy()
        if scores is None:
            scores = np.zeros((len(data), *p.shape[1:]), np.float32)
        scores[index.numpy()] = p
    assert scores is not None
    return scores


def predicted_class(task_type: str, scores: np.ndarray) -> np.ndarray:
    """Class index from scores: P(positive) >= 0.5 for binary, the argmax otherwise."""
    return (scores >= 0.5).astype(np.int64) if task_type == "binary" else scores.argmax(1)


def prob_of(task_type: str, scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Predicted probability of each row's given class."""
    if task_type == "binary":
        return np.where(labels == 1, scores, 1 - scores)
    return scores[np.arange(len(labels)), labels]


def mislabelled_fraction(observed: np.ndarray, real_confusion: np.ndarray) -> np.ndarray:
    """Per given class: 1 - P(true = given), with observed prediction counts explained by the real confusion."""
    k = len(real_confusion)
    rows = real_confusion.sum(1, keepdims=True)
    c = np.where(rows > 0, real_confusion / np.maximum(rows, 1), np.eye(k))
    out = np.full(k, np.nan)
    weight = 10.0
    for g in range(k):
        n = observed[g].sum()
        if n == 0:
            continue
        a = np.vstack([c.T, weight * np.ones((1, k))])
        b = np.concatenate([observed[g] / n, [weight]])
        pi, _ = nnls(a, b)
        out[g] = 1 - pi[g] / max(pi.sum(), 1e-12)
    return out


def check_task(trainer: ClassifierTrainer, rt: TaskSpec, st: TaskSpec, synth: CardData, cfg: LabelCheckConfig,
               batch_size: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, np.ndarray]:
    """Predictions, per-class agreement and confusion rows of one task, and its pass mask."""
    k = len(rt.classes)
    given = synth.labels[st.name]
    scores = predict_card(trainer, synth, rt.type, batch_size)
    pred = predicted_class(rt.type, scores)
    p_given = prob_of(rt.type, scores, given)
    keep = p_given >= cfg.min_prob if cfg.min_prob is not None else pred == given
    real_conf = real_heldout_confusion(trainer, rt.type, k)
    syn_conf = confusion(given, pred, k)
    mis = mislabelled_fraction(syn_conf, real_conf)
    preds = pd.DataFrame({"synthetic_id": synth.df[ID].to_numpy(), "task": rt.name, "given": given,
                          "given_class": [rt.classes[g] for g in given], "predicted": pred,
                          "predicted_class": [rt.classes[p] for p in pred], "p_given": p_given,
                          "agree": pred == given, "keep": keep})
    agreement = pd.DataFrame([_agreement_row(rt, g, syn_conf, real_conf, mis) for g in range(k)])
    conf = pd.DataFrame([{"task": rt.name, "source": src, "given": rt.classes[g], "predicted": rt.classes[p],
                          "count": int(m[g, p])}
                         for src, m in (("synthetic", syn_conf), ("real_heldout", real_conf))
                         for g in range(k) for p in range(k)])
    return preds, agreement, conf, keep


def _agreement_row(rt: TaskSpec, g: int, syn: np.ndarray, real: np.ndarray, mis: np.ndarray) -> dict[str, Any]:
    """One class's agreement figures."""
    n = int(syn[g].sum())
    agree = float(syn[g, g] / n) if n else float("nan")
    n_real = int(real[g].sum())
    return {"task": rt.name, "class": rt.classes[g], "n": n, "agreement": agree,
            "disagreement": 1 - agree, "disagreement_se": float(np.sqrt(agree * (1 - agree) / n)) if n else np.nan,
            "estimated_mislabelled": float(mis[g]), "n_real_heldout": n_real,
            "real_heldout_recall": float(real[g, g] / n_real) if n_real else float("nan")}


def real_heldout_confusion(trainer: ClassifierTrainer, task_type: str, k: int) -> np.ndarray:
    """The verifier's confusion on real held-out images (test split if there is one, else validation)."""
    split = trainer.cfg.test_splits[0] if trainer.cfg.test_splits else trainer.cfg.val_split
    _, y, p = read_predictions(trainer.run.path / f"predictions_{split}.parquet")
    return confusion(y.astype(np.int64), predicted_class(task_type, p), k)


def verify_labels(real: CardData, real_card: str, synth: CardData, cfg: LabelCheckConfig, out: Path,
                  seed: int, batch_size: int, encoder: dict[str, Any]) -> LabelResult:
    """Train a verifier per checked task and compare its predictions with the synthetic labels."""
    parts: list[tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]] = []
    keep = np.ones(len(synth), bool)
    metrics: dict[str, float] = {}
    baselines: dict[str, tuple[float, float]] = {}
    for rt, st in checked_tasks(real, synth, cfg):
        trainer = train_verifier(adapt_config(real, real_card, rt.name, cfg, seed, encoder), out / rt.name)
        preds, agreement, conf, ok = check_task(trainer, rt, st, synth, cfg, batch_size)
        parts.append((preds, agreement, conf))
        keep &= ok
        n = agreement["n"].to_numpy()
        agree = float(preds["agree"].mean())
        real_conf = real_heldout_confusion(trainer, rt.type, len(rt.classes))
        accuracy = float(np.trace(real_conf) / max(real_conf.sum(), 1))
        metrics[f"label_agreement_{rt.name}"] = agree
        metrics[f"label_real_accuracy_{rt.name}"] = accuracy
        metrics[f"label_agreement_rel_{rt.name}"] = agree / accuracy if accuracy > 0 else float("nan")
        baselines[f"label_agreement_rel_{rt.name}"] = (agree, accuracy)
        metrics[f"label_mislabelled_{rt.name}"] = float(np.nansum(agreement["estimated_mislabelled"] * n) / n.sum())
    if parts:
        metrics["label_disagreement"] = float(1 - np.mean([m for k, m in metrics.items()
                                                            if k.startswith("label_agreement_") and "_rel_" not in k]))
        metrics["label_mislabelled"] = float(np.mean([m for k, m in metrics.items() if "mislabelled_" in k]))
        metrics["label_kept_fraction"] = float(keep.mean())
    tables = [pd.concat([p[i] for p in parts], ignore_index=True) if parts else pd.DataFrame() for i in range(3)]
    return LabelResult(*tables, keep=keep, metrics=metrics, baselines=baselines)


def shard_refs(synth: CardData) -> list[str]:
    """`<shard file>#<sample key>` of every manifest row of a shard card: the manifest's own references when its
    path column holds them, else read from the shards' JSON records (their `row`), without decoding images."""
    col = synth.card.source.path_column
    if col in synth.df.columns and all("#" in str(p) for p in synth.df[col]):
        return [str(p) for p in synth.df[col]]
    refs: list[str | None] = [None] * len(synth)
    for url in shard_urls(synth.source_root):
        with tarfile.open(url) as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".json"):
                    row = json.loads(tar.extractfile(member).read()).get("row", -1)  # type: ignore[union-attr]
                    if 0 <= row < len(refs):
                        refs[row] = f"{Path(url).name}#{member.name.removesuffix('.json')}"
    missing = [i for i, r in enumerate(refs) if r is None]
    if missing:
        raise SynthfmError(f"shards of card '{synth.card.name}' hold no sample for {len(missing)} manifest row(s), "
                           f"e.g. row {missing[0]}", "regenerate the shards, or write the card from its shards again")
    return [str(r) for r in refs]


def write_filtered_card(synth: CardData, keep: np.ndarray, out: Path) -> Path:
    """A card of the kept synthetic rows (same images, filtered manifest), for folder and shard cards.

    A shard card's filtered manifest names each kept sample as `<shard file>#<key>` in its path column, so
    readers stream only those samples from the original shards (nothing is copied).
    """
    df = synth.df.drop(columns=[ID, SPLIT])
    if synth.card.source.format == "shards":
        df[synth.card.source.path_column] = shard_refs(synth)
    df = df.loc[keep]
    with atomic_path(out / MANIFEST, ".parquet") as tmp:
        write_table(df, tmp)
    source = synth.card.source.model_copy(update={"root": str(resolve_path(synth.card_dir, synth.card.source.root)
                                                              .resolve())})
    notes = (synth.card.provenance.notes + " " if synth.card.provenance.notes else "") + (
        f"filtered by synthfm quality label verification: {int(keep.sum())} of {len(keep)} rows kept")
    card = synth.card.model_copy(update={
        "name": f"{synth.card.name}_verified", "manifest": MANIFEST, "source": source,
        "provenance": synth.card.provenance.model_copy(update={"notes": notes})})
    return write_card(card, out)
