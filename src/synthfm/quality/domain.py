"""The gate's default feature space: an encoder fine-tuned on the real card, trained once and cached.

The classifier trainer (`synthfm.train.trainer.ClassifierTrainer`, policy finetune, `export_encoder`) fine-tunes
`domain.start` on the real card's task (train split, best epoch on val) and exports the encoder. The run
lives under `<cache_dir>/domain/<key>/run-<config hash>`, where the key hashes the real card file, its manifest
(every row, labels and split) and the domain settings, so any later call on the same card reuses it (also from
another path: a finished run is matched on its settings, not on where the card file lay), and an interrupted
training resumes from its last epoch.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pandas as pd

from synthfm.data.manifest import CardData
from synthfm.errors import SynthfmError
from synthfm.evaluate.predictions import SCORING
from synthfm.quality.config import DomainConfig
from synthfm.runs import RunDir, config_hash, read_run_config
from synthfm.train.classifier_config import ClassifierConfig
from synthfm.train.trainer import ENCODER_DIR, ClassifierTrainer

RUN = "run"


def cache_root(cfg: DomainConfig) -> Path:
    """Where domain encoders are cached: `cache_dir`, else $SYNTHFM_CACHE, else ~/.cache/synthfm."""
    if cfg.cache_dir:
        return Path(cfg.cache_dir)
    return Path(os.environ.get("SYNTHFM_CACHE", Path.home() / ".cache" / "synthfm"))


def domain_task(real: CardData, cfg: DomainConfig) -> str:
    """The real task the encoder learns: configured, or the card's first single-label task."""
    if cfg.task:
        real.card.task(cfg.task)  # names the choices when missing
        return cfg.task
    single = [t.name for t in real.card.tasks if t.type != "multilabel"]
    if not single:
        raise SynthfmError(f"real card '{real.card.name}' has no single-label task to fine-tune the gate's domain "
                           "encoder on", "give a feature space explicitly: spaces: [{encoder: DIR}] (a "
                           "save_pretrained encoder of this modality)")
    return single[0]


def card_key(real: CardData, cfg: DomainConfig, task: str) -> str:
    """A content key of the real card (card file, manifest rows, labels, splits) and the domain settings."""
    digest = hashlib.sha256(real.card.model_dump_json().encode())
    digest.update(pd.util.hash_pandas_object(real.df.astype(str), index=False).to_numpy().tobytes())
    digest.update(config_hash(cfg.model_copy(update={"cache_dir": None})).encode())
    digest.update(task.encode())
    return digest.hexdigest()[:16]


def adapt_settings(real_card: str, task: str, cfg: DomainConfig) -> dict[str, Any]:
    """ClassifierConfig keys of the domain encoder's fine-tuning run."""
    return {"card": str(Path(real_card).resolve()), "task": task, "encoder": cfg.start,
            "backbone_overrides": cfg.backbone_overrides, "image_size": cfg.image_size, "policy": "finetune",
            "epochs": cfg.epochs, "warmup_epochs": cfg.warmup_epochs, "batch_size": cfg.batch_size, "lr": cfg.lr,
            "seeds": [cfg.seed], "label_fractions": [1.0], "test_splits": [], "export_encoder": True}


def finished_run(root: Path, acfg: ClassifierConfig) -> Path | None:
    """A finished fine-tuning under this cache key with these settings, wherever the card file lay when it ran:
    the key hashes the card's content, so a moved or re-cloned card (or another checkout sharing the cache)
    reuses it instead of meeting a run folder recorded with another path."""
    for run in sorted(p for p in root.glob(f"{RUN}*") if (p / ENCODER_DIR).is_dir()):
        try:
            done = read_run_config(run, ClassifierConfig, SCORING.stage)
        except SynthfmError:
            continue  # not a run synthfm wrote: leave it alone
        if done.model_copy(update={"card": acfg.card}) == acfg and RunDir(run, SCORING.stage, done).is_complete:
            return run
    return None


def domain_encoder(real: CardData, real_card: str, cfg: DomainConfig) -> tuple[Path, dict[str, Any]]:
    """(save_pretrained dir, description) of the real card's domain encoder, trained now unless cached."""
    task = domain_task(real, cfg)
    for split in ("train", "val"):
        if not len(real.indices(split)):
            raise SynthfmError(f"real card '{real.card.name}' has no '{split}' rows to fine-tune the gate's domain "
                               "encoder", "split the real card (synthfm data split) or give a feature space "
                               "explicitly: spaces: [{encoder: DIR}]")
    root = cache_root(cfg) / "domain" / card_key(real, cfg, task)
    acfg = ClassifierConfig(**adapt_settings(real_card, task, cfg))
    found = finished_run(root, acfg)
    run = found or root / f"{RUN}-{config_hash(acfg)}"
    encoder = run / ENCODER_DIR
    reused = found is not None
    if not reused:
        ClassifierTrainer(acfg, run, SCORING).fit()
    info = {"kind": "domain", "description": f"encoder fine-tuned on real card '{real.card.name}' task '{task}' "
            f"(from {cfg.start}, {cfg.epochs} epochs)", "encoder": str(encoder), "task": task, "reused": reused}
    return encoder, info
