"""The condition vocabulary every stage shares: age bands, sex codes and a card's task labels under a generator's
task names, in one place.

Age is grouped into bands by edges (default: the papers' <40, 40-70 and >=70 years, as 0-40, 40-70, 70-120).
A band is labelled 'lo-hi' everywhere (generator conditions, targets, fairness, key metadata); the consortium
summary writes the same bands as '[lo,hi)', the interval form its bundle format fixes. Sex is normalised to
'F' / 'M' from any spelling that starts with F or M ('female', 'm', ...); anything else is unknown.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from synthfm.data.manifest import CardData
from synthfm.errors import SynthfmError

AGE_EDGES = (0.0, 40.0, 70.0, 120.0)
SEXES = ("F", "M")


def band_index(ages: Any, edges: Sequence[float], *, clip: bool = True) -> np.ndarray:
    """Band index per age; missing -1. clip: the outer bands are open-ended, else an age outside the edges is -1."""
    ages = np.asarray(ages, dtype=float)
    edges = np.asarray(edges, dtype=float)
    idx = np.searchsorted(edges, ages, side="right") - 1
    if clip:
        idx = np.clip(idx, 0, len(edges) - 2)
    ok = np.isfinite(ages) & (idx >= 0) & (idx < len(edges) - 1)
    return np.where(ok, idx, -1)


def band_labels(edges: Sequence[float]) -> tuple[str, ...]:
    """Every band's label, 'lo-hi'."""
    return tuple(f"{a:g}-{b:g}" for a, b in itertools.pairwise(edges))


def band_label(edges: Sequence[float], age: float) -> str | None:
    """The label of the band holding one age (outer bands open-ended; missing: None)."""
    k = int(band_index(age, edges))
    return band_labels(edges)[k] if k >= 0 else None


def interval_labels(edges: Sequence[float]) -> list[str]:
    """Every band's label in the consortium summary's interval form, '[lo,hi)'."""
    return [f"[{a:g},{b:g})" for a, b in itertools.pairwise(edges)]


def age_bands(ages: pd.Series, edges: Sequence[float] = AGE_EDGES) -> pd.Series:
    """The band label of every age of a column (numbers parsed; missing or unparsable stays missing)."""
    idx = band_index(pd.to_numeric(ages, errors="coerce").to_numpy(dtype=float, na_value=np.nan), edges)
    labels = np.array(band_labels(edges), dtype=object)
    out = pd.Series(pd.NA, index=ages.index, dtype="string")
    out[idx >= 0] = labels[idx[idx >= 0]]
    return out


def normalise_sex(value: Any) -> str | None:
    """'female', 'F', ' m ', ... -> 'F' / 'M'; anything else (missing included) -> None."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return None
    text = str(value).strip().upper()[:1]
    return text if text in SEXES else None


def sex_codes(values: pd.Series) -> np.ndarray:
    """Index into SEXES per row: F -> 0, M -> 1, anything else -> -1."""
    return np.array([SEXES.index(s) if (s := normalise_sex(v)) else -1 for v in values.tolist()], dtype=np.int64)


def mapped_task_labels(data: CardData, task_map: dict[str, str], classes: dict[str, list[str]],
                       where: str) -> dict[str, np.ndarray]:
    """A card's single-label task labels (class indices) under a generator's task names (`task_map`: card task ->
    generator task; unmapped names kept); tasks the generator lacks are skipped, a class-count mismatch is an error."""
    out: dict[str, np.ndarray] = {}
    for task in data.card.tasks:
        name = task_map.get(task.name, task.name)
        if name in classes and task.type != "multilabel":
            if len(task.classes) != len(classes[name]):
                raise SynthfmError(f"{where}: task '{task.name}' has {len(task.classes)} classes, the generator's "
                                   f"'{name}' has {len(classes[name])}", "map it to a matching task (task_map)")
            out[name] = data.labels[task.name]
    return out
