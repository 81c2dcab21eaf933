"""The adaptation stage's trainer: the classifier trainer (train/trainer.py) with an experiment's extras.

An adaptation run adds to the classifier recipe: the rows of a cross-validation (repeat, fold) instead of the
card's fixed splits (adapt/cv.py), predictions on external test cards (adapt/external.py) and the extra
readouts of a linear probe's cached features (adapt/probes.py). Its predictions and metrics follow the results
contract of `synthfm.evaluate.predictions`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from synthfm.adapt.config import AdaptConfig
from synthfm.adapt.cv import fold_datasets
from synthfm.adapt.external import ExternalSet, resolve_externals
from synthfm.adapt.probes import probe_summary
from synthfm.data.manifest import CardData
from synthfm.data.readers import open_dataset
from synthfm.evaluate.predictions import EXTERNAL_DIR, SCORING
from synthfm.train.trainer import ClassifierTrainer, Metrics


class Trainer(ClassifierTrainer):
    """Adapts one encoder to one card task for one (label fraction, seed[, CV repeat, fold]), in its own run
    directory."""

    cfg: AdaptConfig

    def __init__(self, cfg: AdaptConfig, out_dir: str | Path, data: CardData | None = None) -> None:
        """`data`: the card already loaded by the experiment (else it is read and checked here)."""
        super().__init__(cfg, out_dir, SCORING, data)
        self.externals = resolve_externals(cfg, self.data)

    def image_datasets(self) -> tuple[dict[str, Dataset], np.ndarray]:
        """The fixed splits' datasets, or under `cv` the run's (repeat, fold) rows; the card rows trained on."""
        if self.cfg.cv is None:
            return super().image_datasets()
        sets = fold_datasets(self.data, self.task, self.cfg.cv, self.fraction, self.cfg.subset_seed, self.size,
                             self.cfg.augments, self.cfg.val_split, self.cfg.test_splits[0])
        return sets, np.asarray(sets["train"].indices)

    def summarise(self, sets: dict[str, Dataset], best: dict[str, Any]) -> dict[str, Any]:
        """The classifier's summary, with the run's place in the cross-validation, external sets and probes."""
        summary = super().summarise(sets, best)
        if self.cfg.cv is not None:
            summary.update(zip(("repeat", "fold"), self.cfg.cv.run, strict=True))
        if self.externals:
            summary["external"] = {e.name: self.evaluate_external(e) for e in self.externals}
        summary.update(probe_summary(self, sets, summary["metrics"]))
        return summary

    def evaluate_external(self, ext: ExternalSet) -> dict[str, Metrics]:
        """Predictions and metrics of the best weights on an external card (labels mapped onto this task)."""
        ds = open_dataset(ext.data, ext.split, size=self.size)
        index, _, p = self.predict(ds, net=self.model, labels=False)
        split = ext.split or "all"
        path = self.run.path / EXTERNAL_DIR / ext.name / f"predictions_{split}.parquet"
        return {split: self.scoring.write(path, index, ext.targets(index), p, self.task, ext.data)}


def adapt_one(cfg: AdaptConfig, out_dir: str | Path, data: CardData | None = None) -> dict[str, Any]:
    """Run (or resume, or skip if finished) one (label fraction, seed) adaptation in `out_dir` (`data`: the loaded
    card, passed down by an experiment so that it is read and checked once, not once per run)."""
    return Trainer(cfg, out_dir, data).fit()
