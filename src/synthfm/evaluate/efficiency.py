"""Label efficiency: the score-vs-label-fraction curve of each model, and the labels a model needs to match another.

"Fraction of labels model A needs to match model B at 100%" is read off A's mean curve (over seeds): the first
point where it reaches B's mean at the largest fraction, linearly interpolated between the two label fractions
around the crossing. If A never reaches it the answer is "not reached" (NaN); if A's smallest fraction already
reaches it, that smallest fraction is an upper bound (the curve says nothing below it).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from synthfm.errors import SynthfmError
from synthfm.evaluate.results import INTERNAL, load_results, summary_table
from synthfm.runs import METRICS_FILE, read_header, read_jsonl

MODEL = ("experiment",)
FINETUNE_CURVE = "finetune_curve"
CURVE_COLUMNS = ("fraction", "n", "mean", "ci_low", "ci_high", "boot_low", "boot_high")


def _select(results: pd.DataFrame, metric: str, split: str, eval_set: str) -> pd.DataFrame:
    """The rows of one metric, split and evaluation set (an error when there are none)."""
    sel = results[(results["metric"] == metric) & (results["split"] == split)
                  & (results.get("eval_set", INTERNAL) == eval_set)]
    if sel.empty:
        raise SynthfmError(f"no results for metric '{metric}', split '{split}', evaluation set '{eval_set}'",
                           f"choose from metrics {sorted(results['metric'].unique())}, splits "
                           f"{sorted(results['split'].unique())}")
    return sel


def label_curve(results: pd.DataFrame | str, metric: str = "auroc", split: str = "test", eval_set: str = INTERNAL,
                by: Sequence[str] = MODEL) -> pd.DataFrame:
    """Per model (`by`) and label fraction: seeds n, mean, 95% CI (1.96·sd/√n) and bootstrap CI."""
    sel = _select(load_results(results), metric, split, eval_set)
    curve = summary_table(sel, by=[*by, "fraction"])
    return curve[[*by, *CURVE_COLUMNS]].assign(metric=metric, split=split, eval_set=eval_set)


def fraction_to_match(fractions: Sequence[float], means: Sequence[float], target: float) -> float:
    """The label fraction where a mean curve first reaches `target` (linear interpolation); NaN if it never does."""
    f, m = np.asarray(fractions, dtype=float), np.asarray(means, dtype=float)
    order = np.argsort(f)
    f, m = f[order], m[order]
    above = np.flatnonzero(m >= target)
    if len(above) == 0:
        return float("nan")
    i = int(above[0])
    if i == 0:
        return float(f[0])
    return float(f[i - 1] + (target - m[i - 1]) * (f[i] - f[i - 1]) / (m[i] - m[i - 1]))


def labels_needed(results: pd.DataFrame | str, reference: str, metric: str = "auroc", split: str = "test",
                  eval_set: str = INTERNAL, by: str = MODEL[0]) -> pd.DataFrame:
    """For every model: the label fraction it needs to match `reference` at its largest fraction (100%)."""
    curve = label_curve(results, metric, split, eval_set, by=[by])
    ref = curve[curve[by] == reference]
    if ref.empty:
        raise SynthfmError(f"reference model {reference!r} not in the results' '{by}' column",
                           f"use one of {sorted(curve[by].unique())}")
    top = ref.loc[ref["fraction"].idxmax()]
    rows = []
    for model, g in curve.groupby(by, sort=True):
        needed = fraction_to_match(g["fraction"], g["mean"], top["mean"])
        smallest = float(g["fraction"].min())
        note = ("not reached" if np.isnan(needed) else
                f"at most {smallest:g} (reached at the smallest fraction tried)" if needed == smallest else
                f"{needed:.3g}")
        rows.append({by: model, "reference": reference, "reference_fraction": float(top["fraction"]),
                     "target": float(top["mean"]), "fraction_needed": needed, "reached": not np.isnan(needed),
                     "note": note, "metric": metric, "split": split, "eval_set": eval_set})
    return pd.DataFrame(rows)


# ---- training-time efficiency ------------------------------------------------------------------------------
def _created(run: Path) -> float | None:
    """When a run directory was created (its config header), as a Unix time."""
    header = read_header(run)
    try:
        return datetime.strptime(str(header.get("created")), "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError:
        return None


def epoch_seconds(records: list[dict], start: float | None) -> list[float]:
    """Seconds each epoch record took: the gap to the record before (the first: since `start`); an epoch logged
    right after a resume (a kill and restart) gets the median of the others instead of the gap."""
    gaps, resumed, last = [], set(), start
    for r in records:
        if "event" in r:
            resumed.add(len(gaps))
            continue
        gaps.append(float(r["time"]) - last if last is not None else float("nan"))
        last = float(r["time"])
    clean = [g for i, g in enumerate(gaps) if i not in resumed and np.isfinite(g)]
    fill = float(np.median(clean)) if clean else float("nan")
    return [fill if (i in resumed or not np.isfinite(g)) else g for i, g in enumerate(gaps)]


def epoch_records(exp: str | Path, metric: str = "auroc") -> pd.DataFrame:
    """One row per run and epoch of an adaptation experiment: label fraction, run, epoch, the validation
    `metric` logged after that epoch, and the training seconds up to it."""
    rows = []
    for log in sorted(Path(exp).rglob(METRICS_FILE)):
        run = log.parent
        fraction = next((float(p.removeprefix("fraction_")) for p in run.relative_to(exp).parts
                         if p.startswith("fraction_")), None)
        records = [r for r in read_jsonl(log) if "epoch" in r or "event" in r]
        if fraction is None or not any(f"val_{metric}" in r for r in records):
            continue
        seconds = np.cumsum(epoch_seconds(records, _created(run)))
        epochs = [r for r in records if "event" not in r]
        rows += [{"fraction": fraction, "run": str(run.relative_to(exp)), "epoch": int(r["epoch"]) + 1,
                  "value": float(r[f"val_{metric}"]), "seconds": float(s)}
                 for r, s in zip(epochs, seconds, strict=True)]
    return pd.DataFrame(rows, columns=["fraction", "run", "epoch", "value", "seconds"])


def finetune_curve(exp: str | Path, metric: str = "auroc") -> pd.DataFrame:
    """Training-time efficiency: per label fraction and epoch, the validation metric over runs (mean, 95% CI) and
    the mean training seconds to that epoch."""
    records = epoch_records(exp, metric)
    if records.empty:
        return pd.DataFrame(columns=["fraction", "epoch", *CURVE_COLUMNS[1:], "seconds", "metric"])
    curve = summary_table(records, by=["fraction", "epoch"])
    secs = records.groupby(["fraction", "epoch"])["seconds"].mean().rename("seconds").reset_index()
    return curve.merge(secs, on=["fraction", "epoch"]).assign(metric=f"val_{metric}")
