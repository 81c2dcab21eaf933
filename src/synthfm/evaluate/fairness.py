"""Subgroup fairness: metrics per age band / sex / ethnicity / site, gaps, and equalised-odds difference."""

from __future__ import annotations

import numpy as np
import pandas as pd

from synthfm.evaluate.metrics import task_metrics

AGE_BANDS = ((0.0, 40.0, "<40"), (40.0, 70.0, "40-70"), (70.0, 200.0, ">70"))


def age_band(age: pd.Series) -> pd.Series:
    """Age in the paper's bands: <40, 40–70, >70 (missing stays missing)."""
    a = pd.to_numeric(age, errors="coerce")
    out = pd.Series(pd.NA, index=age.index, dtype="string")
    for lo, hi, name in AGE_BANDS:
        out[(a >= lo) & (a < hi)] = name
    return out


def _rates(y: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """True- and false-positive rates of binary predictions."""
    pos, neg = y == 1, y == 0
    tpr = float(pred[pos].mean()) if pos.any() else float("nan")
    fpr = float(pred[neg].mean()) if neg.any() else float("nan")
    return tpr, fpr


def subgroup_table(task_type: str, y: np.ndarray, p: np.ndarray, groups: pd.Series,
                   min_n: int = 30, min_per_class: int = 5) -> pd.DataFrame:
    """One row per subgroup: n, metrics, and whether it is too small to report numbers for."""
    rows = []
    y, p = np.asarray(y), np.asarray(p)
    for g in sorted(groups.dropna().unique(), key=str):
        sel = (groups == g).to_numpy()
        yy = y[sel]
        counts = np.bincount(yy.astype(int).ravel()) if yy.ndim == 1 else yy.sum(0)
        small = sel.sum() < min_n or len(counts) < 2 or counts.min() < min_per_class
        row = {"group": str(g), "n": int(sel.sum()), "too_small": bool(small)}
        if not small:
            row |= task_metrics(task_type, yy, p[sel])
            if task_type == "binary":
                row["tpr"], row["fpr"] = _rates(yy.astype(int), (p[sel] >= 0.5).astype(int))
        rows.append(row)
    return pd.DataFrame(rows)


def gaps(table: pd.DataFrame, metric: str = "auroc") -> dict[str, float]:
    """Largest minus smallest metric across reportable groups, and the equalised-odds difference."""
    ok = table[~table["too_small"]] if "too_small" in table else table
    out = {f"{metric}_gap": float(ok[metric].max() - ok[metric].min()) if len(ok) > 1 else float("nan")}
    if {"tpr", "fpr"} <= set(ok.columns) and len(ok) > 1:
        out["equalised_odds_difference"] = float(max(np.ptp(ok["tpr"]), np.ptp(ok["fpr"])))
    return out
