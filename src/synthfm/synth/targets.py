"""Conditions that match a target: a real card's joint label x age-band x sex distribution."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field

from synthfm.config import StrictModel
from synthfm.data.manifest import load_card
from synthfm.data.vocabulary import AGE_EDGES, band_index, mapped_task_labels, normalise_sex
from synthfm.errors import SynthfmError


class TargetConfig(StrictModel):
    """Which real card to match, and how its task names map onto the generator's."""

    card: str
    task_map: dict[str, str] = Field(default_factory=dict, description="real task name -> generator task name")
    age_edges: tuple[float, ...] = AGE_EDGES


def joint_table(card: str | Path, cfg: TargetConfig, tasks: dict[str, list[str]]) -> pd.DataFrame:
    """One row per real image: generator task labels (class index), age band and sex where recorded."""
    data = load_card(card, check_files=False)
    cols: dict[str, Any] = dict(mapped_task_labels(data, cfg.task_map, tasks, f"card {card}"))
    meta = data.card.metadata
    if meta.age:
        ages = pd.to_numeric(data.df[meta.age], errors="coerce").to_numpy(dtype=float)
        cols["age_band"] = band_index(ages, cfg.age_edges)
        cols["_age"] = ages
    if meta.sex:
        cols["sex"] = [normalise_sex(v) for v in data.df[meta.sex]]
    if not cols:
        raise SynthfmError(f"{card} shares no task, age or sex with the generator",
                           "declare task_map, or metadata.age / metadata.sex in the card")
    return pd.DataFrame(cols).dropna()


def target_conditions(table: pd.DataFrame, n: int, seed: int, edges: tuple[float, ...],
                      age_range: tuple[float, float]) -> list[dict[str, Any]]:
    """Draw n conditions from the empirical joint distribution; ages uniform within the drawn band."""
    rng = np.random.default_rng(seed)
    rows = table.iloc[rng.integers(0, len(table), n)]
    out = []
    for rec in rows.to_dict("records"):
        cond = {k: (int(v) if k != "sex" else v) for k, v in rec.items() if not k.startswith("_") and k != "age_band"}
        if "age_band" in rec:
            band = int(rec["age_band"])
            lo, hi = max(edges[band], age_range[0]), min(edges[band + 1], age_range[1])
            cond["age"] = float(rng.uniform(lo, max(hi, lo + 1e-3)))
        out.append(cond)
    return out
