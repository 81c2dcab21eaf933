"""Every readout of a linear probe experiment, and the pooling chosen on validation data only.

A linear probe run also scores a linear probe on every pooling of its encoder and a k-NN on each
(adapt/probes.py). An experiment writes them beside its results tables:

| file | one row per |
| --- | --- |
| `EXP/probes.*` | fraction x seed x readout (`linear`, `knn`) x pool x split x metric (`value`), internal eval set |
| `EXP/pool_choice.*` | linear pool: its mean validation AUROC over the experiment's runs, n, and `chosen` |

`EXP/results.*` stays the configured head's rows (what every other table reads). Comparisons across encoders
(evaluate/arms.py) take, per experiment, the linear probe on the pooling with the best mean validation AUROC
(`choose_pool`): the choice reads validation rows only, so test rows never influence which pooling is reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from synthfm.errors import SynthfmError
from synthfm.evaluate.results import INTERNAL, tidy_rows
from synthfm.io import write_table_pair

PROBES = "probes"
POOL_CHOICE = "pool_choice"
LINEAR = "linear"
SELECT_METRIC = "auroc"
CHOICE_COLUMNS = ("readout", "pool", "metric", "split", "n", "mean", "chosen")


def probe_rows(probes: dict[str, dict[str, dict[str, float]]], **meta: Any) -> list[dict[str, Any]]:
    """Tidy rows of a run's `probes` summary ({'<readout>:<pool>': {split: {metric: value}}}), in key order."""
    rows = []
    for key, metrics in sorted(probes.items()):
        readout, pool = key.split(":", 1)
        rows += tidy_rows(metrics, **meta, readout=readout, pool=pool)
    return rows


def choose_pool(probes: pd.DataFrame, val_split: str = "val", by: Sequence[str] = ("experiment",),
                metric: str = SELECT_METRIC) -> pd.DataFrame:
    """Per group (`by`, e.g. an arm): each linear pool's mean validation `metric` over runs; the best is chosen.

    Only rows of `val_split` are read, so the choice cannot depend on test results. Ties go to the pooling
    listed first in the table; a pool whose validation mean is NaN is never chosen over one that has a value.
    """
    sel = probes[(probes["readout"] == LINEAR) & (probes["split"] == val_split) & (probes["metric"] == metric)
                 & (probes.get("eval_set", INTERNAL) == INTERNAL)]
    if sel.empty:
        raise SynthfmError(f"no linear-probe {metric} rows on validation split '{val_split}' to choose a pooling",
                           "choose the pooling on the experiment's validation split (val_split of its config)")
    by = [c for c in by if c in sel.columns]
    parts = []
    for keys, g in sel.groupby(by, sort=False) if by else [((), sel)]:
        stats = g.groupby("pool", sort=False)["value"].agg(["count", "mean"]).reset_index()
        stats = stats.rename(columns={"count": "n"})
        best = stats["mean"].idxmax() if stats["mean"].notna().any() else stats.index[0]
        stats["chosen"] = stats.index == best
        parts.append(stats.assign(**dict(zip(by, keys if isinstance(keys, tuple) else (keys,), strict=True)),
                                  readout=LINEAR, metric=metric, split=val_split))
    return pd.concat(parts, ignore_index=True)[[*by, *CHOICE_COLUMNS]]


def headline_rows(probes: pd.DataFrame, choice: pd.DataFrame, by: Sequence[str] = ("experiment",)) -> pd.DataFrame:
    """The chosen linear pool's rows of every split and metric, as results rows (with a `pool` column)."""
    by = [c for c in by if c in probes.columns and c in choice.columns]
    chosen = choice.loc[choice["chosen"], [*by, "pool"]]
    lin = probes[probes["readout"] == LINEAR]
    return lin.merge(chosen, on=[*by, "pool"]).drop(columns="readout")


def write_probe_tables(rows: list[dict[str, Any]], out_dir: str | Path, val_split: str) -> pd.DataFrame | None:
    """Write `probes` and `pool_choice` (Parquet + CSV) for an experiment; None when its runs have no probes."""
    if not rows:
        return None
    probes = pd.DataFrame(rows)
    write_table_pair(probes, Path(out_dir) / PROBES)
    write_table_pair(choose_pool(probes, val_split), Path(out_dir) / POOL_CHOICE)
    return probes


def read_probes(exp: str | Path) -> tuple[pd.DataFrame, str] | None:
    """An experiment's probes table (experiment = its folder's name) and the validation split it chooses on."""
    exp = Path(exp)
    table, choice = exp / f"{PROBES}.parquet", exp / f"{POOL_CHOICE}.parquet"
    if not (table.is_file() and choice.is_file()):
        return None
    probes = pd.read_parquet(table).drop(columns="experiment", errors="ignore").assign(experiment=exp.name)
    return probes, str(pd.read_parquet(choice)["split"].iloc[0])
