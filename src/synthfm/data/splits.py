"""Patient-level, label-stratified, seeded splits, written as a new card."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from synthfm.config import StrictModel
from synthfm.data.card import MANIFEST, SPLITS, SplitSpec, write_card
from synthfm.data.manifest import SPLIT, CardData, check_leakage, load_card
from synthfm.errors import SynthfmError
from synthfm.io import atomic_path
from synthfm.locks import folder_lock


class SplitConfig(StrictModel):
    """How to split: ratios for train/val/test, the task to stratify by, the seed, splits to keep."""

    ratios: tuple[float, float, float] = (0.7, 0.1, 0.2)
    stratify: str | None = Field(None, description="task name; default: the card's first task")
    seed: int = 0
    keep: list[str] = Field(default_factory=list, description="existing splits kept as they are, e.g. [test]")

    @field_validator("ratios")
    @classmethod
    def _sum_to_one(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        """Ratios are non-negative and sum to 1."""
        if not all(np.isfinite(v)) or min(v) < 0 or abs(sum(v) - 1.0) > 1e-6:  # NaN compares false: check first
            raise ValueError(f"ratios must be >= 0 and sum to 1, got {v}")
        return v


def _allocate(n: int, ratios: tuple[float, ...]) -> list[int]:
    """Split n items by ratios with largest-remainder rounding."""
    raw = np.asarray(ratios) * n
    counts = np.floor(raw).astype(int)
    for k in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[k] += 1
    return counts.tolist()


def assign_splits(patients: pd.Series, strata: pd.Series, ratios: tuple[float, ...], seed: int) -> pd.Series:
    """Assign each row a split so that patients stay whole and each stratum follows the ratios."""
    per_patient = strata.groupby(patients).agg(lambda s: s.value_counts().index[0])
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    for _, group in per_patient.groupby(per_patient, sort=True):
        ids = group.index.to_numpy()[rng.permutation(len(group))]
        start = 0
        for name, count in zip(SPLITS, _allocate(len(ids), ratios), strict=True):
            assignment.update(dict.fromkeys(ids[start:start + count].tolist(), name))
            start += count
    return patients.map(assignment)


def patient_cuts(patients: np.ndarray, cuts: list[float], seed: int, limit: int | None = None) -> list[np.ndarray]:
    """Rows drawn as whole patients in a seeded order (at most `limit` rows), cut on patient boundaries: part k
    ends at the first patient boundary at or after the cumulative fraction `cuts[k]` of the drawn rows; the last
    part is the rest, possibly empty. Without a split column this keeps a patient's follow-up images on one side."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(patients))
    rank = {p: k for k, p in enumerate(rng.permutation(np.unique(patients)))}
    order = order[np.argsort([rank[p] for p in patients[order]], kind="stable")][:limit]
    ids = patients[order]
    starts = np.r_[np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]), len(order)]  # each patient's first row, end
    bounds = [int(starts[np.searchsorted(starts, f * len(order))]) for f in cuts]
    return np.split(order, bounds)


def split_card(card_path: str | Path, out_dir: str | Path, cfg: SplitConfig | None = None) -> Path:
    """Write a copy of the card whose manifest has a patient-level stratified `split` column."""
    cfg = cfg or SplitConfig()
    data = load_card(card_path)
    df = data.df.copy()
    unknown = sorted(set(cfg.keep) - set(SPLITS))
    if unknown:
        raise SynthfmError(f"--keep names unknown split(s) {unknown}", f"use names from {list(SPLITS)}")
    redo = ~df[SPLIT].isin(cfg.keep)
    strata = _strata(data, cfg)
    patients = data.patient_ids()
    new = df[SPLIT].copy()
    new[redo] = assign_splits(patients[redo], strata[redo], cfg.ratios, cfg.seed)
    df["split"] = new.to_numpy()
    df[SPLIT] = df["split"]
    check_leakage(df.assign(_pid=patients), "_pid", "the new split")
    return _write(data, df, Path(out_dir))


def _strata(data: CardData, cfg: SplitConfig) -> pd.Series:
    """The label each row is stratified by (all one stratum when the card has no task)."""
    name = cfg.stratify or (data.card.tasks[0].name if data.card.tasks else None)
    if name is None:
        return pd.Series(["all"] * len(data), index=data.df.index)
    lab = data.labels[data.card.task(name).name]
    return pd.Series([str(x) for x in (lab if lab.ndim == 1 else lab.argmax(1))], index=data.df.index)


def _write(data: CardData, df: pd.DataFrame, out: Path) -> Path:
    """Write the manifest and a card pointing at the same images (absolute root)."""
    if out.resolve() == data.card_dir.resolve():
        raise SynthfmError(f"split would overwrite the source card in {out}", "choose a different --out")
    with folder_lock(out):
        with atomic_path(out / MANIFEST) as tmp:
            df.drop(columns=[SPLIT, "_id"]).to_parquet(tmp, index=False)
        source = data.card.source.model_copy(update={"root": str(data.source_root.resolve())})
        card = data.card.model_copy(update={"source": source, "manifest": MANIFEST, "derive": {},
                                            "split": SplitSpec(column="split")})
        return write_card(card, out)


def label_fractions(patients: pd.Series, strata: pd.Series, fractions: list[float],
                    seed: int) -> dict[float, np.ndarray]:
    """Nested, patient-level, stratified subsets: fraction -> boolean row mask; smaller ⊂ larger.

    Patients are shuffled once per stratum; each fraction takes the first ceil(f·n) of them, so every
    subset contains every smaller one and keeps whole patients.
    """
    per_patient = strata.groupby(patients).agg(lambda s: s.value_counts().index[0])
    rng = np.random.default_rng(seed)
    ranked = {s: g.index.to_numpy()[rng.permutation(len(g))] for s, g in per_patient.groupby(per_patient, sort=True)}
    out = {}
    for f in sorted(fractions):
        if not 0 < f <= 1:
            raise SynthfmError(f"label fraction {f} is outside (0, 1]", "use fractions such as 0.1, 0.2, 0.4, 1.0")
        keep = {p for ids in ranked.values() for p in ids[: int(np.ceil(f * len(ids)))]}
        out[f] = patients.isin(keep).to_numpy()
    return out
