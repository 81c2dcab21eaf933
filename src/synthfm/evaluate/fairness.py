"""Subgroup fairness: metrics per age band / sex / ethnicity / site with bootstrap CIs, gaps, equalised odds.

A subgroup with fewer than `min_n` images, or fewer than `min_per_class` of some class, is reported as too
small (its metrics are missing, never numbers). The gap of an attribute is the largest minus the smallest
metric over its reportable groups; the equalised-odds difference is the largest spread across those groups of
a true- or false-positive rate (binary: at `threshold`; multi-class and multilabel: one-vs-rest per class).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import Field
from scipy.stats import rankdata

from synthfm.config import StrictModel
from synthfm.data.manifest import ID, CardData
from synthfm.data.vocabulary import AGE_EDGES, age_bands
from synthfm.evaluate.metrics import task_metrics

IMAGE_ID = "image_id"
RATE_PREFIXES = ("tpr", "fpr")


class FairnessConfig(StrictModel):
    """Which attributes to split by, when a subgroup is too small, and the bootstrap of subgroup metrics."""

    attributes: list[str] = Field(default_factory=lambda: ["age", "sex", "ethnicity", "site"],
                                  description="card metadata fields; 'age' is grouped into bands (age_edges)")
    age_edges: list[float] = Field(default_factory=lambda: list(AGE_EDGES), min_length=2,
                                   description="age band edges: the papers' <40, 40-70, >=70 by default, labelled "
                                               "0-40, 40-70, 70-120 (outer bands open-ended)")
    min_n: int = Field(30, ge=1, description="fewer images than this: reported as too small")
    min_per_class: int = Field(5, ge=1, description="fewer images of some class than this: too small")
    threshold: float = Field(0.5, gt=0, lt=1, description="binary / multilabel decision threshold for the rates")
    n_boot: int = Field(1000, ge=0, description="bootstrap resamples of each subgroup's AUROC (0: no CI)")
    seed: int = 0


def row_metadata(data: CardData, rows: np.ndarray) -> pd.DataFrame:
    """The image id and the card's metadata fields (age, sex, ethnicity, site, ...) of manifest rows."""
    df = data.df.iloc[np.asarray(rows, dtype=np.int64)].reset_index(drop=True)
    cols = {IMAGE_ID: df[ID].astype(str)}
    cols |= {field: df[col] for field, col in data.card.metadata.columns().items() if col in df}
    return pd.DataFrame(cols)


def attribute_groups(frame: pd.DataFrame, attribute: str, age_edges: list[float] | None = None) -> pd.Series:
    """The subgroup of every row for one attribute (age banded; others as text; missing stays missing)."""
    col = frame[attribute]
    return age_bands(col, age_edges or AGE_EDGES) if attribute == "age" else col.astype("string")


def rates(task_type: str, y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """True/false-positive rates: binary at `threshold`; otherwise one-vs-rest per class (`tpr_<k>`, `fpr_<k>`)."""
    y, p = np.asarray(y).astype(int), np.asarray(p, dtype=float)
    if task_type == "binary":
        pairs = {"": (y, (p.reshape(-1) >= threshold).astype(int))}
    elif task_type == "multilabel":
        pairs = {f"_{k}": (y[:, k], (p[:, k] >= threshold).astype(int)) for k in range(y.shape[1])}
    else:
        pred = p.argmax(1)
        pairs = {f"_{k}": ((y == k).astype(int), (pred == k).astype(int)) for k in range(p.shape[1])}
    out = {}
    for suffix, (truth, pred) in pairs.items():
        pos, neg = truth == 1, truth == 0
        out[f"tpr{suffix}"] = float(pred[pos].mean()) if pos.any() else float("nan")
        out[f"fpr{suffix}"] = float(pred[neg].mean()) if neg.any() else float("nan")
    return out


def _strata(y: np.ndarray) -> np.ndarray:
    """One stratum id per row: the class (or the multilabel row pattern)."""
    return y if y.ndim == 1 else np.unique(y, axis=0, return_inverse=True)[1].reshape(-1)


def _one_vs_rest(y: np.ndarray, p: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(positive mask, scores) per class as the task's macro AUROC averages them (both values present)."""
    if p.ndim == 1:
        pairs = [(y == 1, p)]
    elif y.ndim == 1:
        pairs = [(y == k, p[:, k]) for k in range(p.shape[1])]
    else:
        pairs = [(y[:, k] == 1, p[:, k]) for k in range(p.shape[1])]
    return [(pos, s) for pos, s in pairs if 0 < pos.sum() < len(pos)]


def stratified_resamples(y: np.ndarray, n_boot: int, seed: int = 0) -> np.ndarray:
    """(n_boot, N) row indices: each resample draws every class (label pattern) with replacement, keeping its count."""
    rng = np.random.default_rng(seed)
    strata = _strata(y)
    return np.concatenate([rng.choice(np.flatnonzero(strata == s), (n_boot, int((strata == s).sum())))
                           for s in np.unique(strata)], axis=1)


def bootstrap_auroc(y: np.ndarray, p: np.ndarray, n_boot: int, seed: int = 0) -> tuple[float, float]:
    """Percentile 95% CI of the (macro one-vs-rest) AUROC over class-stratified image resamples.

    Stratified resamples keep every class count, so each resample's AUROC is the Mann-Whitney statistic
    (rank sum of the positives) computed for all resamples at once with scipy's rankdata.
    """
    if n_boot == 0:
        return float("nan"), float("nan")
    idx = stratified_resamples(y, n_boot, seed)
    aucs = []
    for pos, score in _one_vs_rest(y, p):
        pos_b = pos[idx[0]]  # the same in every resample
        n1, n0 = int(pos_b.sum()), int((~pos_b).sum())
        ranks = rankdata(score[idx], axis=1)
        aucs.append((ranks[:, pos_b].sum(1) - n1 * (n1 + 1) / 2) / (n1 * n0))
    lo, hi = np.percentile(np.mean(aucs, axis=0), [2.5, 97.5])
    return float(lo), float(hi)


def too_small(y: np.ndarray, classes: int, min_n: int, min_per_class: int) -> bool:
    """Whether a subgroup has too few images, or too few of some class (or label value), to report."""
    counts = (np.bincount(y.astype(int), minlength=classes) if y.ndim == 1
              else np.concatenate([y.sum(0), len(y) - y.sum(0)]))
    return len(y) < min_n or int(counts.min()) < min_per_class


def subgroup_table(task_type: str, y: np.ndarray, p: np.ndarray, groups: pd.Series, min_n: int = 30,
                   min_per_class: int = 5, cfg: FairnessConfig | None = None) -> pd.DataFrame:
    """One row per subgroup: n, too_small, metrics, rates, and `auroc_low` / `auroc_high` (bootstrap CI)."""
    cfg = cfg or FairnessConfig(min_n=min_n, min_per_class=min_per_class, n_boot=0)
    y, p = np.asarray(y), np.asarray(p, dtype=float)
    classes = 2 if p.ndim == 1 else p.shape[1]
    rows = []
    for g in sorted(groups.dropna().unique(), key=str):
        sel = (groups == g).fillna(False).to_numpy(dtype=bool)
        yy, pp = y[sel], p[sel]
        row = {"group": str(g), "n": int(sel.sum()),
               "too_small": too_small(yy, classes, cfg.min_n, cfg.min_per_class)}
        if not row["too_small"]:
            row |= task_metrics(task_type, yy, pp) | rates(task_type, yy, pp, cfg.threshold)
            row["auroc_low"], row["auroc_high"] = bootstrap_auroc(yy, pp, cfg.n_boot, cfg.seed)
        rows.append(row)
    return pd.DataFrame(rows)


def gaps(table: pd.DataFrame, metric: str = "auroc") -> dict[str, float]:
    """Largest minus smallest metric across reportable groups, and the equalised-odds difference."""
    ok = table[~table["too_small"]] if "too_small" in table else table
    out = {f"{metric}_gap": float(ok[metric].max() - ok[metric].min()) if len(ok) > 1 else float("nan")}
    rate_cols = [c for c in ok.columns if c.split("_")[0] in RATE_PREFIXES]
    if rate_cols and len(ok) > 1:
        out["equalised_odds_difference"] = float(np.nanmax([ok[c].max() - ok[c].min() for c in rate_cols]))
    return out


def fairness_frames(task_type: str, frame: pd.DataFrame, y: np.ndarray, p: np.ndarray,
                    cfg: FairnessConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Subgroup rows and gap rows over every configured attribute present in `frame` (the predictions)."""
    tables, gap_rows = [], []
    for attribute in (a for a in cfg.attributes if a in frame.columns):
        table = subgroup_table(task_type, y, p, attribute_groups(frame, attribute, cfg.age_edges), cfg=cfg)
        if table.empty:
            continue
        tables.append(table.assign(attribute=attribute))
        reported = int((~table["too_small"]).sum())
        gap_rows += [{"attribute": attribute, "metric": k, "value": v, "groups_reported": reported}
                     for k, v in gaps(table).items()]
    subgroups = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    return subgroups, pd.DataFrame(gap_rows)
