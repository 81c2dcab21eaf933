"""Tidy results over label fractions and seeds: summary with CIs, paired comparisons, and the tables a report reads.

Where the tables are (every table is written as both `.parquet` and `.csv`, atomically):

| file | written by | one row per |
| --- | --- | --- |
| `EXP/results.*` | `synthfm adapt` | fraction x seed (x repeat x fold under cv) x eval_set x split x metric (`value`) |
| `EXP/summary.*` | `synthfm adapt` | fraction x eval_set x split x metric: n, mean, sd, ci_low/high, boot_low/high |
| `EXP/probes.*`, `pool_choice.*` | `synthfm adapt` (probe) | every pooling's probe and k-NN; the val-chosen pool |
| `EXP/fairness/subgroups.*` | `synthfm evaluate` | fraction x seed x eval_set x split x attribute x group (wide) |
| `EXP/fairness/subgroup_summary.*` | `synthfm evaluate` | ... x attribute x group x metric, over seeds |
| `EXP/fairness/gaps.*`, `gap_summary.*` | `synthfm evaluate` | AUROC gap and equalised-odds difference |
| `EXP/label_curve.*` | `synthfm evaluate` | fraction: mean and CIs of the test metric over seeds |
| `OUT/training_curve.*` | `synthfm efficiency checkpoints` | pretraining step x fraction x split x metric |

`EXP` is an adaptation experiment directory; `load_results(root)` reads one, a list, or every experiment under a
root; `fairness_tables(root)`, `efficiency_curve(root)` and `training_curve(out)` return the other tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from synthfm.errors import SynthfmError
from synthfm.evaluate.stats import (
    PairedTest,
    corrected_resampled_t,
    detectable_difference,
    holm,
    paired_ci,
    paired_test,
    shapiro,
    summarise,
)
from synthfm.io import write_table_pair

RESULTS = "results"
SUMMARY = "summary"
FAIRNESS_DIR = "fairness"
SUBGROUP_SUMMARY, GAP_SUMMARY = "subgroup_summary", "gap_summary"
FAIRNESS_TABLES = ("subgroups", SUBGROUP_SUMMARY, "gaps", GAP_SUMMARY)
LABEL_CURVE = "label_curve"
LABELS_NEEDED = "labels_needed"
COMPARISON_FILE = "comparison.json"
ARMS_FILE = "arms.json"
TRAINING_CURVE = "training_curve"
INTERNAL = "internal"
SUMMARY_COLUMNS = ("n", "mean", "sd", "ci_low", "ci_high", "boot_low", "boot_high")
GROUP = ("experiment", "dataset", "task", "policy", "encoder", "fraction", "eval_set", "split", "metric")
PAIR = ("dataset", "task", "eval_set", "fraction")
CV_KEYS = ("repeat", "fold")
FOLD_SIZES = ("n_train", "n_test")
PAIRED_T = "paired t"
CORRECTED_T = "corrected resampled t"


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
    return pd.DataFrame(rows, columns=[*by, *SUMMARY_COLUMNS])


def write_tables(results: pd.DataFrame, out_dir: str | Path) -> pd.DataFrame:
    """Write results and their summary as Parquet and CSV (atomically); return the summary."""
    summary = summary_table(results)
    for name, df in ((RESULTS, results), (SUMMARY, summary)):
        write_table_pair(df, Path(out_dir) / name)
    return summary


def find_experiments(root: str | Path) -> list[Path]:
    """Experiment directories (holding results.parquet) at or under `root`, sorted."""
    root = Path(root)
    if (root / f"{RESULTS}.parquet").is_file():
        return [root]
    return sorted(p.parent for p in root.rglob(f"{RESULTS}.parquet"))


def _read_experiment(path: Path) -> pd.DataFrame:
    """One results file; `experiment` is its folder's name (a moved experiment keeps no stale name)."""
    df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    df = df.drop(columns="experiment", errors="ignore")
    df.insert(0, "experiment", path.parent.name)
    if "eval_set" not in df:
        df.insert(list(df.columns).index("split"), "eval_set", INTERNAL)
    return df


def load_results(source: str | Path | pd.DataFrame | Sequence[str | Path]) -> pd.DataFrame:
    """Results: a DataFrame, a results file, an experiment directory, a root holding several, or a list of these."""
    if isinstance(source, pd.DataFrame):
        return source
    if not isinstance(source, (str, Path)):
        return pd.concat([load_results(s) for s in source], ignore_index=True)
    path = Path(source)
    files = [e / f"{RESULTS}.parquet" for e in find_experiments(path)] if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise SynthfmError(f"no results table at or under {path}", "point at an adaptation experiment directory")
    return pd.concat([_read_experiment(f) for f in files], ignore_index=True)


def _read_tables(exp: Path, names: Sequence[str], folder: str = "") -> dict[str, pd.DataFrame]:
    """Named Parquet tables of one experiment, with `experiment` set to its folder's name."""
    out = {}
    for name in names:
        path = exp / folder / f"{name}.parquet"
        if not path.is_file():
            raise SynthfmError(f"no table {path}", f"run 'synthfm evaluate {exp}' first")
        out[name] = pd.read_parquet(path).assign(experiment=exp.name)
    return out


def fairness_tables(root: str | Path) -> dict[str, pd.DataFrame]:
    """The fairness tables (subgroups, subgroup_summary, gaps, gap_summary) of every evaluated experiment."""
    found = [_read_tables(e, FAIRNESS_TABLES, FAIRNESS_DIR) for e in find_experiments(root)
             if (e / FAIRNESS_DIR).is_dir()]
    if not found:
        raise SynthfmError(f"no fairness tables at or under {root}", f"run 'synthfm evaluate {root}' first")
    return {n: pd.concat([f[n] for f in found], ignore_index=True) for n in FAIRNESS_TABLES}


def efficiency_curve(root: str | Path) -> pd.DataFrame:
    """The label-efficiency curves (label_curve tables) of every evaluated experiment at or under `root`."""
    found = [_read_tables(e, [LABEL_CURVE])[LABEL_CURVE] for e in find_experiments(root)
             if (e / f"{LABEL_CURVE}.parquet").is_file()]
    if not found:
        raise SynthfmError(f"no label curves at or under {root}", f"run 'synthfm evaluate {root}' first")
    return pd.concat(found, ignore_index=True)


def training_curve(out: str | Path) -> pd.DataFrame:
    """The score-vs-pretraining-step table written by `synthfm efficiency checkpoints` into `out`."""
    path = Path(out) / f"{TRAINING_CURVE}.parquet"
    if not path.is_file():
        raise SynthfmError(f"no training curve at {path}", "run 'synthfm efficiency checkpoints' first")
    return pd.read_parquet(path)


def compare(results_a: str | Path | pd.DataFrame, results_b: str | Path | pd.DataFrame, metric: str = "auroc",
            split: str = "test", by: Sequence[str] = PAIR) -> pd.DataFrame:
    """A vs B per (dataset, task, eval_set, fraction): two-sided paired test, Holm across rows.

    Over seeds it is the paired t-test; over cross-validation folds (results with `repeat`/`fold`) it is the
    Nadeau-Bengio corrected resampled t-test, because folds that share training rows give correlated scores
    and the naive test's variance is too small. Each row also gives `detectable_diff`, the smallest difference
    the test would detect with 80% power (two-sided alpha 0.05) at the observed variance of the differences.
    """
    a, b = (load_results(r) for r in (results_a, results_b))
    by = [c for c in by if c in a and c in b]
    cv = is_cv(a)
    if cv != is_cv(b):
        raise SynthfmError("one side of the comparison is cross-validated and the other is not",
                           "compare experiments run the same way: both with the same 'cv', or both without")
    pair = [*by, "seed", *(CV_KEYS if cv else ())]
    pick = [*pair, "value", *(FOLD_SIZES if cv else ())]
    a, b = ((df[(df["metric"] == metric) & (df["split"] == split)])[pick] for df in (a, b))
    both = a.merge(b, on=pair, suffixes=("_a", "_b"))
    test = _cv_paired if cv else _paired
    rows = [test(dict(zip(by, keys, strict=True)), g) for keys, g in both.groupby(list(by), sort=True)]
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
    test = paired_test(va, vb)
    return _row(keys, va, vb, test, PAIRED_T, None)


def _row(keys: dict[str, Any], va: np.ndarray, vb: np.ndarray, test: PairedTest, name: str,
         ratio: float | None) -> dict[str, Any]:
    """One comparison row: means, the test, Shapiro-Wilk of the differences, and the power line."""
    d = va - vb
    w, pw = shapiro(d)
    sd = float(d.std(ddof=1)) if len(d) > 1 else float("nan")
    mde = float("nan") if np.isnan(test.p) else detectable_difference(sd, len(d), ratio)
    low, high = paired_ci(d)
    if ratio is not None and np.isfinite(low):  # over CV folds: the corrected standard error
        half = (high - low) / 2 * np.sqrt(1 + ratio * len(d))
        low, high = d.mean() - half, d.mean() + half
    return {**keys, "n": len(d), "mean_a": va.mean(), "mean_b": vb.mean(), "mean_diff": d.mean(),
            "diff_ci_low": low, "diff_ci_high": high, "t": test.t, "p": test.p, "shapiro_w": w, "shapiro_p": pw,
            "note": test.note, "test": name,
            "detectable_diff": mde}


def is_cv(results: pd.DataFrame) -> bool:
    """Whether results come from a cross-validated experiment (rows carry a CV fold)."""
    return "fold" in results and bool(results["fold"].notna().any())


def _cv_paired(keys: dict[str, Any], g: pd.DataFrame) -> dict[str, Any]:
    """Nadeau-Bengio corrected resampled t-test of one group over CV (repeat, fold) runs, seeds averaged in each.

    Seeds of one fold share its training and test rows, so they are averaged into one difference per fold;
    n_test / n_train is the folds' mean ratio of test rows to training-part rows.
    """
    if (g["n_test_a"] != g["n_test_b"]).any() or (g["n_train_a"] != g["n_train_b"]).any():
        raise SynthfmError(f"the two experiments' CV folds differ in size at {keys}",
                           "compare experiments cross-validated with the same card, task and cv settings")
    per = g.groupby(list(CV_KEYS), sort=True).agg(a=("value_a", "mean"), b=("value_b", "mean"),
                                                   n_train=("n_train_a", "first"), n_test=("n_test_a", "first"))
    ratio = float((per["n_test"] / per["n_train"]).mean())
    va, vb = per["a"].to_numpy(), per["b"].to_numpy()
    test = corrected_resampled_t(va - vb, n_train=float(per["n_train"].mean()), n_test=float(per["n_test"].mean()))
    return _row(keys, va, vb, test, CORRECTED_T, ratio)
