"""Tidy results over label fractions and seeds: summary with CIs, and paired comparisons of two experiments."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from synthfm.errors import SynthfmError
from synthfm.evaluate.stats import holm, shapiro, summarise, t_test
from synthfm.io import atomic_path

RESULTS = "results"
SUMMARY = "summary"
GROUP = ("dataset", "task", "policy", "encoder", "fraction", "split", "metric")
PAIR = ("dataset", "task", "fraction")


def tidy_rows(metrics: dict[str, dict[str, float]], **meta: Any) -> list[dict[str, Any]]:
    """One row per (split, metric) of a run's metrics, with the run's descriptors."""
    return [{**meta, "split": split, "metric": name, "value": float(value)}
            for split, values in metrics.items() for name, value in values.items()]


def summary_table(results: pd.DataFrame, by: Sequence[str] = GROUP) -> pd.DataFrame:
    """Per group: n, mean, sd, 95% CI as mean ± 1.96·sd/√n, and a percentile bootstrap CI of the mean."""
    by = [c for c in by if c in results.columns]
    rows = []
    for keys, g in results.groupby(by, sort=True, dropna=False):
        s = summarise(g["value"].dropna().to_numpy())
        rows.append({**dict(zip(by, keys, strict=True)), "n": s.n, "mean": s.mean, "sd": s.sd,
                     "ci_low": s.mean - s.ci_half_width, "ci_high": s.mean + s.ci_half_width,
                     "boot_low": s.boot_low, "boot_high": s.boot_high})
    return pd.DataFrame(rows)


def write_tables(results: pd.DataFrame, out_dir: str | Path) -> pd.DataFrame:
    """Write results and their summary as Parquet and CSV (atomically); return the summary."""
    summary = summary_table(results)
    for name, df in ((RESULTS, results), (SUMMARY, summary)):
        for suffix in (".parquet", ".csv"):
            with atomic_path(Path(out_dir) / f"{name}{suffix}", suffix) as tmp:
                df.to_parquet(tmp, index=False) if suffix == ".parquet" else df.to_csv(tmp, index=False)
    return summary


def load_results(source: str | Path | pd.DataFrame) -> pd.DataFrame:
    """A results table: a DataFrame, a results file, or an experiment directory holding results.parquet."""
    if isinstance(source, pd.DataFrame):
        return source
    path = Path(source)
    if path.is_dir():
        path = path / f"{RESULTS}.parquet"
    if not path.is_file():
        raise SynthfmError(f"no results table at {path}", "point at an adaptation experiment directory")
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def compare(results_a: str | Path | pd.DataFrame, results_b: str | Path | pd.DataFrame, metric: str = "auroc",
            split: str = "test", by: Sequence[str] = PAIR) -> pd.DataFrame:
    """A vs B per (dataset, task, fraction): paired two-sided t-test over shared seeds, Holm across rows."""
    pick = [*by, "seed", "value"]
    a, b = (load_results(r) for r in (results_a, results_b))
    a, b = ((df[(df["metric"] == metric) & (df["split"] == split)])[pick] for df in (a, b))
    both = a.merge(b, on=[*by, "seed"], suffixes=("_a", "_b"))
    rows = [_paired(dict(zip(by, keys, strict=True)), g) for keys, g in both.groupby(list(by), sort=True)]
    if not rows:
        raise SynthfmError(f"no {split} {metric} rows with matching {list(by)} and seed in both results",
                           "compare experiments run on the same cards, fractions and seeds")
    table = pd.DataFrame(rows)
    table["p_holm"] = holm(table["p"].to_numpy())
    table["significant"] = table["p_holm"] < 0.05
    return table


def _paired(keys: dict[str, Any], g: pd.DataFrame) -> dict[str, Any]:
    """Paired statistics of one group's A and B values (matched by seed)."""
    va, vb = g["value_a"].to_numpy(), g["value_b"].to_numpy()
    t, p = t_test(va, vb, paired=True) if len(g) > 1 else (np.nan, np.nan)
    w, pw = shapiro(va - vb)
    return {**keys, "n": len(g), "mean_a": va.mean(), "mean_b": vb.mean(), "mean_diff": (va - vb).mean(),
            "t": t, "p": p, "shapiro_w": w, "shapiro_p": pw}
