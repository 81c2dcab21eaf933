"""Run an adaptation config over every (label fraction, seed), each in its own resumable run directory."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from synthfm.adapt.config import AdaptConfig
from synthfm.adapt.export import write_model_card
from synthfm.adapt.external import resolve_externals
from synthfm.adapt.probes import collect_probes, missing_probes
from synthfm.adapt.trainer import STAGE, adapt_one
from synthfm.data.card import read_card
from synthfm.evaluate.probes import write_probe_tables
from synthfm.evaluate.results import INTERNAL, RESULTS, load_results, tidy_rows, write_tables
from synthfm.runs import RunDir


def run_path(out_dir: str | Path, fraction: float, seed: int) -> Path:
    """The run directory of one (label fraction, seed)."""
    return Path(out_dir) / f"fraction_{fraction:g}" / f"seed_{seed}"


def run_experiment(cfg: AdaptConfig, out_dir: str | Path) -> pd.DataFrame:
    """Adapt for every fraction × seed (finished runs are skipped), then write the results tables."""
    resolve_externals(cfg)  # a wrong external mapping fails here, before any training
    top = RunDir(out_dir, f"{STAGE}.experiment", cfg)
    if top.open() == "done" and not missing_probes(cfg, out_dir):
        return load_results(out_dir)
    for fraction in cfg.label_fractions:
        for seed in cfg.seeds:
            single = cfg.single(fraction, seed)
            if not RunDir(run_path(out_dir, fraction, seed), STAGE, single).is_complete:
                adapt_one(single, run_path(out_dir, fraction, seed))
    results = collect_results(cfg, out_dir)
    write_tables(results, out_dir)
    write_probe_tables(collect_probes(cfg, out_dir), out_dir, cfg.val_split)
    write_model_card(out_dir)  # README.md: the adapted model's card (export writes the loadable folder)
    top.complete(runs=len(cfg.label_fractions) * len(cfg.seeds), results=f"{RESULTS}.parquet")
    return results


def collect_results(cfg: AdaptConfig, out_dir: str | Path) -> pd.DataFrame:
    """The tidy table of every finished run: one row per fraction / seed / evaluation set / split / metric."""
    meta = {"experiment": Path(out_dir).name, "dataset": read_card(cfg.card)[0].name, "task": cfg.task,
            "policy": cfg.policy, "encoder": cfg.encoder}
    rows = []
    for fraction in cfg.label_fractions:
        for seed in cfg.seeds:
            summary = RunDir(run_path(out_dir, fraction, seed), STAGE, cfg.single(fraction, seed)).summary()
            sets = {INTERNAL: summary["metrics"], **summary.get("external", {})}
            for eval_set, metrics in sets.items():
                rows += tidy_rows(metrics, **meta, fraction=fraction, seed=seed, eval_set=eval_set)
    return pd.DataFrame(rows)
