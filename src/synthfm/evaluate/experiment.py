"""`synthfm evaluate EXP...`: fairness tables from every run's saved predictions, and the label-efficiency curve.

Each run of an adaptation experiment saved its per-image predictions with the card's metadata columns
(`predictions_<split>.parquet`, `external/<set>/predictions_<split>.parquet`); this reads them back, so no
model is run again. Tables go to `EXP/fairness/`, `EXP/label_curve.*` and `EXP/finetune_curve.*` (the validation
score after every training epoch, with the training seconds to it: see `evaluate.efficiency`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from synthfm.config import dump_config
from synthfm.data.card import read_card
from synthfm.evaluate.efficiency import FINETUNE_CURVE, finetune_curve, label_curve
from synthfm.evaluate.fairness import FairnessConfig, fairness_frames
from synthfm.evaluate.predictions import (
    ExperimentGrid,
    prediction_files,
    read_experiment,
    read_predictions,
    run_keys,
    run_path,
)
from synthfm.evaluate.results import (
    FAIRNESS_DIR,
    LABEL_CURVE,
    SUMMARY_COLUMNS,
    load_results,
    summary_table,
)
from synthfm.io import atomic_write_text, write_table_pair

KEYS = ["eval_set", "split", "fraction"]
GROUP_KEYS = [*KEYS, "attribute", "group"]


def fairness_runs(exp: Path, cfg: ExperimentGrid, fcfg: FairnessConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Subgroup and gap rows of every (fraction, seed[, repeat, fold], evaluation set, split) of an experiment."""
    task_type = read_card(cfg.card)[0].task(cfg.task).type
    subgroups, gaps = [], []
    for fraction, seed, repeat, fold in run_keys(cfg):
        cv = {} if repeat is None else {"repeat": repeat, "fold": fold}
        for eval_set, split, path in prediction_files(run_path(exp, fraction, seed, repeat, fold), cfg.test_splits):
            frame = pd.read_parquet(path)
            _, y, p = read_predictions(frame)
            sub, gap = fairness_frames(task_type, frame, y, p, fcfg)
            keys = {"eval_set": eval_set, "split": split, "fraction": fraction, "seed": seed, **cv}
            subgroups.append(sub.assign(**keys))
            gaps.append(gap.assign(**keys))
    return _front(pd.concat(subgroups, ignore_index=True)), _front(pd.concat(gaps, ignore_index=True))


def _front(df: pd.DataFrame) -> pd.DataFrame:
    """Key columns first."""
    keys = [c for c in [*KEYS, "seed", "attribute", "group"] if c in df]
    return df[keys + [c for c in df.columns if c not in keys]]


def subgroup_summary(subgroups: pd.DataFrame) -> pd.DataFrame:
    """Per subgroup and metric over seeds: mean, 95% CIs; too-small groups get one row with no numbers."""
    if subgroups.empty:
        return pd.DataFrame(columns=[*GROUP_KEYS, "images", "too_small", "metric", *SUMMARY_COLUMNS])
    fixed = [*GROUP_KEYS, "seed", "n", "too_small", *(c for c in ("repeat", "fold") if c in subgroups)]
    metrics = [c for c in subgroups.columns if c not in fixed and not c.endswith(("_low", "_high"))]
    long = subgroups.melt(id_vars=fixed, value_vars=metrics, var_name="metric")
    stats = summary_table(long[~long["too_small"]].dropna(subset=["value"]), by=[*GROUP_KEYS, "metric"])
    sizes = subgroups.groupby(GROUP_KEYS, sort=True).agg(images=("n", "max"), too_small=("too_small", "any"))
    return sizes.reset_index().merge(stats, on=GROUP_KEYS, how="left")


def evaluate_experiment(exp: str | Path, fcfg: FairnessConfig | None = None, metric: str = "auroc",
                        ) -> dict[str, pd.DataFrame]:
    """Write and return the fairness tables and the label curve (of `metric`) of one finished experiment."""
    exp, fcfg = Path(exp), fcfg or FairnessConfig()
    cfg = read_experiment(exp)
    subgroups, gaps = fairness_runs(exp, cfg, fcfg)
    gap_summary = summary_table(gaps.reindex(columns=[*KEYS, "attribute", "metric", "value"]),
                                by=[*KEYS, "attribute", "metric"])
    results = load_results(exp)
    curve = pd.concat([label_curve(results, metric, split, eval_set) for eval_set, split in
                       results[["eval_set", "split"]].drop_duplicates().itertuples(index=False)
                       if split != cfg.val_split], ignore_index=True)
    tables = {"subgroups": subgroups, "subgroup_summary": subgroup_summary(subgroups), "gaps": gaps,
              "gap_summary": gap_summary}
    tables = {name: df.assign(experiment=exp.name) for name, df in tables.items()}
    for name, df in tables.items():
        write_table_pair(df, exp / FAIRNESS_DIR / name)
    atomic_write_text(exp / FAIRNESS_DIR / "config.yaml", dump_config(fcfg))
    write_table_pair(curve, exp / LABEL_CURVE)
    epochs = finetune_curve(exp, metric)  # training-time efficiency: the validation score after every epoch
    write_table_pair(epochs, exp / FINETUNE_CURVE)
    return {**tables, LABEL_CURVE: curve, FINETUNE_CURVE: epochs}
