"""Run an adaptation config over every (label fraction, seed), each in its own resumable run directory.

In small-data mode (`cv:`) every (repeat, fold, label fraction, seed) is its own run directory, and the fold
assignment is written to `EXP/cv_folds.*` for the record; a killed experiment redoes no finished fold.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from synthfm.adapt.config import AdaptConfig
from synthfm.adapt.cv import FOLDS_FILE, fold_sizes, fold_table
from synthfm.adapt.export import write_model_card
from synthfm.adapt.external import resolve_externals
from synthfm.adapt.probes import collect_probes, missing_probes
from synthfm.adapt.trainer import adapt_one
from synthfm.data.card import read_card
from synthfm.data.manifest import CardData, load_card
from synthfm.evaluate.predictions import EXPERIMENT_STAGE, EXTERNAL_DIR, STAGE, run_keys, run_path
from synthfm.evaluate.probes import write_probe_tables
from synthfm.evaluate.results import INTERNAL, RESULTS, load_results, tidy_rows, write_tables
from synthfm.io import write_table_pair
from synthfm.runs import RunDir


def cv_folds(cfg: AdaptConfig, data: CardData | None = None) -> pd.DataFrame:
    """The fold assignment of a cv config (repeat, fold, role, row, patient, stratum)."""
    data = data if data is not None else load_card(cfg.card)
    return fold_table(data, data.card.task(cfg.task), cfg.cv)


def run_experiment(cfg: AdaptConfig, out_dir: str | Path) -> pd.DataFrame:
    """Adapt for every fraction × seed (× repeat × fold; finished runs are skipped), then write the results tables."""
    resolve_externals(cfg)  # a wrong external mapping fails here, before any training
    top = RunDir(out_dir, EXPERIMENT_STAGE, cfg)
    if top.open() == "done" and not missing_probes(cfg, out_dir):
        return load_results(out_dir)
    data: CardData | None = None  # read and checked once, for every run that is not finished yet
    if cfg.cv is not None:  # fails early on too few patients; the record of which rows were where
        data = load_card(cfg.card)
        write_table_pair(cv_folds(cfg, data), Path(out_dir) / FOLDS_FILE)
    for key in run_keys(cfg):
        single = cfg.single(*key)
        if not RunDir(run_path(out_dir, *key), STAGE, single).is_complete:
            data = data if data is not None else load_card(cfg.card)
            adapt_one(single, run_path(out_dir, *key), data)
    results = collect_results(cfg, out_dir)
    write_tables(results, out_dir)
    write_probe_tables(collect_probes(cfg, out_dir), out_dir, cfg.val_split)
    write_model_card(out_dir)  # README.md: the adapted model's card (export writes the loadable folder)
    top.complete(runs=len(run_keys(cfg)), results=f"{RESULTS}.parquet")
    return results


def majority_rate(predictions: Path) -> float:
    """Share of the most frequent class among a predictions file's targets (NaN: multilabel or no file)."""
    if not predictions.is_file():
        return float("nan")
    df = pd.read_parquet(predictions)
    return float(df["y"].value_counts(normalize=True).max()) if "y" in df and len(df) else float("nan")


def collect_results(cfg: AdaptConfig, out_dir: str | Path) -> pd.DataFrame:
    """The tidy table of every finished run: one row per fraction / seed / evaluation set / split / metric.

    Each row also carries the evaluation set's majority-class rate (accuracy of always guessing the commonest
    class); under cv, the run's `repeat` and `fold` and the fold's `n_train` / `n_test` (for the corrected t-test).
    """
    meta = {"experiment": Path(out_dir).name, "dataset": read_card(cfg.card)[0].name, "task": cfg.task,
            "policy": cfg.policy, "encoder": cfg.encoder}
    sizes = None if cfg.cv is None else fold_sizes(cv_folds(cfg)).set_index(["repeat", "fold"])
    rows = []
    for fraction, seed, repeat, fold in run_keys(cfg):
        run = run_path(out_dir, fraction, seed, repeat, fold)
        summary = RunDir(run, STAGE, cfg.single(fraction, seed, repeat, fold)).summary()
        keys = {"fraction": fraction, "seed": seed}
        if sizes is not None:
            keys |= {"repeat": repeat, "fold": fold, **{k: int(v) for k, v in sizes.loc[(repeat, fold)].items()}}
        sets = {INTERNAL: summary["metrics"], **summary.get("external", {})}
        for eval_set, metrics in sets.items():
            where = run if eval_set == INTERNAL else run / EXTERNAL_DIR / eval_set
            for row in tidy_rows(metrics, **meta, **keys, eval_set=eval_set):
                row["majority_rate"] = majority_rate(where / f"predictions_{row['split']}.parquet")
                rows.append(row)
    return pd.DataFrame(rows).astype({"majority_rate": np.float64}) if rows else pd.DataFrame(rows)
